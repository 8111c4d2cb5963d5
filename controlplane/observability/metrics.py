"""Prometheus metrics at ``/metrics``: Kueue's and Slurm ``sdiag``'s questions, ``nuri_`` names.

Two kinds of metric, kept apart because they are correct in different ways:

* **State** (pending jobs, GPUs in use / nominal / borrowed / lent, budgets, pool size) is read
  from the database when scraped, by :class:`StateCollector`. The database is the truth
  (ARCHITECTURE: memory is a cache), so any API process answers the same, whichever of
  ``nuri api --workers N`` takes the scrape, whether or not a scheduler runs, and across
  restarts. Every query is one grouped aggregate whose size is bounded by members x pools
  (plus the GPU-holding jobs), never by the jobs ever submitted.
* **Events** (admission attempts, waits, admissions, preemptions, evictions, backfills, cycle
  durations and depths, job outcomes, API request durations) are counted where they happen
  with ``prometheus_client``. One process: in memory (``nuri up``, the standalone scheduler).
  ``nuri api`` sets up multiprocess mode before its workers start
  (:func:`prepare_multiprocess`): each worker writes its counters to files under
  ``NURI_HOME/prometheus/<parent pid>/`` and whichever worker answers a scrape sums them all.

Scheduler events are exposed by the process that runs the scheduler: ``nuri up``'s API, or
the standalone scheduler's own listener (``--metrics-port``; :func:`serve`), which serves
events only, so the state is never counted twice. With several API replicas each exposes the
same state: aggregate those gauges across instances with ``max``, not ``sum``.

Exposition needs no token only on a loopback or private address, or with
``NURI_METRICS_PUBLIC=true`` (:func:`open_without_token`); otherwise the API's ``/metrics``
wants a token with the ``metrics`` scope, and a dedicated listener refuses to start.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from functools import cache
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_wsgi_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import and_, event, func, literal
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session, col

from controlplane.db.models import Budget, Job, Member, Node, NodeStatus, Pool, Quota, UsageRecord
from controlplane.db.types import utcnow
from controlplane.jobstate import FINISHED_KEY, JobStatus
from quotas import decisions as codes

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from controlplane.scheduler.service import CycleReport

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "nuri_"
# Jobs whose GPUs count against their member's quota (the engine's view: scheduler.snapshot).
HOLDING = (JobStatus.ADMITTED.value, JobStatus.RUNNING.value, JobStatus.PREEMPTING.value)
# A waiting job is "inadmissible" (Kueue's word) while a rule holds it: its member's quota or
# budget, policy, or a shape no pool fits. It waits until that rule's inputs change. Every
# other waiting job is "active": it only waits for its turn or for GPUs to free up.
INADMISSIBLE = frozenset(
    {
        codes.INVALID_REQUEST,
        codes.NO_ALLOWED_POOL,
        codes.SHAPE_UNSATISFIABLE,
        codes.BUDGET_EXHAUSTED,
        codes.NON_PREEMPTIBLE_OVER_NOMINAL,
        codes.QUOTA_EXCEEDED,
        codes.COHORT_EXHAUSTED,
        "residency_denied",  # a placement-time recheck (scheduler.service._launch_all)
    }
)
# The label of a waiting job that names no pool (any pool will do).
ANY_POOL = "any"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Counters and histograms of this process. Not the library's global REGISTRY: that one also
# holds whatever other libraries register; /metrics shows Nuri's metrics only. The text
# format's ``_created`` samples are off so one process and multiprocess mode look the same.
disable_created_metrics()  # type: ignore[no-untyped-call]
EVENTS = CollectorRegistry()

API_REQUEST_DURATION = Histogram(
    "nuri_api_request_duration_seconds",
    "API and portal requests by route template (never the raw path), method and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=EVENTS,
)
JOB_OUTCOMES = Counter(
    "nuri_job_outcomes",
    "Jobs that reached a terminal status, by kind and outcome (counted after commit).",
    ["kind", "outcome"],
    registry=EVENTS,
)


class SchedulerMetrics:
    """The scheduler's counters (Kueue's and sdiag's), created on a scheduler's first cycle
    only: an API worker never shows an unlabelled cycle histogram stuck at zero."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "nuri_admission_attempts",
            "Scheduling cycles that had waiting jobs: success when one was admitted, else "
            "inadmissible (Kueue's admission_attempts_total).",
            ["result"],
            registry=registry,
        )
        self.wait = Histogram(
            "nuri_admission_wait_time_seconds",
            "Time from entering the queue (submission or requeue) to admission, per pool.",
            ["pool"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 10800, 43200, 86400, 259200),
            registry=registry,
        )
        self.admitted = Counter(
            "nuri_admitted_jobs", "Admissions, per pool.", ["pool"], registry=registry
        )
        self.backfilled = Counter(
            "nuri_backfilled_jobs",
            "Admissions made while the pool held a reservation for its blocked head job.",
            ["pool"],
            registry=registry,
        )
        self.preempted = Counter(
            "nuri_preempted_jobs",
            "Running jobs told to checkpoint and stop, per pool and reason (reclaim, priority).",
            ["pool", "reason"],
            registry=registry,
        )
        self.evicted = Counter(
            "nuri_evicted_jobs",
            "Jobs that lost their GPUs and went back to the queue, per pool and reason "
            "(preempted, infrastructure_failure).",
            ["pool", "reason"],
            registry=registry,
        )
        self.cycle = Histogram(
            "nuri_scheduler_cycle_duration_seconds",
            "Duration of the leader's scheduling cycles (observe, snapshot, decide, apply, act).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.paused = Gauge(
            "nuri_placement_paused",
            "1 while the leader pauses placement (the KubeRay head is not ready), else 0.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.depth = Histogram(
            "nuri_scheduler_cycle_depth",
            "Waiting jobs each cycle considered (Slurm sdiag's cycle depth).",
            buckets=(0, 1, 10, 100, 1000, 10000, 100000),
            registry=registry,
        )


