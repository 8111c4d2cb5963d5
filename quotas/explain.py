"""Pending explanations: ranked human-readable reasons and ETAs.

Every pending job gets all the distinct reasons it could not start (one per pool tried,
deduplicated by code), sorted by :data:`quotas.decisions.REASON_RANK` so the reason to fix
first comes first, followed by its queue position. Messages say what was needed and what was
there, e.g. ``needs 16 x H200 (2 whole nodes) in one NVLink domain; 6 GPUs free in h200``.

ETAs are estimates, not promises, built only from what the snapshot fixes in absolute time
(running jobs end at their declared max runtime, ``started_at + max_runtime``), so the ETA
of a job whose world does not change stays put from cycle to cycle instead of drifting:

* a job waiting for a preemption or holding a reservation gets its exact start;
* a job the quota tree refuses in its first pool (``quota_exceeded``, ``cohort_exhausted``,
  ``non_preemptible_over_nominal``) gets the later of two times: when running work ending
  (earliest first; its member's own for the nominal rule, every member's for the tree's
  limits) first gives the member room for it (:class:`QuotaClock`), and when the pool's
  free GPUs plus those released by then are enough. No estimate (``None``) when all running
  work ending would not be enough; the reason's message names the basis either way. Such
  a job takes no part in the fluid schedule below: it cannot start before its quota frees;
* a job blocked by its GPU-hour budget gets no estimate: a budget is not refilled within
  its period, and the snapshot does not say what the next period grants;
* every other job: a fluid list-schedule per pool, in queue order, over the GPUs free and
  released. It ignores fragmentation, so it is optimistic when that is the blocker.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

from quotas import decisions as codes
from quotas.cycle import CycleState
from quotas.decisions import Reason
from quotas.placement import Shape, describe_shape
from quotas.snapshot import PendingWorkload

# A reason whose message is written at the end of the cycle, from the final state (free GPUs
# and quota usage only shrink during a cycle, so what blocked the job still blocks it then).
# Many jobs share one, so it is formatted once: (kind, member, pool, what, flag), where
# ``what`` is the job's GPUs for quota reasons (all they depend on) and its shape otherwise.
Deferred = tuple[str, str, str, Shape | int, bool]
QUOTA = "quota"
NOMINAL_ONLY = "nominal_only"
CAPACITY = "capacity"


@dataclass(slots=True)
class PendingRecord:
    """A job that stays pending this cycle, with what the engine learned about it."""

    job: PendingWorkload
    reasons: list[Reason | Deferred]
    eta_pool: str | None  # pool whose queue the ETA estimate uses
    eta: float | None = None  # fixed ETA (reservation, preemption, budget) when known
    no_eta: bool = False  # never fits / invalid: no estimate


def relative(when: float, now: float) -> str:
    """``in 12m`` style distance from now, for messages."""
    seconds = max(0.0, when - now)
    if seconds < 120:
        return f"in {seconds:.0f}s"
    if seconds < 7200:
        return f"in {seconds / 60:.0f}m"
    if seconds < 172800:
        return f"in {seconds / 3600:.1f}h"
    return f"in {seconds / 86400:.1f}d"


class ReasonWriter:
    """Formats deferred reasons from the cycle's final state, each distinct one once."""

    def __init__(self, state: CycleState, clock: QuotaClock | None = None):
        self.state = state
        self.clock = clock if clock is not None else QuotaClock(state)
        self._cache: dict[Deferred, Reason] = {}
        # Per (member, pool): what a quota message says besides the GPUs needed.
        self._quota: dict[tuple[str, str], tuple[int, int | None, str, str]] = {}

    def write(self, item: Reason | Deferred) -> Reason:
        """The human-readable reason for a recorded one."""
        if isinstance(item, Reason):
            return item
        found = self._cache.get(item)
        if found is None:
            found = self._cache[item] = self._make(item)
        return found

    def _make(self, item: Deferred) -> Reason:
        kind, member, pool, what, flag = item
        state = self.state
        gpus = what if isinstance(what, int) else what.gpus
        if kind == QUOTA:
            facts = self._quota.get((member, pool))
            if facts is None:
                facts = self._quota[(member, pool)] = _quota_facts(state, member, pool)
            used, limit, exceeded, exhausted = facts
            basis = self.clock.basis(QUOTA, member, pool, gpus)
            if limit is not None and used + gpus > limit:
                return Reason(codes.QUOTA_EXCEEDED, f"{exceeded}; needs {gpus}; {basis}")
            return Reason(codes.COHORT_EXHAUSTED, f"{exhausted}; needs {gpus}; {basis}")
        if kind == NOMINAL_ONLY:
            tree = state.tree
            used, nominal = tree.usage(member, pool), tree.nominal(member, pool)
            basis = self.clock.basis(NOMINAL_ONLY, member, pool, gpus)
            no_row, default = state.pool_default(member, pool)
            if no_row:
                text = (
                    f"{no_quota_rule(state.label(member), pool, default)}; non-preemptible "
                    "jobs run only inside nominal quota"
                )
            else:
                text = (
                    "non-preemptible jobs run only inside nominal quota: member "
                    f"{state.label(member)} uses {used}/{nominal} in {pool}"
                )
            return Reason(codes.NON_PREEMPTIBLE_OVER_NOMINAL, f"{text}; needs {gpus}; {basis}")
        if isinstance(what, int):
            raise TypeError(f"a {kind} reason needs the job's shape, not its GPU count")
        return capacity_reason(state, pool, what, flag)


