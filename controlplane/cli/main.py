"""The ``nuri`` command."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from controlplane.cli.admin import admin_app, datasets_app
from controlplane.cli.audit import audit_app
from controlplane.cli.endpoints import endpoints_app
from controlplane.cli.jobs import artifacts_app, jobs_app, submit, where
from controlplane.cli.plan import plan
from controlplane.cli.session import (
    DEFAULT_URL,
    api_errors,
    console,
    emit,
    fail,
    progress,
    save_config,
)
from controlplane.cli.simulate import simulate
from controlplane.cli.token import token_app
from controlplane.client import NuriClient

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.engine import Engine

    from controlplane.services.bootstrap import BootstrapResult
    from controlplane.settings import Settings

app = typer.Typer(
    name="nuri",
    help="Nuri: the consortium's shared GPU cluster (A.X K1). Start with `nuri up --demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(jobs_app, name="jobs")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(admin_app, name="admin")
app.add_typer(datasets_app, name="datasets")
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(audit_app, name="audit")
app.add_typer(token_app, name="token")
app.command()(submit)
app.command()(where)
app.command()(plan)
app.command()(simulate)


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="seed the demo consortium (idempotent)")] = False,
    port: Annotated[int | None, typer.Option(help="API port (default NURI_PORT or 8000)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    ray: Annotated[bool, typer.Option(help="start (or join) Ray with the pools")] = True,
    stop_ray: Annotated[
        bool, typer.Option("--stop-ray", help="stop Nuri's Ray daemon when this exits")
    ] = False,
) -> None:
    """Start the API, the portal, the scheduler and Nuri's Ray daemon (or join NURI_RAY_ADDRESS).

    The Ray daemon outlives this command (a restart re-attaches to it and to the running
    jobs); `nuri down` stops it, or `--stop-ray` when this command exits.
    """
    import uvicorn

    import quotas
    from controlplane import demo as demo_seed
    from controlplane import ray_runtime
    from controlplane.api.app import create_app
    from controlplane.audit.checkpointer import AuditCheckpointer
    from controlplane.db.types import utcnow
    from controlplane.observability import logs, tracing
    from controlplane.scheduler import RayExecutor, SchedulerConfig, SchedulerService
    from controlplane.scheduler import holder as scheduler_holder
    from controlplane.services.inventory import list_pools, pool_capacity
    from controlplane.settings import Settings

    try:
        settings = Settings()
    except ValueError as exc:
        fail(f"bad settings: {exc}", code=2)
    # SIGTERM and SIGINT end this process through its `finally` (no traceback); uvicorn
    # takes them over while it serves and raises them again once it has stopped.
    signal.signal(signal.SIGTERM, _leave)
    signal.signal(signal.SIGINT, _leave)
    logs.configure(settings.log_format)
    tracing.configure("nuri")  # API and scheduler in one process: one service
    if port is not None:
        settings.port = port
    if host is not None:
        settings.host = host
    _refuse_taken_port(settings.host, settings.port)
    api = create_app(settings)
    boot = _announce_bootstrap(api, settings)
    engine = api.state.engine
    _serve_metrics(settings, engine)
    if demo:
        with progress("seeding the demo consortium"):
            summary = demo_seed.seed(engine, boot.admin_user_id, utcnow())
        console.print(
            f"demo consortium: {summary.members} members, {summary.pools} pools "
            f"({summary.created} objects created now)"
        )
    scheduler = None
    own_ray = ray and not settings.ray_address
    leaving: int | str | None = 0
    try:
        if ray:
            from sqlmodel import Session, select

            from controlplane.db.models import Node

            with Session(engine) as s:
                gpus = {p.name: pool_capacity(s, p.id)[1] for p in list_pools(s)}
                node_names = list(s.exec(select(Node.name)).all())
            with progress("joining Ray" if settings.ray_address else "starting Ray"):
                try:
                    info = ray_runtime.start(
                        gpus, settings.ray_address, node_names, settings.ensure_home().resolve()
                    )
                except ray_runtime.RayUnavailable as exc:
                    fail(f"ray: {exc}", code=1)
            where = info.address or "local"
            if info.daemon is not None:
                where += f" ({info.how} daemon, pid {info.daemon.pid}; `nuri down` stops it)"
            console.print(
                f"ray: {where} with "
                f"{int(info.resources.get('GPU', 0))} logical GPUs in {len(gpus)} pools",
                soft_wrap=True,
            )
            if info.drift:
                console.print(f"[yellow]ray: {info.drift}[/]", soft_wrap=True)
            scheduler = SchedulerService(
                engine,
                RayExecutor(),
                # The holder name survives a restart: the lease is taken back at once.
                SchedulerConfig(
                    jobs_root=settings.resolved_jobs_dir,
                    holder=scheduler_holder.claim(settings.ensure_home()),
                    engine=quotas.EngineConfig(
                        grace_period=settings.preemption_grace_s,
                        min_runtime=settings.min_runtime_s,
                    ),
                ),
            )
            api.state.scheduler_wake = scheduler.wake
            scheduler.start()
        # With a scheduler, its leader signs (one signer however many `nuri up` share a
        # database); without one (--no-ray), this process does.
        leader = scheduler
        checkpointer = AuditCheckpointer(
            engine,
            api.state.audit_key,
            settings.audit_checkpoint_interval_s,
            leading=(lambda: leader.token is not None) if leader is not None else None,
        )
        checkpointer.start()
        console.print(
            f"Nuri at http://{settings.host}:{settings.port}: portal at /portal, "
            f"API docs at /docs (database {engine.dialect.name})",
            soft_wrap=True,
        )
        signal.signal(signal.SIGTERM, _leave)  # again: ray.init installs a handler of its own
        try:
            # proxy_headers=False: X-Forwarded-For is believed only from NURI_TRUSTED_PROXIES,
            # by the app (uvicorn's default would believe any local process).
            uvicorn.run(
                api,
                host=settings.host,
                port=settings.port,
                log_level="info",
                log_config=logs.uvicorn_config(settings.log_format),
                proxy_headers=False,
                # Open streams (log follows, live pages) never hold a shutdown up for long.
                timeout_graceful_shutdown=LEAVE_GRACE_S,
            )
        except SystemExit as exc:  # SIGTERM or SIGINT, raised again by uvicorn once stopped
            leaving = exc.code
        finally:
            checkpointer.stop()
            if scheduler is not None:
                _bounded(scheduler.stop, LEAVE_GRACE_S)
    finally:
        if ray:
            ray_runtime.stop()  # disconnects; the daemon and its jobs keep running
        if own_ray and stop_ray:
            _stop_ray_daemon(settings.ensure_home().resolve())
        tracing.shutdown()  # export what the scheduler and the API still hold
    _exit_now(leaving)


# How long each step of leaving `nuri up` may take (the API's open connections, then the
# scheduler's cycle in flight); SIGTERM to exit stays well under 10 s.
LEAVE_GRACE_S = 3


def _leave(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _exit_now(code: int | str | None) -> NoReturn:
    """End the process without the interpreter's teardown, which takes seconds of CPU once
    torch and Ray are loaded; what matters is in the database, and the logs are flushed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _bounded(stop: Callable[[], None], seconds: float) -> None:
    """Run ``stop`` for at most ``seconds``. A scheduler cycle in flight may wait on Ray for
    longer (its own join waits up to 30 s); its thread is a daemon, and the next leader
    re-observes whatever that cycle did not finish."""
    done = threading.Thread(target=stop, name="nuri-leave", daemon=True)
    done.start()
    done.join(seconds)


