"""The scheduling cycle: database + live Ray inventory -> quotas.admit -> guarded writes -> Ray.

One ``tick``, in the numbered phases of Kueue's cycle:

0. lead: take or renew the lease; a standby does nothing else;
1. observe: poll every job that holds GPUs, store its progress and move it on
   (RUNNING -> SUCCEEDED / FAILED / QUEUED after preemption or an infrastructure failure,
   CANCELLED -> torn down), enforce max runtimes and preemption deadlines;
2. snapshot: pools, nodes alive in Ray, quotas, budgets, usage, running and queued jobs;
3. decide: ``quotas.admit(snapshot, now)``;
4. apply: admissions, preemption notices and pending reasons in one fenced transaction;
5. act: create placement groups and supervisors, send notices -- outside any transaction --
   then mark the launched jobs RUNNING and start their usage records.

Ray calls never happen inside a database transaction (dstack's rule): each phase reads,
releases the session, talks to Ray, then writes with guards (``status = :expected`` and the
lease's fencing token). A crash between any two steps leaves rows that the next tick, on this
instance or another, completes: names are deterministic, so nothing is created twice.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from opentelemetry.trace import Span
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

import quotas
from controlplane import execution, residency
from controlplane.audit import log as audit_log
from controlplane.db.models import Job, Node
from controlplane.db.types import utcnow
from controlplane.errors import InvalidTransition
from controlplane.jobstate import JobStatus, transition
from controlplane.observability import metrics, tracing
from controlplane.scheduler import lease, progress, spans
from controlplane.scheduler.executor import (
    Inventory,
    LaunchSpec,
    RayExecutor,
    Unanswered,
)
from controlplane.scheduler.snapshot import build, held_assignments
from controlplane.scheduler.transitions import JobTransitions
from controlplane.serving import controller
from controlplane.serving.names import SERVE_KIND

log = logging.getLogger("nuri.scheduler")
S = JobStatus


def _reported_end(sup: dict[str, Any], now: datetime) -> datetime | None:
    """When the supervisor's ranks last reported (never later than now), if they did."""
    at = sup.get("last_event_at")
    return min(datetime.fromtimestamp(float(at), UTC), now) if at else None


def _log_decisions(report: CycleReport) -> None:
    """The cycle's decisions at INFO, one line per kind (admitted, preempted, requeued,
    finished), so a standalone scheduler's log says what it did."""
    if not report.leader:
        return
    for what, ids in (
        ("admitted", report.admitted),
        ("preempted", report.preempted),
        ("requeued", report.requeued),
        ("finished", [f"{j}={status}" for j, status in report.finished.items()]),
    ):
        if ids:
            log.info("cycle %s %d: %s", what, len(ids), " ".join(ids))


@dataclass
class CycleReport:
    leader: bool
    token: int | None = None
    admitted: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    finished: dict[str, str] = field(default_factory=dict)
    requeued: list[str] = field(default_factory=list)
    unknown_nodes: tuple[str, ...] = ()
    error: str | None = None
    explained: bool = False  # this cycle refreshed the waiting jobs' reasons, position, ETA
    # For the metrics (``observability.metrics.record_cycle``, once per leader cycle):
    depth: int = 0  # waiting jobs the engine considered (Slurm's cycle depth)
    waits: list[tuple[str, float]] = field(default_factory=list)  # (pool, s queued) per admit
    backfilled: list[str] = field(default_factory=list)  # pool of each backfilled admission
    preemptions: list[tuple[str, str]] = field(default_factory=list)  # (pool, reason) per victim
    evictions: list[tuple[str, str]] = field(default_factory=list)  # (pool, reason) per requeue
    paused: str | None = None  # why placement was paused this cycle (``placement_pause``)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    # The jobs area: each job's directory is <jobs_root>/<member id>/<job id>.
    jobs_root: Path
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    lease_ttl_s: float = 15.0
    interval_s: float = 2.0
    # How long a supervisor may stay silent (starting, overloaded) before the attempt fails.
    supervisor_timeout_s: float = 120.0
    engine: quotas.EngineConfig = field(default_factory=quotas.EngineConfig)
    # Explanations (ranked reasons, queue position and ETA of every waiting job, and one row
    # update each) cost more than the decisions once queues are long. They are refreshed
    # every cycle while at most ``explain_all_below`` jobs wait, otherwise at most every
    # ``explain_interval_s``; the decisions are the same either way (a property test of the
    # engine checks that).
    explain_all_below: int = 2000
    explain_interval_s: float = 10.0


