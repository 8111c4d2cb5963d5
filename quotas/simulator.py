"""Trace replay through the real engine (``admit``) in simulated, event-driven time.

Each pool is replayed on its own (the ITP traces are ten separate clusters): events are job
arrivals, completions (at the job's real duration) and the end of preemption grace periods.
At every event time -- or, with ``cycle_interval`` > 0, at the next multiple of it -- the
simulator builds a :class:`quotas.snapshot.Snapshot` and applies the decisions of
``admit(snapshot, now)`` exactly as the control plane would. ``fifo`` and ``drf`` go through
the same harness and the same engine entry point; only ``EngineConfig.policy`` differs.

Modelling choices (documented in bench/README.md):

* every job is a preemptible ``training`` job; its declared max runtime is its real
  duration x ``runtime_overestimate`` (users overestimate; backfill relies on it);
* requests above one node take whole nodes; no job asks for a single domain;
* jobs checkpoint every ``checkpoint_interval`` seconds of running; a preempted job loses the
  work since its last checkpoint plus its grace period, and resumes from the checkpoint;
* members' decayed usage (fair-share history) is integrated exactly between events.

Metrics: utilisation (busy GPU-seconds, lost work included, over capacity x the span from
first arrival to last completion), mean and p95 job completion time (finish - submit) and
queueing delay (first start - submit), overall and per member; Jain's fairness index over
members' normalised service (sum of GPUs x duration over sum of GPUs x JCT: 1.0 means the
member never waited); quota-guarantee violations (jobs that fitted their member's nominal
quota when submitted -- together with the member's running and already queued jobs -- and
still waited longer than the grace period plus one cycle);
preemptions and GPU-hours lost to them.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from quotas.engine import admit_validated
from quotas.fair_share import decay_usage
from quotas.replay_setup import ReplayCluster, node_gpus
from quotas.snapshot import (
    Budget,
    EngineConfig,
    Member,
    Node,
    PendingWorkload,
    Policy,
    PriorityClass,
    RunningWorkload,
    Snapshot,
    validate,
)
from quotas.traces import TraceJob

Progress = Callable[[int, int], None]  # (jobs finished, jobs in the trace)
TRAINING = PriorityClass("training", 100, preemptible=True)
_COMPLETE, _LEAVE = 0, 1


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Knobs of a replay (durations in seconds)."""

    policy: Policy = "nuri"
    runtime_overestimate: float = 1.5
    checkpoint_interval: float = 1800.0
    grace_period: float = 120.0
    min_runtime: float = 600.0
    max_preemptions: int = 3
    fair_share_half_life: float = 7 * 86400.0
    history_weight: float = 0.5
    cycle_interval: float = 0.0
    backfill: bool = True


@dataclass(frozen=True, slots=True)
class MemberMetrics:
    """Per-member results (times in seconds)."""

    jobs: int
    gpu_hours: float
    mean_jct: float
    p95_jct: float
    mean_wait: float
    p95_wait: float
    normalised_service: float
    quota_violations: int


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What a replay measured (times in seconds, utilisation in [0, 1])."""

    policy: str
    jobs: int
    completed: int
    unfinished: int
    capacity_gpus: int
    cycles: int
    utilisation: float
    mean_jct: float
    p95_jct: float
    mean_wait: float
    p95_wait: float
    jain_fairness: float
    in_quota_jobs: int
    quota_violations: int
    preemptions: int
    gpu_hours_lost: float
    per_member: tuple[tuple[str, MemberMetrics], ...]


@dataclass(slots=True)
class _Outcome:
    job: TraceJob
    gpus: int
    first_start: float = -1.0
    finish: float = -1.0
    in_quota: bool = False


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); 1.0 is perfectly even."""
    if not values:
        return 1.0
    square = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * square) if square > 0 else 1.0