def _stop_ray_daemon(home: Path) -> None:
    from controlplane import ray_runtime

    try:
        stopped = ray_runtime.stop_daemon(home)
    except ray_runtime.RayUnavailable as exc:
        fail(f"ray: {exc}", code=1)
    if stopped is None:
        console.print("ray: no Nuri Ray daemon is running here; nothing to stop", soft_wrap=True)
    else:
        console.print(
            f"ray: stopped Nuri's Ray daemon (pid {stopped.pid}, {stopped.address})",
            soft_wrap=True,
        )


@app.command()
def down() -> None:
    """Stop Nuri's Ray daemon (the one `nuri up` started under NURI_HOME) and its jobs."""
    from controlplane.settings import Settings

    try:
        settings = Settings()
    except ValueError as exc:
        fail(f"bad settings: {exc}", code=2)
    _stop_ray_daemon(settings.home.resolve())


@app.command("api")
def api_only(
    port: Annotated[int | None, typer.Option(help="listen port (default 8000)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API worker processes")] = 2,
) -> None:
    """Serve the REST API alone, in several worker processes.

    For deployments where the scheduler runs on its own (``python -m controlplane.scheduler``,
    one leader at a time by its lease): each worker is a full API process on the same
    database. The schema is migrated and the platform admin bootstrapped once, here, before
    the workers start.
    """
    import uvicorn

    from controlplane.api.app import create_app
    from controlplane.observability import logs, metrics
    from controlplane.settings import Settings

    try:
        settings = Settings()
    except ValueError as exc:
        fail(f"bad settings: {exc}", code=2)
    logs.configure(settings.log_format)
    settings.port = port if port is not None else settings.port
    settings.host = host if host is not None else settings.host
    _refuse_taken_port(settings.host, settings.port)
    # The workers are spawned with this environment: they count into one directory (summed
    # by whichever answers /metrics), and know where they listen (a public address needs a
    # token for /metrics), whatever --host said.
    metrics.prepare_multiprocess(settings.ensure_home())
    os.environ["NURI_HOST"] = settings.host
    # No background warm-up here: this process only migrates and bootstraps.
    api = create_app(settings.model_copy(update={"warm_planner": False}))
    _announce_bootstrap(api, settings)
    _serve_metrics(settings, api.state.engine)
    api.state.engine.dispose()
    console.print(
        f"Nuri API at http://{settings.host}:{settings.port} with {workers} worker processes"
    )
    uvicorn.run(
        "controlplane.api.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level="info",
        proxy_headers=False,  # the app decides whom to believe (NURI_TRUSTED_PROXIES)
        log_config=logs.uvicorn_config(settings.log_format),  # applied in each worker
    )