def capacity_reason(state: CycleState, pool_name: str, shape: Shape, held_back: bool) -> Reason:
    """Why ``shape`` does not fit in the pool: capacity, fragmentation, or -- ``held_back``,
    decided when the job was tried -- GPUs held for a reservation the job would outlast."""
    index = state.index[pool_name]
    pool = index.pool
    reservation = state.reservations.get(pool_name)
    if held_back and reservation is not None:
        return Reason(
            codes.RESERVED_FOR_HEAD,
            f"GPUs in {pool.name} are held for job {reservation.job_id}, which starts "
            f"{relative(reservation.start, state.now)}; this job's max runtime would delay it",
        )
    need = describe_shape(shape, pool)
    # GPUs held for a reservation are idle: count them as free in what people read.
    free = index.free_total + (sum(reservation.held.values()) if reservation else 0)
    if free >= shape.gpus:
        return Reason(
            codes.FRAGMENTED,
            f"needs {need}; {free} GPUs free in {pool.name}, but no set of nodes fits the shape",
        )
    return Reason(
        codes.INSUFFICIENT_CAPACITY,
        f"needs {need}; {free} of {index.capacity} GPUs free in {pool.name}",
    )


def quota_reason(state: CycleState, member: str, pool: str, gpus: int) -> Reason:
    """Why the quota tree refuses ``gpus`` more GPUs for ``member`` in ``pool``."""
    used, limit, exceeded, exhausted = _quota_facts(state, member, pool)
    if limit is not None and used + gpus > limit:
        return Reason(codes.QUOTA_EXCEEDED, f"{exceeded}; needs {gpus}")
    return Reason(codes.COHORT_EXHAUSTED, f"{exhausted}; needs {gpus}")