class _PoolReplay:
    """One pool's event loop."""

    def __init__(
        self,
        cluster: ReplayCluster,
        pool: str,
        jobs: list[TraceJob],
        config: SimulationConfig,
        tick: Callable[[], None] | None,
    ):
        self.config = config
        self.tick = tick or (lambda: None)
        self.pool = next(p for p in cluster.pools if p.name == pool)
        self.nodes = {n.name: n for n in cluster.nodes if n.pool == pool}
        self.capacity = sum(n.total_gpus for n in self.nodes.values())
        self.members = {
            m.name: replace(m, quotas={pool: m.quotas[pool]} if pool in m.quotas else {})
            for m in cluster.members
        }
        self.cohorts = cluster.cohorts
        self.engine = EngineConfig(
            policy=config.policy,
            grace_period=config.grace_period,
            min_runtime=config.min_runtime,
            max_preemptions=config.max_preemptions,
            fair_share_half_life=config.fair_share_half_life,
            history_weight=config.history_weight,
            backfill=config.backfill,
            explain=False,
        )
        per_node = self.pool.gpus_per_node
        self.jobs = sorted(jobs, key=lambda j: (j.submit_time, j.job_id))
        self.outcomes = {j.job_id: _Outcome(j, node_gpus(j.gpus, per_node)) for j in self.jobs}
        self.remaining = {j.job_id: max(1.0, j.duration) for j in self.jobs}
        self.times_preempted: dict[str, int] = {}
        self.version: dict[str, int] = {}
        self.pending: dict[str, PendingWorkload] = {}
        self.running: dict[str, RunningWorkload] = {}
        self.events: list[tuple[float, int, int, str, int]] = []
        self.seq = 0
        self.usage: dict[str, int] = dict.fromkeys(self.members, 0)  # GPUs in use
        self.queued: dict[str, int] = dict.fromkeys(self.members, 0)  # GPUs waiting
        self.history: dict[str, float] = dict.fromkeys(self.members, 0.0)
        self.used_hours: dict[str, float] = dict.fromkeys(self.members, 0.0)
        self.history_at = 0.0
        self.busy_gpu_seconds = 0.0
        self.lost_gpu_seconds = 0.0
        self.preemptions = 0
        self.cycles = 0
        self._node_tuple: tuple[Node, ...] | None = None
        self.validated = False

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        arrivals, next_arrival = self.jobs, 0
        if not arrivals:
            return
        self.history_at = arrivals[0].submit_time
        interval = self.config.cycle_interval
        while next_arrival < len(arrivals) or self.events:
            candidates = []
            if next_arrival < len(arrivals):
                candidates.append(arrivals[next_arrival].submit_time)
            if self.events:
                candidates.append(self.events[0][0])
            now = min(candidates)
            if interval > 0:
                now = math.ceil(now / interval) * interval
            self._integrate_history(now)
            while self.events and self.events[0][0] <= now:
                when, kind, _, job_id, version = heapq.heappop(self.events)
                if self.version.get(job_id) != version or job_id not in self.running:
                    continue
                if kind == _COMPLETE:
                    self._complete(job_id, when)
                else:
                    self._leave(job_id, when)
            while next_arrival < len(arrivals) and arrivals[next_arrival].submit_time <= now:
                self._arrive(arrivals[next_arrival])
                next_arrival += 1
            if self.pending:
                self._cycle(now)

    def _cycle(self, now: float) -> None:
        self.cycles += 1
        members = tuple(
            # Direct construction: dataclasses.replace is several times slower per cycle.
            Member(m.name, m.cohort, m.quotas, m.weight, self._budget(m, now), self.history[name])
            for name, m in self.members.items()
        )
        if self._node_tuple is None:
            self._node_tuple = tuple(self.nodes.values())
        snapshot = Snapshot(
            (self.pool,),
            self._node_tuple,
            self.cohorts,
            members,
            (TRAINING,),
            tuple(self.running.values()),
            tuple(self.pending.values()),
            self.engine,
        )
        if not self.validated:
            validate(snapshot)  # the structure never changes during a replay: check it once
            self.validated = True
        decisions = admit_validated(snapshot, now)
        for adm in decisions.admitted:
            self._start(adm.job_id, adm.assignments, now)
        for pre in decisions.preempted:
            for victim in pre.victims:
                self._notify(victim, pre.grace_deadline, now)

    # -- transitions --------------------------------------------------------------------------

    def _arrive(self, job: TraceJob) -> None:
        outcome = self.outcomes[job.job_id]
        quota = self.members[job.tenant].quotas.get(self.pool.name)
        nominal = quota.nominal if quota else 0
        # In quota: fits the member's nominal together with its running and queued jobs.
        held = self.usage[job.tenant] + self.queued[job.tenant]
        outcome.in_quota = held + outcome.gpus <= nominal
        self._enqueue(job.job_id)

    def _enqueue(self, job_id: str) -> None:
        outcome = self.outcomes[job_id]
        job = outcome.job
        declared = self.remaining[job_id] * self.config.runtime_overestimate
        self.queued[job.tenant] += outcome.gpus
        self.pending[job_id] = PendingWorkload(
            job_id,
            job.tenant,
            outcome.gpus,
            TRAINING.name,
            job.submit_time,
            declared,
            (self.pool.name,),
            times_preempted=self.times_preempted.get(job_id, 0),
        )

    def _start(self, job_id: str, assignments: tuple[tuple[str, int], ...], now: float) -> None:
        job = self.pending.pop(job_id)
        for name, gpus in assignments:
            node = self.nodes[name]
            self.nodes[name] = Node(
                node.name, node.pool, node.domain, node.total_gpus, node.free_gpus - gpus
            )
        self._node_tuple = None
        self.running[job_id] = RunningWorkload(
            job_id,
            job.member,
            self.pool.name,
            job.priority_class,
            assignments,
            now,
            job.max_runtime,
            now,
            job.times_preempted,
        )
        outcome = self.outcomes[job_id]
        if outcome.first_start < 0:
            outcome.first_start = now
        self.usage[job.member] += job.gpus
        self.queued[job.member] -= job.gpus
        version = self.version[job_id] = self.version.get(job_id, 0) + 1
        self._push(now + self.remaining[job_id], _COMPLETE, job_id, version)

    def _notify(self, job_id: str, deadline: float, now: float) -> None:
        job = self.running[job_id]
        interval = self.config.checkpoint_interval
        saved = math.floor((now - job.started_at) / interval) * interval
        self.running[job_id] = replace(
            job, preempting_until=deadline, last_checkpoint_at=job.started_at + saved
        )
        self._push(deadline, _LEAVE, job_id, self.version[job_id])

    def _release(self, job: RunningWorkload, until: float) -> None:
        for name, gpus in job.assignments:
            node = self.nodes[name]
            self.nodes[name] = Node(
                node.name, node.pool, node.domain, node.total_gpus, node.free_gpus + gpus
            )
        self._node_tuple = None
        del self.running[job.job_id]
        self.usage[job.member] -= job.gpus
        ran = (until - job.started_at) * job.gpus
        self.busy_gpu_seconds += ran
        self.used_hours[job.member] += ran / 3600.0

    def _complete(self, job_id: str, when: float) -> None:
        job = self.running[job_id]
        self._release(job, when)
        self.outcomes[job_id].finish = when
        self.tick()

    def _leave(self, job_id: str, when: float) -> None:
        job = self.running[job_id]
        self._release(job, when)
        checkpoint = (
            job.last_checkpoint_at if job.last_checkpoint_at is not None else job.started_at
        )
        saved = checkpoint - job.started_at
        self.remaining[job_id] -= saved
        self.lost_gpu_seconds += (when - checkpoint) * job.gpus
        self.preemptions += 1
        self.times_preempted[job_id] = self.times_preempted.get(job_id, 0) + 1
        self._enqueue(job_id)

    def _push(self, when: float, kind: int, job_id: str, version: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, kind, self.seq, job_id, version))

    def _integrate_history(self, now: float) -> None:
        elapsed = now - self.history_at
        if elapsed <= 0:
            return
        half_life = self.config.fair_share_half_life
        for name, previous in self.history.items():
            self.history[name] = decay_usage(previous, elapsed, self.usage[name], half_life)
        self.history_at = now

    def _budget(self, member: Member, now: float) -> Budget | None:
        if member.budget is None:
            return None
        running = sum(
            (now - j.started_at) * j.gpus for j in self.running.values() if j.member == member.name
        )
        used = self.used_hours[member.name] + running / 3600.0
        return replace(member.budget, used_gpu_hours=used)