def _serve_metrics(settings: Settings, engine: Engine) -> None:
    """The metrics listener of NURI_METRICS_PORT, if set (the API port serves /metrics too)."""
    from controlplane.observability import metrics

    if settings.metrics_port is None:
        return
    host = settings.metrics_host or settings.host
    try:
        metrics.serve(host, settings.metrics_port, engine, settings.metrics_public)
    except (ValueError, OSError) as exc:
        fail(f"metrics listener: {exc}", code=2)
    console.print(f"metrics at http://{host}:{settings.metrics_port}/metrics")


def _refuse_taken_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            fail(f"{host}:{port} is already in use; pick another with --port", code=2)


def _announce_bootstrap(api: FastAPI, settings: Settings) -> BootstrapResult:
    """Print a generated platform admin token once (and keep it in NURI_HOME in dev)."""
    from controlplane.api.app import bootstrap_result

    boot = bootstrap_result(api)
    if boot.generated_token:
        console.print("[bold green]Platform admin token[/] (shown once; store it):")
        console.print(boot.generated_token, soft_wrap=True, highlight=False)
        if settings.env == "dev":
            path = settings.ensure_home() / "admin-token"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(boot.generated_token + "\n")
            console.print(f"[dim](dev mode: also saved to {path}, readable only by you)[/]")
    return boot


@app.command()
def login(
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="API token")],
    url: Annotated[str, typer.Option(help="Nuri API URL")] = DEFAULT_URL,
) -> None:
    """Check a token against the server and remember it for later commands."""
    with api_errors(), NuriClient(url, token) as c:
        me = c.whoami()
    path = save_config(url, token)
    console.print(f"logged in to {url} as {me['email']} ({me['role']}); saved to {path}")


@app.command()
def whoami(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the identity behind the current token."""
    from controlplane.cli.session import call

    emit(call(lambda c: c.whoami()), as_json)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