@cache
def scheduler_metrics() -> SchedulerMetrics:
    return SchedulerMetrics(EVENTS)


def record_cycle(report: CycleReport, seconds: float) -> None:
    """Count one leader cycle from its report: the one place the scheduler feeds metrics."""
    m = scheduler_metrics()
    m.cycle.observe(seconds)
    m.depth.observe(report.depth)
    m.paused.set(1 if report.paused is not None else 0)
    if report.depth:
        m.attempts.labels("success" if report.admitted else "inadmissible").inc()
    for pool, waited in report.waits:
        m.admitted.labels(pool).inc()
        m.wait.labels(pool).observe(max(0.0, waited))
    for pool in report.backfilled:
        m.backfilled.labels(pool).inc()
    for pool, reason in report.preemptions:
        m.preempted.labels(pool, reason).inc()
    for pool, reason in report.evictions:
        m.evicted.labels(pool, reason).inc()


# --- job outcomes: counted once their transaction commits ------------------------------------


@event.listens_for(OrmSession, "after_commit")
def _count_outcomes(session: OrmSession) -> None:
    for kind, outcome in session.info.pop(FINISHED_KEY, ()):
        JOB_OUTCOMES.labels(kind, outcome.lower()).inc()


@event.listens_for(OrmSession, "after_transaction_end")
def _forget_outcomes(session: OrmSession, transaction: SessionTransaction) -> None:
    # A rolled-back terminal transition never happened (after a commit the list is gone).
    if transaction.parent is None:
        session.info.pop(FINISHED_KEY, None)


# --- API request durations ---------------------------------------------------------------------


