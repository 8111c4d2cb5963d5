"""Run a scheduler instance on its own: ``python -m controlplane.scheduler``.

Used for a dedicated scheduler process next to API replicas (one is elected leader; the
others stand by), and by the restart tests, which kill it with SIGKILL mid-run.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

import ray

import quotas
from controlplane.audit import signing
from controlplane.audit.checkpointer import AuditCheckpointer
from controlplane.db.engine import make_engine, migrate
from controlplane.observability import logs, metrics, tracing
from controlplane.scheduler import RayExecutor, SchedulerConfig, SchedulerService, holder
from controlplane.settings import Settings

log = logging.getLogger("nuri.scheduler")


def main() -> None:
    settings = Settings()
    p = argparse.ArgumentParser(prog="python -m controlplane.scheduler")
    p.add_argument("--database-url", default=settings.resolved_database_url)
    p.add_argument("--ray-address", default=settings.ray_address)
    # --checkpoint-root: the name this flag had before jobs got whole directories.
    p.add_argument(
        "--jobs-root",
        "--checkpoint-root",
        dest="jobs_root",
        default=str(settings.resolved_jobs_dir),
        help="the jobs area: <jobs root>/<member id>/<job id>/ per job",
    )
    p.add_argument(
        "--holder",
        default=None,
        help="instance name (default: kept in NURI_HOME/scheduler-holder, so that a restarted "
        "scheduler takes its lease back at once)",
    )
    p.add_argument("--lease-ttl", type=float, default=15.0)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--grace-period", type=float, default=settings.preemption_grace_s)
    p.add_argument("--min-runtime", type=float, default=settings.min_runtime_s)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=settings.metrics_port,
        help="serve this scheduler's metrics (cycles, admissions, preemptions) on this port",
    )
    p.add_argument("--metrics-host", default=settings.metrics_host or settings.host)
    args = p.parse_args()
    logs.configure(settings.log_format)
    tracing.configure("nuri-scheduler")
    engine = make_engine(args.database_url)
    migrate(engine)
    tracing.instrument_engine(engine)
    ctx = ray.init(address=args.ray_address, namespace="nuri", log_to_driver=False)
    ray_info = getattr(ctx, "address_info", {}).get("address", args.ray_address)
    config = SchedulerConfig(
        jobs_root=Path(args.jobs_root),
        lease_ttl_s=args.lease_ttl,
        interval_s=args.interval,
        engine=quotas.EngineConfig(grace_period=args.grace_period, min_runtime=args.min_runtime),
        holder=args.holder or holder.claim(settings.home),
    )
    service = SchedulerService(engine, RayExecutor(), config)
    log.info("scheduler %s on %s (database %s)", config.holder, ray_info, engine.dialect.name)
    # Audit checkpoints are signed by the leader only: exactly one signer in any deployment.
    checkpointer = AuditCheckpointer(
        engine,
        signing.load_or_create(settings.resolved_audit_key_path),
        settings.audit_checkpoint_interval_s,
        leading=lambda: service.token is not None,
    )
    if args.metrics_port is not None:
        # Events only: the cluster's state comes from the API's /metrics (no double count).
        metrics.serve(args.metrics_host, args.metrics_port, None, settings.metrics_public)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    # The Kubernetes inventory (NURI_K8S_INVENTORY), written by the leader only.
    from controlplane.k8s import reconciler as k8s_inventory

    # The RayCluster watch (NURI_K8S_RAYCLUSTER) pauses placement while its head is down.
    k8s = k8s_inventory.start(settings, engine, lambda: service.token is not None)
    if k8s is not None:
        service.placement_pause = k8s.pause_reason
    service.start()
    checkpointer.start()
    done.wait()
    checkpointer.stop()
    if k8s is not None:
        k8s.stop()
    service.stop()
    tracing.shutdown()  # export the last cycles' spans before the process ends


if __name__ == "__main__":
    main()