def _quota_facts(state: CycleState, member: str, pool: str) -> tuple[int, int | None, str, str]:
    """(usage, nominal + borrowing limit or None, the two message stems) of a quota reason:
    over the member's own limit, or nothing left to borrow in its cohort."""
    tree = state.tree
    used, nominal = tree.usage(member, pool), tree.nominal(member, pool)
    limit = tree.borrowing_limit(member, pool)
    name = state.label(member)
    no_row, _ = state.pool_default(member, pool)
    if no_row:
        exceeded = f"{no_quota_rule(name, pool, limit)}; it uses {used} there"
    else:
        limit_text = "unlimited" if limit is None else str(limit)
        exceeded = (
            f"member {name} quota in {pool}: {used}/{nominal} in use, borrowing limit {limit_text}"
        )
    cohort = tree.cohort_of(member) or name
    exhausted = (
        f"nothing lendable in cohort {cohort} for {pool}: member {name} uses "
        f"{used}/{nominal}, {tree.available(member, pool)} GPUs available"
    )
    if no_row:
        exhausted = f"{no_quota_rule(name, pool, limit)}; {exhausted}"
    return used, None if limit is None else nominal + limit, exceeded, exhausted


def no_quota_rule(member: str, pool: str, limit: int | None) -> str:
    """What a member without a quota row in a pool may do there, in words."""
    if limit is None:
        allowed = "members without quota may borrow idle GPUs without a limit"
    elif limit == 0:
        allowed = "members without quota may not run there"
    else:
        allowed = f"members without quota may borrow up to {limit} GPUs"
    return f"member {member} has no quota in {pool}; {allowed}"


def rank(reasons: Iterable[Reason]) -> list[Reason]:
    """Distinct reasons by code (first message wins), most fundamental first."""
    reasons = list(reasons)
    if len(reasons) < 2:
        return reasons
    seen: dict[str, Reason] = {}
    for reason in reasons:
        seen.setdefault(reason.code, reason)
    return sorted(seen.values(), key=lambda r: codes.REASON_RANK.get(r.code, 99))


def estimate_etas(
    state: CycleState, records: list[PendingRecord], clock: QuotaClock | None = None
) -> list[float | None]:
    """ETA of each pending record (same order), see the module docstring.

    Pools are independent: each runs its own fluid schedule over its records, in order.
    """
    if clock is None:
        clock = QuotaClock(state)
    now = state.now
    etas: list[float | None] = [None] * len(records)
    by_pool: dict[str, list[int]] = {name: [] for name in state.pools}
    # The quota reason of a record's ETA pool, per reasons list (records settled from a memo
    # share one), and the records it holds back.
    quota_items: dict[tuple[int, str], Deferred | None] = {}
    held_back: list[tuple[int, Deferred]] = []
    for i, record in enumerate(records):
        pool = record.eta_pool
        if record.no_eta or pool is None or record.eta is not None:
            etas[i] = record.eta
            continue
        key = (id(record.reasons), pool)
        if key in quota_items:
            item = quota_items[key]
        else:
            item = quota_items[key] = _quota_item(record.reasons, pool)
            clock.expect(record.reasons)
        if item is None:
            by_pool[pool].append(i)
        else:
            held_back.append((i, item))
    # Asked only now that every request is known: each quota curve is walked once.
    quota_etas: dict[int, float | None] = {}
    for i, item in held_back:
        item_id = id(item)
        if item_id in quota_etas:
            etas[i] = quota_etas[item_id]
        else:
            kind, member, pool, gpus, _ = item
            etas[i] = quota_etas[item_id] = clock.eta(
                kind, member, pool, gpus if isinstance(gpus, int) else 0
            )
    heappop, heappush = heapq.heappop, heapq.heappush
    for name, positions in by_pool.items():
        if not positions:
            continue
        releases = [(r.end, r.gpus) for r in state.running(name) if not r.claimed]
        releases.extend((end, sum(g for _, g in pl)) for end, pl in state.admitted_ends[name])
        heapq.heapify(releases)
        reservation = state.reservations.get(name)
        index = state.index[name]
        free = index.free_total + (sum(reservation.held.values()) if reservation else 0)
        capacity, clock_at = index.capacity, now
        for i in positions:
            job = records[i].job
            need = job.gpus
            if need > capacity:
                continue  # never fits: no estimate
            while free < need and releases:
                end, gpus = heappop(releases)
                if end > clock_at:
                    clock_at = end
                free += gpus
            if free < need:
                continue
            free -= need
            heappush(releases, (clock_at + job.max_runtime, need))
            etas[i] = clock_at
    return etas