class RequestMetricsMiddleware:
    """Time every HTTP request by its route *template* (``/v1/jobs/{job_id}``), so the label
    set stays bounded whatever paths clients send; a request no route matched is
    ``unmatched``. Plain ASGI, like the app's other middlewares (no task per request)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding
        counted = False

        def count() -> None:
            nonlocal counted
            if counted:
                return
            counted = True
            # The router wrote the matched route into the scope it was given (this one).
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            API_REQUEST_DURATION.labels(method, route, str(status)).observe(
                time.perf_counter() - started
            )

        async def send_counted(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                count()  # before the caller has the whole answer: a scrape after it sees it
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            count()


# --- state from the database ------------------------------------------------------------------


class StateCollector:
    """Gauges computed from the database at scrape time (see the module docstring)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        with Session(self.engine) as s:
            yield self._pending(s)
            yield from self._gpus(s)
            yield from self._budgets(s, now)
            yield self._pools(s)
            yield self._nodes(s)

    def _pending(self, s: Session) -> GaugeMetricFamily:
        """Waiting jobs per pool, member and status. A job may name several pools; it counts
        once, under the pool it prefers (its first preferred, else first allowed pool), or
        ``any``. Its status comes from the first of its ranked reasons."""
        pool = func.coalesce(
            col(Job.preferred_pools)[0].as_string(),
            col(Job.allowed_pools)[0].as_string(),
            literal(ANY_POOL),
        )
        first_reason = col(Job.reasons)[(0, "code")].as_string()
        # Grouped outside: PostgreSQL would not see the expressions' bound parameters in the
        # GROUP BY as the ones in the select list.
        waiting = (
            sa_select(
                pool.label("pool"), col(Member.name).label("member"), first_reason.label("code")
            )
            .join(Member, col(Member.id) == col(Job.member_id))
            .where(col(Job.status) == JobStatus.QUEUED.value)
            .subquery()
        )
        rows = s.execute(
            sa_select(waiting.c.pool, waiting.c.member, waiting.c.code, func.count()).group_by(
                waiting.c.pool, waiting.c.member, waiting.c.code
            )
        ).all()
        counts: dict[tuple[str, str, str], int] = defaultdict(int)
        for pool_name, member, code, n in rows:
            status = "inadmissible" if code in INADMISSIBLE else "active"
            counts[(str(pool_name), str(member), status)] += int(n)
        family = GaugeMetricFamily(
            "nuri_pending_jobs",
            "Jobs waiting, per pool, member and status (active: waiting for their turn or for "
            "GPUs to free up; inadmissible: held by quota, budget, policy or shape).",
            labels=["pool", "member", "status"],
        )
        for (pool_name, member, status), n in sorted(counts.items()):
            family.add_metric([pool_name, member, status], n)
        return family

    def _gpus(self, s: Session) -> Iterator[GaugeMetricFamily]:
        """GPUs in use, nominal, borrowed and lent per member and pool (Kueue's quota view).

        Borrowed is use above nominal. The engine does not tie a borrowed GPU to one lender,
        so a pool's borrowed total is shown as lent by the members with idle guaranteed GPUs
        they may lend (idle nominal, up to the lending limit), in proportion to those idle
        GPUs (largest remainder; ties by member name). Summed over a pool, lent equals
        borrowed unless quotas shrank under running work."""
        used: dict[tuple[str, str], int] = defaultdict(int)
        for member, pool, gpus in s.execute(
            sa_select(col(Member.name), col(Job.pool), func.sum(col(Job.gpus)))
            .join(Member, col(Member.id) == col(Job.member_id))
            .where(col(Job.status).in_(HOLDING), col(Job.pool).is_not(None))
            .group_by(col(Member.name), col(Job.pool))
        ).all():
            used[(str(member), str(pool))] = int(gpus)
        nominal: dict[tuple[str, str], int] = {}
        lending: dict[tuple[str, str], int | None] = {}
        for member, pool, gpus, limit in s.execute(
            sa_select(
                col(Member.name), col(Pool.name), col(Quota.nominal_gpus), col(Quota.lending_limit)
            )
            .join(Member, col(Member.id) == col(Quota.member_id))
            .join(Pool, col(Pool.id) == col(Quota.pool_id))
        ).all():
            nominal[(member, pool)] = int(gpus)
            lending[(member, pool)] = limit
        keys = sorted(set(used) | set(nominal))
        borrowed = {k: max(0, used.get(k, 0) - nominal.get(k, 0)) for k in keys}
        lendable: dict[tuple[str, str], int] = {}
        for k in keys:
            idle = max(0, nominal.get(k, 0) - used.get(k, 0))
            limit = lending.get(k)
            lendable[k] = idle if limit is None else min(idle, limit)
        lent = _attribute_lending(keys, borrowed, lendable)
        labels = ["member", "pool"]
        families = {
            "in_use": GaugeMetricFamily(
                "nuri_gpus_in_use", "GPUs held by admitted and running jobs.", labels=labels
            ),
            "nominal": GaugeMetricFamily(
                "nuri_gpus_nominal", "Guaranteed GPUs (quota nominal).", labels=labels
            ),
            "borrowed": GaugeMetricFamily(
                "nuri_gpus_borrowed", "GPUs in use above nominal.", labels=labels
            ),
            "lent": GaugeMetricFamily(
                "nuri_gpus_lent",
                "Idle guaranteed GPUs that borrowers use (attributed, see the README).",
                labels=labels,
            ),
        }
        for key in keys:
            families["in_use"].add_metric(list(key), used.get(key, 0))
            if key in nominal:
                families["nominal"].add_metric(list(key), nominal[key])
            families["borrowed"].add_metric(list(key), borrowed[key])
            families["lent"].add_metric(list(key), lent.get(key, 0))
        yield from families.values()

    def _budgets(self, s: Session, now: datetime) -> Iterator[GaugeMetricFamily]:
        """Budgets of the periods under way: limit and use in GPU-seconds (Prometheus' base
        unit; divide by 3600 for GPU-hours). Use is what the budget check counts: attempts
        started in the period, the open ones up to now."""
        current = and_(col(Budget.starts_at) <= now, col(Budget.ends_at) > now)
        budgets = s.execute(
            sa_select(
                col(Budget.id),
                col(Budget.member_id),
                col(Member.name),
                col(Budget.period),
                col(Budget.gpu_hours),
                col(Budget.starts_at),
                col(Budget.ends_at),
            )
            .join(Member, col(Member.id) == col(Budget.member_id))
            .where(current)
        ).all()
        closed: dict[str, float] = {
            budget_id: total
            for budget_id, total in s.execute(
                sa_select(col(Budget.id), func.sum(col(UsageRecord.gpu_seconds)))
                .join(
                    UsageRecord,
                    and_(
                        col(UsageRecord.member_id) == col(Budget.member_id),
                        col(UsageRecord.started_at) >= col(Budget.starts_at),
                        col(UsageRecord.started_at) < col(Budget.ends_at),
                        col(UsageRecord.ended_at).is_not(None),
                    ),
                )
                .where(current)
                .group_by(col(Budget.id))
            ).all()
        }
        running: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
        for owner, started, gpus in s.execute(
            sa_select(
                col(UsageRecord.member_id), col(UsageRecord.started_at), col(UsageRecord.gpus)
            ).where(col(UsageRecord.ended_at).is_(None))
        ).all():
            running[owner].append((started, gpus))
        labels = ["member", "period"]
        used = GaugeMetricFamily(
            "nuri_budget_used_gpu_seconds",
            "GPU-seconds used in the budget period under way.",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "nuri_budget_limit_gpu_seconds", "The budget of the period under way.", labels=labels
        )
        for budget_id, member_id, member, period, hours, start, end in budgets:
            seconds = float(closed.get(budget_id) or 0.0)
            seconds += sum(
                max(0.0, (now - started).total_seconds()) * gpus
                for started, gpus in running[member_id]
                if start <= started < end
            )
            used.add_metric([member, period], seconds)
            limit.add_metric([member, period], float(hours) * 3600.0)
        yield used
        yield limit

    def _pools(self, s: Session) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "nuri_pool_gpus",
            "GPUs on the pool's registered nodes that are not down.",
            labels=["pool"],
        )
        for pool, gpus in s.execute(
            sa_select(col(Pool.name), func.coalesce(func.sum(col(Node.gpus)), 0))
            .outerjoin(
                Node,
                and_(col(Node.pool_id) == col(Pool.id), col(Node.status) != NodeStatus.DOWN.value),
            )
            .group_by(col(Pool.name))
        ).all():
            family.add_metric([pool], int(gpus))
        return family

    def _nodes(self, s: Session) -> GaugeMetricFamily:
        """Registered nodes per pool and status: ``status="quarantined"`` counts the nodes the
        Kubernetes inventory found outside their pool's region (``controlplane.k8s``)."""
        family = GaugeMetricFamily(
            "nuri_nodes",
            "Registered nodes, per pool and status (ready, cordoned, down, quarantined).",
            labels=["pool", "status"],
        )
        counts = dict.fromkeys(
            (
                (str(p), st.value)
                for p in s.execute(sa_select(col(Pool.name))).scalars()
                for st in NodeStatus
            ),
            0,
        )
        for pool, status, n in s.execute(
            sa_select(col(Pool.name), col(Node.status), func.count())
            .join(Node, col(Node.pool_id) == col(Pool.id))
            .group_by(col(Pool.name), col(Node.status))
        ).all():
            counts[(str(pool), str(status))] = int(n)
        for (pool, status), n in sorted(counts.items()):
            family.add_metric([pool, status], n)
        return family


