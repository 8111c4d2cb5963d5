"""The cluster over time, from the database: the series the portal's charts draw.

GPUs in use come from the usage records (an attempt holds ``gpus`` over [start, end), or up
to now while it runs), averaged over each bucket of a window (a day in hours, a week in six
hours, a quarter in days). Queue length and admission wait come from the jobs' events: a job
waits from each event into QUEUED (its submission, a requeue) until the next one out of it,
and an admission (QUEUED -> ADMITTED) waited that long. A budget's burn is the cumulative
GPU-hours of its member's records inside its period.

Scoping is the REST API's: a member's people see their own member's GPUs and jobs only; the
platform admin and the auditor see every member. Time is a parameter (``now``), never read
here; the bucket arithmetic is pure and tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import true
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, or_, select

from controlplane.auth import Principal
from controlplane.db.models import Budget, Job, JobEvent, Member, Pool, UsageRecord
from controlplane.portal.charts import (
    PALETTE,
    Chart,
    Say,
    Series,
    as_is,
    line_chart,
    number,
)

QUEUED, ADMITTED = "QUEUED", "ADMITTED"


@dataclass(frozen=True, slots=True)
class Window:
    """How far back a chart looks, in how many buckets of how many seconds."""

    name: str
    buckets: int
    seconds: int
    bucket_words: str  # "hour": the y label says "average per hour"

    def bounds(self, now: datetime) -> tuple[float, float]:
        """[start, end) in epoch seconds: whole buckets, the last one holding ``now``."""
        end = (math.floor(now.timestamp() / self.seconds) + 1) * self.seconds
        return float(end - self.buckets * self.seconds), float(end)

    def axis(self, now: datetime) -> tuple[float, float]:
        """The x axis of its charts: the first bucket's start to the last one's (``now``'s)."""
        start, end = self.bounds(now)
        return start, end - self.seconds


WINDOWS = {
    "day": Window("day", 24, 3600, "hour"),
    "week": Window("week", 28, 6 * 3600, "6 hours"),
    "quarter": Window("quarter", 91, 86400, "day"),
}


@dataclass(frozen=True, slots=True)
class Interval:
    """Something held or waiting over [start, end) (epoch seconds), ``weight`` of it."""

    start: float
    end: float
    weight: float = 1.0


def bucket_starts(start: float, seconds: int, n: int) -> list[float]:
    return [start + i * seconds for i in range(n)]


def average_per_bucket(
    intervals: Iterable[Interval], start: float, seconds: int, n: int, now: float
) -> list[float]:
    """The time-weighted average of the summed weights over each bucket; the bucket holding
    ``now`` averages over its elapsed part, later buckets are not reported (shorter list)."""
    shown = [b for b in bucket_starts(start, seconds, n) if b < now]
    totals = [0.0] * len(shown)
    for iv in intervals:
        lo, hi = max(iv.start, start), min(iv.end, now)
        if hi <= lo:
            continue
        first = max(0, int((lo - start) // seconds))
        last = min(len(shown) - 1, int((hi - start) // seconds))
        for i in range(first, last + 1):
            b0 = shown[i]
            overlap = min(hi, b0 + seconds) - max(lo, b0)
            if overlap > 0:
                totals[i] += overlap * iv.weight
    return [
        totals[i] / (min(b + seconds, now) - b) if min(b + seconds, now) > b else 0.0
        for i, b in enumerate(shown)
    ]


def peak_per_bucket(
    intervals: Sequence[Interval], start: float, seconds: int, n: int, now: float
) -> list[float]:
    """The most summed weight at any moment of each bucket (up to ``now``)."""
    shown = [b for b in bucket_starts(start, seconds, n) if b < now]
    changes = sorted(
        [(iv.start, iv.weight) for iv in intervals if iv.end > iv.start]
        + [(iv.end, -iv.weight) for iv in intervals if iv.end > iv.start],
        key=lambda c: (c[0], c[1]),  # an end before a start at the same moment
    )
    peaks = []
    level, k = 0.0, 0
    for b0 in shown:
        while k < len(changes) and changes[k][0] <= b0:
            level += changes[k][1]
            k += 1
        peak = level
        b1 = min(b0 + seconds, now)
        while k < len(changes) and changes[k][0] < b1:
            level += changes[k][1]
            k += 1
            peak = max(peak, level)
        peaks.append(max(0.0, peak))
    return peaks


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _visible(caller: Principal, member_column: Any) -> Any:
    """The scope of a query: every member for the platform admin and auditor, else the
    caller's own member (a caller of no member sees nothing)."""
    if caller.reads_all_members:
        return true()
    return member_column == (caller.member_id or "")


# -- GPUs in use -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Held:
    """A usage record as an interval, with its member's and pool's names."""

    member: str
    pool: str
    interval: Interval


def gpus_held(
    session: Session, caller: Principal, start: float, end: float, now: float
) -> list[Held]:
    """The usage records (caller's scope) that overlap [start, end), as GPU intervals."""
    begin = datetime.fromtimestamp(start, UTC)
    stop = datetime.fromtimestamp(end, UTC)
    rows = session.exec(
        select(UsageRecord, Member.name, Pool.name)
        .join(Member, col(Member.id) == col(UsageRecord.member_id))
        .join(Pool, col(Pool.id) == col(UsageRecord.pool_id))
        .where(
            _visible(caller, col(UsageRecord.member_id)),
            col(UsageRecord.started_at) < stop,
            or_(col(UsageRecord.ended_at).is_(None), col(UsageRecord.ended_at) > begin),
        )
    ).all()
    held = []
    for rec, member, pool in rows:
        until = now if rec.ended_at is None else _epoch(rec.ended_at)
        held.append(Held(member, pool, Interval(_epoch(rec.started_at), until, float(rec.gpus))))
    return held


def gpus_in_use(
    session: Session, caller: Principal, window: Window, now: datetime
) -> tuple[list[Series], list[Series]]:
    """GPUs in use per pool and per member (averaged over each bucket of ``window``)."""
    start, end = window.bounds(now)
    moment = now.timestamp()
    held = gpus_held(session, caller, start, end, moment)
    xs = [b for b in bucket_starts(start, window.seconds, window.buckets) if b < moment]

    def series_by(key: str) -> list[Series]:
        groups: dict[str, list[Interval]] = {}
        for h in held:
            groups.setdefault(getattr(h, key), []).append(h.interval)
        return [
            Series(
                name,
                list(
                    zip(
                        xs,
                        average_per_bucket(ivs, start, window.seconds, window.buckets, moment),
                        strict=True,
                    )
                ),
            )
            for name, ivs in sorted(groups.items())
        ]

    return top_series(series_by("pool")), top_series(series_by("member"))


def top_series(series: list[Series], most: int = len(PALETTE)) -> list[Series]:
    """At most ``most`` lines: the largest (by their sum) in name order, the rest summed into
    one "N others" line, so that a chart of many members stays readable and tells the lines
    apart (the palette has ``most`` colours and dashes). The series share their x values."""
    if len(series) <= most:
        return series
    ranked = sorted(series, key=lambda s: -sum(y for _, y in s.points))
    kept, rest = ranked[: most - 1], ranked[most - 1 :]
    xs = [x for x, _ in rest[0].points]
    totals = [sum(s.points[i][1] for s in rest) for i in range(len(xs))]
    others = Series(f"{len(rest)} others", list(zip(xs, totals, strict=True)))
    return [*sorted(kept, key=lambda s: s.name), others]


# -- queue length and admission wait ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueHistory:
    waiting: list[Interval]  # each job's stay in QUEUED, clipped to the window
    admissions: list[tuple[float, float]]  # (admitted at, seconds waited)


def queue_history(
    session: Session, caller: Principal, start: float, end: float, now: float
) -> QueueHistory:
    """Stays in the queue over [start, end) and the admissions in it, from status events."""
    begin = datetime.fromtimestamp(start, UTC)
    stop = datetime.fromtimestamp(end, UTC)
    touches_queue = or_(col(JobEvent.to_status) == QUEUED, col(JobEvent.from_status) == QUEUED)
    events = session.exec(
        select(JobEvent.job_id, JobEvent.at, JobEvent.from_status, JobEvent.to_status)
        .join(Job, col(Job.id) == col(JobEvent.job_id))
        .where(
            _visible(caller, col(Job.member_id)),
            touches_queue,
            col(JobEvent.at) >= begin,
            col(JobEvent.at) < stop,
        )
        .order_by(col(JobEvent.at), col(JobEvent.id))
    ).all()
    # Jobs that entered the queue before the window and had not left it when it began.
    entered, left = aliased(JobEvent), aliased(JobEvent)
    since_left = (
        select(left.id)
        .where(
            left.job_id == entered.job_id,
            left.from_status == QUEUED,
            col(left.id) > col(entered.id),
            left.at < begin,
        )
        .exists()
    )
    already = session.exec(
        select(entered.job_id, entered.at)
        .join(Job, col(Job.id) == col(entered.job_id))
        .where(
            _visible(caller, col(Job.member_id)),
            entered.to_status == QUEUED,
            entered.at < begin,
            ~since_left,
        )
    ).all()
    since: dict[str, float] = {job: _epoch(at) for job, at in already}
    waiting: list[Interval] = []
    admissions: list[tuple[float, float]] = []
    for job, at, src, dst in events:
        t = _epoch(at)
        entered_at = since.pop(job, None) if src == QUEUED else None
        if entered_at is not None:  # (a stay with no recorded start is not guessed)
            waiting.append(Interval(max(entered_at, start), t))
            if dst == ADMITTED:
                admissions.append((t, max(0.0, t - entered_at)))
        if dst == QUEUED:
            since[job] = t
    waiting.extend(Interval(max(t0, start), now) for t0 in since.values() if t0 < now)
    return QueueHistory(waiting, admissions)


def wait_unit(seconds: Iterable[float]) -> tuple[str, float]:
    """Minutes for waits under three hours, else hours: (unit, seconds per unit)."""
    longest = max(seconds, default=0.0)
    return ("hours", 3600.0) if longest >= 3 * 3600 else ("minutes", 60.0)


def queue_series(
    history: QueueHistory, window: Window, now: datetime
) -> tuple[list[Series], list[Series], str]:
    """(queue length series, admission wait series, the wait's unit) over ``window``."""
    start, _ = window.bounds(now)
    moment = now.timestamp()
    xs = [b for b in bucket_starts(start, window.seconds, window.buckets) if b < moment]
    n, step = window.buckets, window.seconds
    length = [
        Series(
            "most waiting",
            list(zip(xs, peak_per_bucket(history.waiting, start, step, n, moment), strict=True)),
        ),
        Series(
            "average waiting",
            list(zip(xs, average_per_bucket(history.waiting, start, step, n, moment), strict=True)),
        ),
    ]
    unit, per = wait_unit(w for _, w in history.admissions)
    by_bucket: dict[int, list[float]] = {}
    for at, waited in history.admissions:
        i = int((at - start) // step)
        if 0 <= i < len(xs):
            by_bucket.setdefault(i, []).append(waited / per)
    waits = [
        Series("mean wait", [(xs[i], sum(v) / len(v)) for i, v in sorted(by_bucket.items())]),
        Series("longest wait", [(xs[i], max(v)) for i, v in sorted(by_bucket.items())]),
    ]
    return length, waits, unit


# -- a budget's burn -------------------------------------------------------------------------


def budget_burn(session: Session, budget: Budget, now: datetime) -> Series:
    """Cumulative GPU-hours of the budget's member inside its period, per day (per week for
    a period over 200 days), from the period's start up to now (or its end)."""
    start, end = _epoch(budget.starts_at), _epoch(budget.ends_at)
    moment = min(now.timestamp(), end)
    if moment <= start:
        return Series("used", [])
    step = 86400 if end - start <= 200 * 86400 else 7 * 86400
    n = math.ceil((end - start) / step)
    rows = session.exec(
        select(UsageRecord).where(
            UsageRecord.member_id == budget.member_id,
            col(UsageRecord.started_at) >= budget.starts_at,
            col(UsageRecord.started_at) < budget.ends_at,
        )
    ).all()
    ivs = [
        Interval(_epoch(r.started_at), moment if r.ended_at is None else _epoch(r.ended_at), r.gpus)
        for r in rows
    ]
    averages = average_per_bucket(ivs, start, step, n, moment)
    points = [(start, 0.0)]
    total = 0.0
    for i, avg in enumerate(averages):
        b0 = start + i * step
        b1 = min(b0 + step, moment)
        total += avg * (b1 - b0) / 3600
        points.append((b1, total))
    return Series("used", points)


# -- the charts of the pages -----------------------------------------------------------------


def gpu_charts(
    session: Session,
    caller: Principal,
    window: Window,
    now: datetime,
    by_member: bool = True,
    say: Say = as_is,
) -> list[Chart]:
    """GPUs in use per pool (and per member) over ``window``; ``say``: the viewer's gettext
    (for the words of the charts, never for pool or member names)."""
    pools, members = gpus_in_use(session, caller, window, now)
    label = say("GPUs (average per %(bucket)s)") % {"bucket": say(window.bucket_words)}
    last = {"window": say(window.name)}
    domain = window.axis(now)
    charts = [
        line_chart(
            "gpus-by-pool",
            say("GPUs in use per pool, last %(window)s") % last,
            pools,
            y_label=label,
            unit=say("GPUs"),
            x_domain=domain,
            integer=True,
            say=say,
        )
    ]
    if by_member:
        charts.append(
            line_chart(
                "gpus-by-member",
                say("GPUs in use per member, last %(window)s") % last,
                members,
                y_label=label,
                unit=say("GPUs"),
                x_domain=domain,
                integer=True,
                say=say,
            )
        )
    return charts


def queue_charts(
    session: Session, caller: Principal, window: Window, now: datetime, say: Say = as_is
) -> list[Chart]:
    """Jobs waiting and how long admissions waited, over ``window``."""
    start, end = window.bounds(now)
    history = queue_history(session, caller, start, end, now.timestamp())
    length, waits, unit = queue_series(history, window, now)
    last = {"window": say(window.name)}
    return [
        line_chart(
            "queue-length",
            say("Jobs waiting in the queue, last %(window)s") % last,
            length,
            y_label=say("jobs waiting"),
            unit=say("jobs"),
            x_domain=window.axis(now),
            integer=True,
            note=say("Most waiting: the longest the queue was at any moment of the bucket."),
            say=say,
        ),
        line_chart(
            "admission-wait",
            say("Admission wait, last %(window)s") % last,
            waits,
            y_label=say("wait (%(unit)s)") % {"unit": say(unit)},
            unit=say(unit),
            x_domain=window.axis(now),
            note=say("Admissions: %(count)s; each counts in the bucket it was admitted in.")
            % {"count": len(history.admissions)},
            say=say,
        ),
    ]


def burn_chart(
    session: Session, budget: Budget, member: str, now: datetime, say: Say = as_is
) -> Chart:
    """A budget's cumulative GPU-hours over its whole period, against its limit."""
    used = budget_burn(session, budget, now)
    used = Series(say(used.name), used.points)
    start, end = _epoch(budget.starts_at), _epoch(budget.ends_at)
    pace = Series(say("even pace"), [(start, 0.0), (end, budget.gpu_hours)])
    series = [used, pace] if used.points else []
    last = used.points[-1][1] if used.points else 0.0
    return line_chart(
        f"burn-{budget.id}",
        say("%(member)s · %(period)s: GPU-hours used")
        % {"member": member, "period": budget.period},
        series,
        y_label=say("GPU-hours (cumulative)"),
        unit=say("GPU-h"),
        x_domain=(start, end),
        limit=(budget.gpu_hours, say("budget")),
        note=say(
            "%(used)s of %(limit)s GPU-hours used; the dashed line is the budget, the even "
            "pace spends it exactly by the period's end."
        )
        % {"used": number(last), "limit": number(budget.gpu_hours)},
        say=say,
    )


def burn_charts(
    session: Session,
    budgets: Sequence[Budget],
    names: dict[str, str],
    now: datetime,
    most: int,
    say: Say = as_is,
) -> list[Chart]:
    """Burn charts of the budgets whose period is under way (at most ``most``)."""
    current = [b for b in budgets if b.starts_at <= now < b.ends_at]
    return [
        burn_chart(session, b, names.get(b.member_id, b.member_id), now, say)
        for b in current[:most]
    ]


WindowName = Literal["day", "week", "quarter"]
BURN_CHARTS = 12  # a platform admin sees every member's budgets: the first ones under way


def usage_charts(
    session: Session,
    caller: Principal,
    window: WindowName,
    budgets: Sequence[Budget],
    now: datetime,
    say: Say = as_is,
) -> dict[str, Any]:
    """The usage page's charts: GPUs in use over the chosen window (per pool, and per member
    for those who see every member) and the burn of each budget under way."""
    chosen = WINDOWS[window]
    names = dict(
        session.exec(
            select(Member.id, Member.name).where(col(Member.id).in_({b.member_id for b in budgets}))
        ).all()
    )
    return {
        "window": chosen,
        "windows": list(WINDOWS),
        "gpu_charts": gpu_charts(session, caller, chosen, now, caller.reads_all_members, say),
        "burn_charts": burn_charts(session, budgets, names, now, BURN_CHARTS, say),
    }