def _quota_item(reasons: list[Reason | Deferred], pool: str) -> Deferred | None:
    """The quota-tree reason recorded for ``pool``, if that is what refused the job there."""
    for item in reasons:
        if isinstance(item, tuple) and item[2] == pool and item[0] in (QUOTA, NOMINAL_ONLY):
            return item
    return None


@dataclass(frozen=True, slots=True)
class QuotaFrees:
    """When the quota tree first lets a member take some GPUs in a pool, if running work
    ends at its declared max runtime and nothing else changes.

    ``at``: that time (epoch seconds, never before now), None when all running work ending
    would not be enough; ``released``: GPUs released by then (every member's for the tree's
    limits, the member's own for the nominal rule), by the first ``count`` releases of that
    list; ``last_job``: the job whose end makes the room.
    """

    at: float | None
    released: int = 0
    count: int = 0
    last_job: str = ""


# A release of quota usage: (end, job id, member, GPUs).
Release = tuple[float, str, str, int]
# An availability curve: (availability after each step, when, walk complete).
Curve = tuple[list[int], list[QuotaFrees], bool]


class QuotaClock:
    """When quota refusals end, from the cycle's final state (see the module docstring).

    For the tree's limits (``QUOTA``) the pool's releases, earliest first (all that end at
    the same time together), are applied to the quota tree until the member's availability
    reaches what is asked, then undone. Availability only grows as usage drops, so one walk
    per curve, as far as its largest request (:meth:`expect`), answers every request. A
    member without limits of its own in the pool (no borrowing limit, nothing guaranteed)
    has exactly its cohort's availability, so such members share their cohort's curve.
    For the nominal rule of non-preemptible jobs (``NOMINAL_ONLY``) only the member's own
    releases count. Every time is absolute (running jobs' ends, this cycle's admissions'
    ends), so the answers do not move with ``now``.
    """

    def __init__(self, state: CycleState):
        self.state = state
        self._releases: dict[str, list[Release]] = {}
        # Per pool and member: (index in the pool's releases, GPUs released so far) of its own.
        self._own: dict[str, dict[str, tuple[list[int], list[int], list[Release]]]] = {}
        self._keys: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        self._curves: dict[tuple[str, str, str], Curve] = {}
        self._wanted: dict[tuple[str, str, str], int] = {}
        self._shared: dict[tuple[str, str, str], int] | None = None  # _wanted per shared curve
        self._frees: dict[tuple[str, str, str, int], QuotaFrees] = {}
        self._capacity: dict[str, tuple[int, list[float], list[int]]] = {}

    def expect(self, reasons: Iterable[Reason | Deferred]) -> None:
        """Note the quota reasons that will be asked about, so that each curve is walked
        once, as far as its largest request needs."""
        wanted = self._wanted
        for item in reasons:
            if isinstance(item, tuple) and (item[0] == QUOTA or item[0] == NOMINAL_ONLY):
                gpus = item[3]
                if isinstance(gpus, int):
                    key = (item[0], item[1], item[2])
                    if gpus > wanted.get(key, 0):
                        wanted[key] = gpus
                        self._shared = None

    def eta(self, kind: str, member: str, pool: str, gpus: int) -> float | None:
        """ETA of a job of ``gpus`` GPUs refused by the quota tree (``kind``) in ``pool``:
        the later of its quota freeing and enough GPUs in the pool, None if either never."""
        found = self.frees(kind, member, pool, gpus).at
        if found is None:
            return None
        room = self.capacity_at(pool, gpus)
        return None if room is None else max(self.state.now, found, room)

    def frees(self, kind: str, member: str, pool: str, gpus: int) -> QuotaFrees:
        """When ``member`` may take ``gpus`` more GPUs in ``pool`` (see :class:`QuotaFrees`)."""
        memo = (kind, member, pool, gpus)
        found = self._frees.get(memo)
        if found is None:
            found = self._frees[memo] = self._find(kind, member, pool, gpus)
        return found

    def _find(self, kind: str, member: str, pool: str, gpus: int) -> QuotaFrees:
        tree = self.state.tree
        if kind == NOMINAL_ONLY:
            if gpus > tree.nominal(member, pool):
                return QuotaFrees(None)  # never, whatever ends
        else:
            limit = tree.borrowing_limit(member, pool)
            if limit is not None and gpus > tree.nominal(member, pool) + limit:
                return QuotaFrees(None)
        key = self._curve_key(kind, member, pool)
        curve = self._curves.get(key)
        if curve is None or (not curve[2] and curve[0][-1] < gpus):
            target = max(gpus, self._target(key))
            curve = self._curves[key] = self._walk(kind, member, pool, target)
        steps, points, _ = curve
        i = bisect_left(steps, gpus)
        return points[i] if i < len(points) else QuotaFrees(None)

    def basis(self, kind: str, member: str, pool: str, gpus: int) -> str:
        """What a quota reason says about when it ends."""
        state = self.state
        tree = state.tree
        found = self.frees(kind, member, pool, gpus)
        if found.at is None:
            if kind == NOMINAL_ONLY:
                nominal = tree.nominal(member, pool)
                if gpus > nominal:
                    return f"no estimate: it needs more than the nominal {nominal} GPUs"
                return (
                    f"no estimate: the member's running jobs in {pool} hold too few GPUs to "
                    "make room inside nominal quota"
                )
            limit = tree.borrowing_limit(member, pool)
            if limit is not None and gpus > tree.nominal(member, pool) + limit:
                if state.pool_default(member, pool)[0]:
                    return (
                        f"no estimate: it needs more than the {limit} GPUs members without "
                        f"quota may use in {pool}"
                    )
                return "no estimate: it needs more than nominal quota + borrowing limit"
            return f"no estimate: running jobs in {pool} ending would not free enough quota"
        if found.at > state.now:
            when = f"{relative(found.at, state.now)} (max runtime of job {found.last_job})"
        else:
            when = f"now (job {found.last_job} is past its max runtime)"
        own = found.released if kind == NOMINAL_ONLY else self._own_released(member, pool, found)
        if own == found.released:
            return f"quota frees when {own} of the member's GPUs in {pool} do, {when}"
        return (
            f"quota frees when running jobs in {pool} release {found.released} GPUs "
            f"({own} of them the member's), {when}"
        )

    def capacity_at(self, pool: str, gpus: int) -> float | None:
        """When ``gpus`` GPUs are free in ``pool`` counting only running work (and this
        cycle's admissions) ending, not other waiting jobs; None if never."""
        found = self._capacity.get(pool)
        state = self.state
        if found is None:
            reservation = state.reservations.get(pool)
            free = state.index[pool].free_total
            free += sum(reservation.held.values()) if reservation else 0
            ends = [(r.end, r.gpus) for r in state.running(pool) if not r.claimed]
            ends.extend((end, sum(g for _, g in pl)) for end, pl in state.admitted_ends[pool])
            ends.sort()
            times: list[float] = []
            totals: list[int] = []
            total = 0
            for end, g in ends:
                total += g
                times.append(end)
                totals.append(total)
            found = self._capacity[pool] = (free, times, totals)
        free, times, totals = found
        if free >= gpus:
            return state.now
        i = bisect_left(totals, gpus - free)
        return times[i] if i < len(times) else None

    def _target(self, key: tuple[str, str, str]) -> int:
        """The largest request expected of a curve (of all the members sharing it)."""
        if not key[1].startswith("cohort:"):
            return self._wanted.get(key, 0)
        if self._shared is None:
            self._shared = {}
            for k, g in self._wanted.items():
                shared = self._curve_key(*k)
                if g > self._shared.get(shared, 0):
                    self._shared[shared] = g
        return self._shared.get(key, 0)

    def _curve_key(self, kind: str, member: str, pool: str) -> tuple[str, str, str]:
        key = (kind, member, pool)
        found = self._keys.get(key)
        if found is None:
            found = key
            if kind == QUOTA:
                # The quota the tree applies: the member's own or the pool's default.
                quota = self.state.tree.quota(member, pool)
                cohort = self.state.tree.cohort_of(member)
                if cohort and (
                    quota is None
                    or (
                        quota.borrowing_limit is None
                        and (quota.lending_limit is None or quota.lending_limit >= quota.nominal)
                    )
                ):
                    found = (QUOTA, "cohort:" + cohort, pool)
            self._keys[key] = found
        return found

    def _pool_releases(self, pool: str) -> list[Release]:
        found = self._releases.get(pool)
        if found is None:
            state = self.state
            now, grace, known = state.now, state.config.grace_period, state.tree.member_index
            found = []
            for r in state.running(pool):
                job = r.job
                if job.member not in known:
                    continue  # not in the tree's usage
                end = r.end
                if r.claimed and job.preempting_until is None:
                    end = min(end, now + grace)  # preempted this cycle: leaves at the deadline
                found.append((end, job.job_id, job.member, r.gpus))
            found.extend(state.admitted_usage[pool])
            found.sort()
            self._releases[pool] = found
        return found

    def _own_releases(self, pool: str, member: str) -> tuple[list[int], list[int], list[Release]]:
        """The member's releases in ``pool``: their indexes in the pool's list, the GPUs
        released up to each, and the releases themselves."""
        by_member = self._own.get(pool)
        if by_member is None:
            by_member = self._own[pool] = {}
            for i, release in enumerate(self._pool_releases(pool)):
                entry = by_member.get(release[2])
                if entry is None:
                    entry = by_member[release[2]] = ([], [], [])
                entry[0].append(i)
                entry[1].append((entry[1][-1] if entry[1] else 0) + release[3])
                entry[2].append(release)
        return by_member.get(member, ([], [], []))

    def _own_released(self, member: str, pool: str, found: QuotaFrees) -> int:
        """GPUs of the member's own among the first ``found.count`` releases of the pool."""
        indexes, totals, _ = self._own_releases(pool, member)
        k = bisect_left(indexes, found.count)
        return totals[k - 1] if k else 0

    def _walk(self, kind: str, member: str, pool: str, target: int) -> Curve:
        """The availability curve of ``member`` in ``pool`` as releases happen, up to
        ``target`` GPUs (or through every release)."""
        state = self.state
        tree, now = state.tree, state.now
        nominal = used = 0
        if kind == NOMINAL_ONLY:
            releases = self._own_releases(pool, member)[2]
            nominal, used = tree.nominal(member, pool), tree.usage(member, pool)
            room = max(0, nominal - used)
        else:
            releases = self._pool_releases(pool)
            room = tree.available(member, pool)
        steps, points = [room], [QuotaFrees(now)]
        version = tree.version
        applied: list[tuple[str, int]] = []
        released = i = 0
        n = len(releases)
        try:
            while i < n and room < target:
                end = releases[i][0]
                job_id = ""
                while i < n and releases[i][0] == end:  # what ends together frees together
                    _, job_id, who, g = releases[i]
                    if kind != NOMINAL_ONLY:
                        tree.add_usage(who, pool, -g)
                        applied.append((who, g))
                    released += g
                    i += 1
                if kind == NOMINAL_ONLY:
                    room = max(0, nominal - used + released)
                else:
                    room = tree.available(member, pool)
                if room > steps[-1]:
                    steps.append(room)
                    points.append(QuotaFrees(max(now, end), released, i, job_id))
        finally:
            for who, g in reversed(applied):
                tree.add_usage(who, pool, g)
            tree.version = version  # usage is exactly as before
        return steps, points, i == n