def _attribute_lending(
    keys: list[tuple[str, str]],
    borrowed: dict[tuple[str, str], int],
    lendable: dict[tuple[str, str], int],
) -> dict[tuple[str, str], int]:
    """Share each pool's borrowed GPUs among its lenders (see ``StateCollector._gpus``)."""
    lent: dict[tuple[str, str], int] = {}
    by_pool: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in keys:
        by_pool[key[1]].append(key)
    for members in by_pool.values():
        total = sum(borrowed[k] for k in members)
        lenders = [k for k in members if lendable[k] > 0]
        offer = sum(lendable[k] for k in lenders)
        give = min(total, offer)
        if not give:
            continue
        exact = {k: give * lendable[k] / offer for k in lenders}
        shares = {k: int(v) for k, v in exact.items()}
        rest = give - sum(shares.values())
        for k in sorted(lenders, key=lambda k: (shares[k] - exact[k], k))[:rest]:
            shares[k] += 1
        lent.update(shares)
    return lent


# --- exposition ---------------------------------------------------------------------------------


class _NuriOnly:
    """Another collector's families whose names start with ``nuri_``: a library that wrote to
    the multiprocess directory too (it is set in the environment) stays out of /metrics."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def collect(self) -> Iterable[Metric]:
        return (m for m in self.inner.collect() if m.name.startswith(PREFIX))


def registry_for(engine: Engine | None) -> CollectorRegistry:
    """What one scrape shows: the state (when ``engine`` is given) and this process's events,
    or, in multiprocess mode, the events of every process of this ``nuri api``."""
    registry = CollectorRegistry()
    if engine is not None:
        registry.register(StateCollector(engine))
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        collector = MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]
        registry.register(_NuriOnly(collector))
    else:
        registry.register(_NuriOnly(EVENTS))
    return registry


def exposition(engine: Engine | None) -> bytes:
    """The Prometheus text format (0.0.4) of :func:`registry_for`."""
    return generate_latest(registry_for(engine))


def open_without_token(bind_host: str, public: bool) -> bool:
    """Whether metrics on ``bind_host`` may be read without a token: on a loopback or private
    address (not the unspecified 0.0.0.0 / ::, which listens everywhere), or when
    ``NURI_METRICS_PUBLIC`` says so."""
    if public or bind_host == "localhost":
        return True
    try:
        addr = ip_address(bind_host.strip("[]"))
    except ValueError:
        return False  # a host name: where it resolves to is not known here
    return not addr.is_unspecified and (addr.is_loopback or addr.is_private)


def serve(host: str, port: int, engine: Engine | None, public: bool) -> WSGIServer:
    """A listener for the metrics alone (the chart's metrics port; the standalone scheduler's
    ``--metrics-port``). It has no token check, so it refuses to listen where that would
    expose the cluster's usage publicly."""
    if not open_without_token(host, public):
        raise ValueError(
            f"metrics on {host}:{port} would be readable by anyone: bind a private or loopback "
            "address, or set NURI_METRICS_PUBLIC=true"
        )
    server, _ = start_wsgi_server(port, host, registry_for(engine))
    return server


def prepare_multiprocess(home: Path) -> Path:
    """Set up multiprocess mode for ``nuri api`` before its workers start.

    The workers are spawned with this process's environment, so they write their counters
    to ``<home>/prometheus/<this pid>/``. That directory starts empty (a restart begins new
    counters, as a restarted process does); directories of runs whose parent has died are
    removed. A worker that dies mid-run keeps its files, so the sums never go backwards.
    """
    root = home / "prometheus"
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and not _alive(int(entry.name)):
            shutil.rmtree(entry, ignore_errors=True)
    mine = (root / str(os.getpid())).resolve()
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    os.environ[MULTIPROC_ENV] = str(mine)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