class SchedulerService(JobTransitions):
    def __init__(
        self,
        db: Engine,
        executor: RayExecutor,
        config: SchedulerConfig,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.ray = executor
        self.config = config
        self.clock = clock
        self.token: int | None = None
        self.last_report: CycleReport | None = None
        # Cache only: when each silent supervisor went quiet (restarts begin counting anew).
        self._silent_since: dict[str, datetime] = {}
        # Cache only: when each cancelled job's grace to checkpoint and stop ends.
        self._cancel_deadline: dict[str, datetime] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._explained_at: datetime | None = None  # last cycle that refreshed explanations
        # Why placement must pause now (the KubeRay head is down), None to place: set by the
        # scheduler's main from ``controlplane.k8s``; asked once per cycle.
        self.placement_pause: Callable[[], str | None] = lambda: None
        self._paused: str | None = None  # the pause of the last cycle
        # Cache only: the (job, attempt) preemption notices this instance has sent while
        # leading; a PREEMPTING job not in it gets its notice again (see ``_observe_one``).
        self._notified: set[tuple[str, int]] = set()

    # --- phase 0: leadership ---------------------------------------------------------------

    def _fence(self, s: Session, now: datetime) -> None:
        if self.token is None:
            raise lease.NotLeader("not leading")
        lease.fence(s, self.config.holder, self.token, now, self.config.lease_ttl_s)

    def tick(self) -> CycleReport:
        """One cycle, traced as ``scheduler.cycle``: a trace of its own, linked to each job it
        admitted, preempted or left waiting (``scheduler.spans``)."""
        with tracing.cycle_span(self.config.holder) as span:
            report = self._tick()
            spans.cycle_done(span, report)
        return report

    def _tick(self) -> CycleReport:
        started = time.monotonic()
        now = self.clock()
        with Session(self.db, expire_on_commit=False) as s:
            self.token = lease.acquire(s, self.config.holder, now, self.config.lease_ttl_s)
        report = CycleReport(leader=self.token is not None, token=self.token)
        if self.token is None:
            self.last_report = report
            return report
        try:
            self._endpoints(now)
            inventory = self._inventory()
            report.unknown_nodes = inventory.unknown
            self._observe(inventory, report)
            self._schedule(inventory, report)
        except lease.NotLeader as exc:
            log.warning("stepping down: %s", exc)
            report.error = str(exc)
            report.leader = False
            self.token = None
            self._notified.clear()  # whoever leads next resends what it must
        _log_decisions(report)
        metrics.record_cycle(report, time.monotonic() - started)
        self.last_report = report
        return report

    def _heartbeat(self, job_ids: list[str]) -> None:
        """The attempts whose supervisors answered this cycle are alive now: an attempt that
        later dies unseen (with the control plane, or its Ray) is billed to this moment."""
        if not job_ids:
            return
        now = self.clock()
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            s.execute(update(Job).where(col(Job.id).in_(job_ids)).values(heartbeat_at=now))
            s.commit()

    def _attempt_lost(self, job: Job, why: str, report: CycleReport) -> None:
        """The attempt's supervisor is gone. Launched in another Ray session than the one
        running now, it went away with Ray itself (the control plane's crash took its Ray
        along, or the Ray head restarted): free; otherwise a failure of the job or its node.
        Either way billed to its last heartbeat."""
        current = self.ray.session()
        if job.ray_session and current and job.ray_session != current:
            self._lost_with_the_control_plane(job, why, report)
        else:
            self._infrastructure_failure(job, why, report, ended_at=job.heartbeat_at)

    def _endpoints(self, now: datetime) -> None:
        """Endpoints' replica jobs in step with their targets (``serving.controller``), before
        this cycle's snapshot so new replicas are admitted in it."""
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            done = controller.reconcile(s, now)
        if done.created or done.cancelled:
            log.info(
                "endpoints: %d replica(s) created, %d cancelled",
                len(done.created),
                len(done.cancelled),
            )

    def _inventory(self) -> Inventory:
        with Session(self.db) as s:
            registered = set(s.exec(select(Node.name)).all())
        inv = self.ray.inventory(registered)
        for line in inv.unknown:
            log.warning("inventory: %s (not used)", line)
        return inv

    # --- phase 1: observe ------------------------------------------------------------------

    def _observe(self, inventory: Inventory, report: CycleReport) -> None:
        with Session(self.db, expire_on_commit=False) as s:
            jobs = held_assignments(s)
        live = [
            (j.id, j.attempt, j.observed_events)
            for j in jobs
            if j.status
            in (S.ADMITTED.value, S.RUNNING.value, S.PREEMPTING.value, S.CANCELLED.value)
        ]
        reports = self.ray.status_many(live) if live else {}
        self._heartbeat([job_id for job_id, r in reports.items() if isinstance(r, dict)])
        for job in jobs:
            try:
                self._observe_one(job, inventory, reports.get(job.id), report)
            except InvalidTransition as exc:
                # Someone else (a cancel, another tick) moved the job first: next tick sees it.
                log.info("job %s moved underneath us: %s", job.id, exc.message)

    def _observe_one(
        self,
        job: Job,
        inventory: Inventory,
        sup: dict[str, Any] | Exception | None,
        report: CycleReport,
    ) -> None:
        status = S(job.status)
        if status is S.CANCELLED and isinstance(sup, dict):
            if sup["state"] == "running" and self._stop_gracefully(job, sup):
                return
            self._store_events(job, sup["events"])  # the final checkpoint, if it came
        if status in (S.CANCELLED, S.SUCCEEDED, S.FAILED, S.QUEUED):
            # Finished (or requeued) but still holding Ray resources: free them exactly once.
            # A cancelled job held its GPUs until now (its grace to checkpoint): billed so.
            self._cancel_deadline.pop(job.id, None)
            self.ray.teardown(job.id, job.attempt, serve=job.kind == SERVE_KIND)
            ended = self.clock() if status is S.CANCELLED else job.finished_at or self.clock()
            self._release(job, ended, report)
            return
        lost_nodes = [n for n, _ in job.assignment if n not in inventory.alive]
        if lost_nodes and status in (S.RUNNING, S.PREEMPTING):
            # Ray marks the node dead: the attempt is over whatever its supervisor says.
            self._infrastructure_failure(
                job, f"node(s) lost: {', '.join(lost_nodes)}", report, ended_at=job.heartbeat_at
            )
            return
        if isinstance(sup, Unanswered):
            deadline = job.preempt_deadline
            if status is S.PREEMPTING and deadline and self.clock() >= deadline:
                # The grace period is over: a silent supervisor does not extend it.
                self._silent_since.pop(job.id, None)
                self._requeue_after_preemption(job, report)
                return
            since = self._silent_since.setdefault(job.id, self.clock())
            if (self.clock() - since).total_seconds() > self.config.supervisor_timeout_s:
                self._silent_since.pop(job.id, None)
                self._infrastructure_failure(job, f"{sup}; giving up", report)
            return
        self._silent_since.pop(job.id, None)
        if isinstance(sup, Exception):
            self._attempt_lost(job, str(sup), report)
            return
        if sup is None:
            if status is S.ADMITTED:
                self._launch(job, inventory, report)  # admitted, never launched (crash)
            else:
                self._attempt_lost(job, "supervisor is gone", report)
            return
        if not self._store_events(job, sup["events"]):
            return
        now = self.clock()
        if status is S.ADMITTED:
            self._mark_running(job, report)
            return
        if status is S.PREEMPTING and (job.id, job.attempt) not in self._notified:
            # A notice sent by an earlier leader (or before a crash) may never have arrived:
            # the deadline is in the database, the notice is sent again (idempotent).
            deadline = job.preempt_deadline or now
            self.ray.preempt(job.id, deadline.timestamp())
            self._notified.add((job.id, job.attempt))
            log.info("preemption notice of %s sent again (deadline %s)", job.id, deadline)
        if status is S.RUNNING and sup["state"] == "running":
            with Session(self.db, expire_on_commit=False) as s:
                decision = residency.placement(s, job, job.pool or "")
            if not decision.allowed:
                why = "; ".join(decision.reasons) or "denied by policy"
                self._finish(
                    job,
                    S.FAILED,
                    f"stopped: its inputs may no longer be processed in {job.pool} ({why})",
                    report,
                    code="residency_violation",
                    details=decision.to_dict(),
                )
                return
        # An attempt that ended is billed to its ranks' last report, not to the moment this
        # cycle heard of it (which, after a control-plane restart, may be much later).
        reported_end = _reported_end(sup, now)
        if sup["state"] == "succeeded":
            self._finish(job, S.SUCCEEDED, "all ranks finished", report, ended_at=reported_end)
        elif sup["state"] == "failed":
            errs = "; ".join(sup["errors"]) or "a rank failed"
            if any("lost" in e for e in sup["errors"]):
                self._infrastructure_failure(job, errs, report, ended_at=reported_end)
            else:
                self._finish(job, S.FAILED, errs, report, ended_at=reported_end)
        elif sup["state"] == "preempted":
            self._requeue_after_preemption(job, report, ended_at=reported_end)
        elif status is S.PREEMPTING and job.preempt_deadline and now >= job.preempt_deadline:
            self._requeue_after_preemption(job, report)
        elif (
            job.started_at
            and job.kind != SERVE_KIND  # a replica runs while its endpoint wants it
            and (now - job.started_at).total_seconds() > job.max_runtime_s
        ):
            self._finish(
                job,
                S.FAILED,
                f"exceeded its max runtime of {job.max_runtime_s}s",
                report,
                code="max_runtime_exceeded",
            )

    def _stop_gracefully(self, job: Job, sup: dict[str, Any]) -> bool:
        """A cancelled job still running: ask it to checkpoint and stop, as a preemption
        would, and keep its GPUs until it has or its grace period is over. True while
        waiting."""
        now = self.clock()
        deadline = self._cancel_deadline.get(job.id)
        if deadline is None:
            deadline = now + timedelta(seconds=self.config.engine.grace_period)
            self._cancel_deadline[job.id] = deadline
            self.ray.preempt(job.id, deadline.timestamp())
        self._store_events(job, sup["events"])  # the final checkpoint, when it comes
        if now < deadline:
            return True
        self._cancel_deadline.pop(job.id, None)
        return False

    def _store_events(self, job: Job, events: list[dict[str, Any]]) -> bool:
        """Store the events once (see ``progress.store``); False when another writer moved
        the job's counter first (the caller re-observes next cycle)."""
        if not events:
            return True
        now = self.clock()
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            return progress.store(s, job, events, now)

    # --- phases 2-5: snapshot, decide, apply, act ------------------------------------------

    def _schedule(self, inventory: Inventory, report: CycleReport) -> None:
        now = self.clock()
        with Session(self.db, expire_on_commit=False) as s:
            snapshot = build(s, set(inventory.alive), now, self.config.engine)
        report.depth = len(snapshot.pending)
        report.paused = self.placement_pause()
        # A pause that starts or ends is explained to every waiting job at once.
        paused_changed, self._paused = report.paused != self._paused, report.paused
        report.explained = self.should_explain(len(snapshot.pending), now) or (
            paused_changed and self.config.engine.explain
        )
        if not report.explained:
            snapshot = replace(snapshot, config=replace(snapshot.config, explain=False))
        decisions = quotas.admit(snapshot, now.timestamp())
        if report.paused is not None:
            # The engine still ran: every waiting job keeps its own reasons behind the pause.
            decisions = quotas.pause(decisions, report.paused)
        notices = self._apply(decisions, now, report)
        if report.explained:
            self._explained_at = now
        for job_id, deadline in notices:
            self.ray.preempt(job_id, deadline.timestamp())

        with Session(self.db, expire_on_commit=False) as s:
            admitted = [
                j
                for j in (s.get(Job, a.job_id) for a in decisions.admitted)
                if j is not None and j.status == S.ADMITTED.value
            ]
        self._launch_all(admitted, inventory, report)

    def should_explain(self, waiting: int, now: datetime) -> bool:
        """Whether this cycle refreshes explanations (see ``SchedulerConfig``)."""
        cfg = self.config
        if not cfg.engine.explain:
            return False
        if waiting <= cfg.explain_all_below or self._explained_at is None:
            return True
        return (now - self._explained_at).total_seconds() >= cfg.explain_interval_s

    def _apply(
        self, decisions: quotas.Decisions, now: datetime, report: CycleReport
    ) -> list[tuple[str, datetime]]:
        notices: list[tuple[str, datetime]] = []
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            for a in decisions.admitted:
                job = s.get(Job, a.job_id)
                if job is None or job.status != S.QUEUED.value:
                    continue
                spans.admitted(s, job, a)
                transition(
                    s,
                    a.job_id,
                    expected=S.QUEUED,
                    to=S.ADMITTED,
                    now=now,
                    message=f"admitted to {a.pool}",
                    pool=a.pool,
                    assignment=[[n, g] for n, g in a.assignments],
                    reasons=[],
                    queue_position=None,
                    eta=None,
                    details={"borrowing": a.borrowing},
                )
                audit_log.record(
                    s,
                    None,
                    "job.admit",
                    "job",
                    a.job_id,
                    stream=job.member_id,
                    now=now,
                    details={
                        "pool": a.pool,
                        "borrowing": a.borrowing,
                        "assignment": [list(x) for x in a.assignments],
                        "attempt": job.attempt,
                    },
                )
                report.admitted.append(a.job_id)
                # updated_at: its last transition, the one into the queue.
                report.waits.append((a.pool, (now - job.updated_at).total_seconds()))
                if a.backfilled:
                    report.backfilled.append(a.pool)
            for p in decisions.preempted:
                deadline = datetime.fromtimestamp(p.grace_deadline, UTC)
                for victim in p.victims:
                    job = s.get(Job, victim)
                    if job is None or job.status != S.RUNNING.value:
                        continue
                    spans.preempting(job, p, deadline)
                    transition(
                        s,
                        victim,
                        expected=S.RUNNING,
                        to=S.PREEMPTING,
                        now=now,
                        message=p.message,
                        preempt_deadline=deadline,
                        reasons=[{"code": "preempted", "message": p.message}],
                        details={"for_job": p.for_job, "reason": p.reason},
                    )
                    audit_log.record(
                        s,
                        None,
                        "job.preempt",
                        "job",
                        victim,
                        stream=job.member_id,
                        now=now,
                        details={
                            "for_job": p.for_job,
                            "reason": p.reason,
                            "grace_deadline": deadline.isoformat(),
                        },
                    )
                    notices.append((victim, deadline))
                    self._notified.add((victim, job.attempt))
                    report.preempted.append(victim)
                    report.preemptions.append((job.pool or "", p.reason))
            for pend in decisions.pending:
                reasons = [{"code": r.code, "message": r.message} for r in pend.reasons]
                eta = datetime.fromtimestamp(pend.eta, UTC) if pend.eta else None
                s.execute(
                    update(Job)
                    .where(col(Job.id) == pend.job_id, col(Job.status) == S.QUEUED.value)
                    .values(reasons=reasons, queue_position=pend.position, eta=eta)
                )
            spans.link_waiting(s, decisions.pending, len(report.admitted) + len(report.preempted))
            s.commit()
        return notices

    def _launch(self, job: Job, inventory: Inventory, report: CycleReport) -> None:
        self._launch_all([job], inventory, report)

    def _launch_all(self, jobs: list[Job], inventory: Inventory, report: CycleReport) -> None:
        """Launch admitted jobs together: Ray reserves their placement groups concurrently
        (see ``RayExecutor.launch_many``); each job then runs or goes back to the queue."""
        ready: list[tuple[Job, LaunchSpec, Span]] = []
        for job in jobs:
            span = spans.placing(job)
            with Session(self.db, expire_on_commit=False) as s:
                decision = residency.placement(s, job, job.pool or "")
            span.set_attribute("nuri.residency.policy_ids", list(decision.policy_ids))
            if not decision.allowed:
                # Checked again at placement: labels may have changed since the engine decided.
                why = "; ".join(decision.reasons) or "denied"
                self._unadmit(job, "residency_denied", why)
                tracing.end(span, error=f"residency_denied: {why}")
                continue
            plan = self._plan(job, report)
            if plan is None:
                tracing.end(span, error="no execution plan")
                continue
            spec = LaunchSpec(
                job_id=job.id,
                attempt=job.attempt,
                pool=job.pool or "",
                assignment=tuple((str(n), int(g)) for n, g in job.assignment),
                plan=plan,
                traceparent=tracing.traceparent_of(span) or job.traceparent,
            )
            ready.append((job, spec, span))
        if not ready:
            return
        failed = self.ray.launch_many([spec for _, spec, _ in ready], inventory.alive)
        for job, _, span in ready:
            failure = failed.get(job.id)
            if failure is not None:
                self._unadmit(job, "placement_failed", str(failure))
                tracing.end(span, error=f"placement_failed: {failure}")
            else:
                self._mark_running(job, report)
                tracing.end(span)

    def _plan(self, job: Job, report: CycleReport) -> dict[str, Any] | None:
        """Resolve the admitted job into its ExecutionPlan and store it with the job (the
        workers get this and nothing else); a job that cannot be resolved fails."""
        now = self.clock()
        try:
            with Session(self.db, expire_on_commit=False) as s:
                plan = execution.resolve(s, job, job.pool or "", self.config.jobs_root)
        except execution.PlanFailed as exc:
            self._finish(job, S.FAILED, exc.message, report, code=exc.code, details=exc.details)
            return None
        stored = plan.to_dict()
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            result = s.execute(
                update(Job)
                .where(
                    col(Job.id) == job.id,
                    col(Job.attempt) == job.attempt,
                    col(Job.status) == S.ADMITTED.value,
                )
                .values(execution_plan=stored)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return None  # moved underneath us (a cancel): nothing to launch
            s.commit()
        job.execution_plan = stored
        return stored

    def _unadmit(self, job: Job, code: str, message: str) -> None:
        """Roll an admission back (same attempt): the job waits for the next cycle."""
        now = self.clock()
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            transition(
                s,
                job.id,
                expected=S.ADMITTED,
                to=S.QUEUED,
                now=now,
                message=message,
                assignment=[],
                pool=None,
                attempt=job.attempt,
                reasons=[{"code": code, "message": message}],
            )
            s.commit()

    # --- the loop --------------------------------------------------------------------------

    def wake(self) -> None:
        """Run a cycle soon (a submission or a finished job); the tick runs anyway."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler cycle failed")
            self._wake.wait(self.config.interval_s)
            self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nuri-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.token is not None:
            with Session(self.db) as s:
                lease.release(s, self.config.holder, self.token, self.clock())