@dataclass(frozen=True, slots=True)
class PoolReplay:
    """What replaying one pool produced; :func:`combine` turns several into a result."""

    pool: str
    capacity: int
    outcomes: tuple[_Outcome, ...]
    busy_gpu_seconds: float
    lost_gpu_seconds: float
    preemptions: int
    cycles: int


def replay_pool(
    jobs: Sequence[TraceJob],
    cluster: ReplayCluster,
    pool: str,
    config: SimulationConfig,
    tick: Callable[[], None] | None = None,
) -> PoolReplay:
    """Replay the jobs of one pool (pools are independent, so callers may run them in
    parallel processes); ``tick()`` is called as each job finishes."""
    replay = _PoolReplay(cluster, pool, [j for j in jobs if j.pool == pool], config, tick)
    replay.run()
    return PoolReplay(
        pool,
        replay.capacity,
        tuple(replay.outcomes.values()),
        replay.busy_gpu_seconds,
        replay.lost_gpu_seconds,
        replay.preemptions,
        replay.cycles,
    )


def simulate(
    jobs: Sequence[TraceJob],
    cluster: ReplayCluster,
    config: SimulationConfig,
    progress: Progress | None = None,
) -> SimulationResult:
    """Replay ``jobs`` on ``cluster`` under ``config.policy`` and measure the outcome.

    ``progress(finished, total)`` is called as jobs finish. Pure: no clock, no I/O.
    """
    total = len(jobs)
    finished = 0

    def tick() -> None:
        nonlocal finished
        finished += 1
        if progress is not None and (finished % 250 == 0 or finished == total):
            progress(finished, total)

    pools = sorted({j.pool for j in jobs})
    replays = [replay_pool(jobs, cluster, pool, config, tick) for pool in pools]
    if progress is not None:
        progress(finished, total)
    return combine(config, replays)


def combine(config: SimulationConfig, replays: Sequence[PoolReplay]) -> SimulationResult:
    """Aggregate per-pool replays into one result (see the module docstring for metrics)."""
    outcomes = [o for r in replays for o in r.outcomes]
    total = len(outcomes)
    done = [o for o in outcomes if o.finish >= 0]
    capacity_time = 0.0
    for replay in replays:
        mine = [o for o in replay.outcomes if o.finish >= 0]
        if mine:
            start = min(o.job.submit_time for o in replay.outcomes)
            end = max(o.finish for o in mine)
            capacity_time += replay.capacity * max(1.0, end - start)
    busy = sum(r.busy_gpu_seconds for r in replays)
    threshold = config.grace_period + config.cycle_interval + 1e-6

    def violated(o: _Outcome) -> bool:
        return o.in_quota and o.first_start - o.job.submit_time > threshold

    per_member = []
    services = []
    for name in sorted({o.job.tenant for o in outcomes}):
        mine = [o for o in done if o.job.tenant == name]
        jct = [o.finish - o.job.submit_time for o in mine]
        wait = [o.first_start - o.job.submit_time for o in mine]
        work = sum(o.gpus * o.job.duration for o in mine)
        spent = sum(o.gpus * (o.finish - o.job.submit_time) for o in mine)
        service = work / spent if spent > 0 else 1.0
        if mine:
            services.append(service)
        per_member.append(
            (
                name,
                MemberMetrics(
                    len(mine),
                    work / 3600.0,
                    _mean(jct),
                    percentile(jct, 95),
                    _mean(wait),
                    percentile(wait, 95),
                    service,
                    sum(1 for o in mine if violated(o)),
                ),
            )
        )
    jct = [o.finish - o.job.submit_time for o in done]
    wait = [o.first_start - o.job.submit_time for o in done]
    return SimulationResult(
        policy=config.policy,
        jobs=total,
        completed=len(done),
        unfinished=total - len(done),
        capacity_gpus=sum(r.capacity for r in replays),
        cycles=sum(r.cycles for r in replays),
        utilisation=busy / capacity_time if capacity_time > 0 else 0.0,
        mean_jct=_mean(jct),
        p95_jct=percentile(jct, 95),
        mean_wait=_mean(wait),
        p95_wait=percentile(wait, 95),
        jain_fairness=jain_index(services),
        in_quota_jobs=sum(1 for o in outcomes if o.in_quota),
        quota_violations=sum(1 for o in done if violated(o)),
        preemptions=sum(r.preemptions for r in replays),
        gpu_hours_lost=sum(r.lost_gpu_seconds for r in replays) / 3600.0,
        per_member=tuple(per_member),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
