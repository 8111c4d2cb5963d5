"""The token ledger of online serving: reservations, settlement, token budgets, rate limits.

Every gateway request is one :class:`~controlplane.db.models.TokenUsage` row. Before it is
dispatched the gateway **reserves** its worst case (:func:`prompt_token_bound` plus its
``max_tokens``) as an open row; afterwards it **settles** the row once with what was used.

Invariant, for every member and every token budget covering a period::

    sum(prompt + completion of settled rows) + sum(reserved of open rows) <= Budget.tokens

:func:`reserve` checks it and inserts the row atomically, so concurrent requests can never
overshoot: on PostgreSQL under a transaction-scoped advisory lock keyed by (member, budget
period); on SQLite as one conditional ``INSERT ... SELECT ... WHERE`` statement (SQLite runs a
write statement under its single writer lock), retried while the database is busy. A settled
request charges no more than it reserved (the replica stops at ``max_tokens``), so settling
keeps the invariant; :func:`settle` is idempotent (``WHERE settled_at IS NULL``).

Open rows are also the demand the endpoint controller reads (:func:`open_requests`).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import BigInteger, String, and_, func, insert, literal, select, text, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col

from controlplane.db.models import Budget, Endpoint, TokenUsage
from controlplane.db.types import UTCDateTime
from controlplane.errors import NuriError
from controlplane.usage import period_of

# An upper bound of a chat prompt's tokens without the model: every tokenizer Nuri loads
# (``workers.tokenizer``: the byte tokenizer, and byte-level BPE with a chat template) spends
# at most one token per UTF-8 byte of text, plus the template's markers: at most
# MESSAGE_OVERHEAD per message (role markers, end of turn) and PROMPT_OVERHEAD per prompt
# (BOS, the assistant's opening). The byte tokenizer needs 4 per message and 4 per prompt, a
# ChatML template without merges (the worst case of byte-level BPE) 13 and 11, which 16 per
# message covers since a chat has at least one message; tests/unit/serving checks both.
MESSAGE_OVERHEAD = 16
PROMPT_OVERHEAD = 8

# Open rows older than this belong to a request whose gateway process died: they are not
# demand any more and :func:`settle_abandoned` closes them.
STALE_AFTER = timedelta(minutes=30)

# SQLite: how often a busy reservation or settlement is retried (besides busy_timeout).
_SQLITE_TRIES = 50
_sqlite_lock = threading.Lock()

T = TypeVar("T")


class BudgetExhausted(NuriError):
    """The member's token budget cannot cover this request's worst case (429)."""

    status_code = 429
    code = "insufficient_quota"


class TokenRateLimited(NuriError):
    """Requests or tokens per minute of an endpoint exceeded (429 with Retry-After)."""

    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int, details: dict[str, Any]) -> None:
        super().__init__(message, details={**details, "retry_after_s": retry_after})
        self.retry_after = retry_after


# --- the worst case ------------------------------------------------------------------------


def prompt_token_bound(
    messages: Sequence[Mapping[str, str]] | None,
    prompt: str | None = None,
    system_prompt: str | None = None,
) -> int:
    """At least as many tokens as the replica's tokenizer makes of this prompt (see above).

    ``system_prompt`` is the endpoint's, which a replica adds to a chat without a system turn.
    """
    if messages is None:
        return len((prompt or "").encode("utf-8")) + PROMPT_OVERHEAD
    contents = [m["content"] for m in messages]
    if system_prompt is not None and not any(m["role"] == "system" for m in messages):
        contents.append(system_prompt)
    return (
        sum(len(c.encode("utf-8")) for c in contents)
        + MESSAGE_OVERHEAD * len(contents)
        + PROMPT_OVERHEAD
    )


# --- budgets -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenCap:
    """A member's token budget: ``tokens`` over the months (usage periods) of ``period``."""

    period: str
    months: tuple[str, ...]
    tokens: int


def months_between(start: datetime, end: datetime) -> tuple[str, ...]:
    """Usage periods (``2026-11``) of the months in [start, end)."""
    out = []
    year, month = start.year, start.month
    while datetime(year, month, 1, tzinfo=UTC) < end:
        out.append(f"{year:04d}-{month:02d}")
        year, month = year + month // 12, month % 12 + 1
    return tuple(out)


def token_caps(session: Session, member_id: str, now: datetime) -> list[TokenCap]:
    """The member's token budgets that cover ``now`` (a quarter and a month may both)."""
    rows = session.exec(
        select(Budget.period, Budget.starts_at, Budget.ends_at, Budget.tokens).where(  # type: ignore[call-overload]
            Budget.member_id == member_id,
            col(Budget.tokens).is_not(None),
            col(Budget.starts_at) <= now,
            col(Budget.ends_at) > now,
        )
    ).all()
    return sorted(
        (TokenCap(p, months_between(s, e), int(t)) for p, s, e, t in rows),
        key=lambda c: c.period,
    )


def _charged() -> Any:
    t = TokenUsage.__table__  # type: ignore[attr-defined]
    return t.c.reserved_tokens + t.c.prompt_tokens + t.c.completion_tokens


def tokens_charged(session: Session, member_id: str, months: Sequence[str]) -> int:
    """Settled tokens plus open reservations of the member in ``months``."""
    t = TokenUsage.__table__  # type: ignore[attr-defined]
    used = session.execute(
        select(func.coalesce(func.sum(_charged()), 0)).where(
            t.c.member_id == member_id, t.c.period.in_(list(months))
        )
    ).scalar_one()
    return int(used)


def _lock_key(member_id: str, period: str) -> int:
    digest = hashlib.sha256(f"nuri-token-budget:{member_id}:{period}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# --- reserve and settle --------------------------------------------------------------------


def reserve(
    session: Session,
    *,
    member_id: str,
    endpoint_id: str,
    tokens: int,
    now: datetime,
    token_id: str | None = None,
    adapter: str | None = None,
) -> str:
    """Open a reservation of ``tokens`` for one request and commit it; returns its id.

    Raises :class:`BudgetExhausted` when a token budget of the member covering ``now`` would
    be exceeded by what is settled, what is reserved and ``tokens`` together.
    """
    if tokens < 0:
        raise ValueError("a reservation cannot be negative")
    caps = token_caps(session, member_id, now)
    session.rollback()  # the insert below must start its own transaction (SQLite snapshots)
    row_id = TokenUsage(member_id=member_id, endpoint_id=endpoint_id, period="-").id
    t = TokenUsage.__table__  # type: ignore[attr-defined]
    values = {
        "id": literal(row_id, String()),
        "member_id": literal(member_id, String()),
        "endpoint_id": literal(endpoint_id, String()),
        "token_id": literal(token_id, String()),
        "job_id": literal(None, String()),
        "adapter": literal(adapter, String()),
        "period": literal(period_of(now), String()),
        "created_at": literal(now, UTCDateTime(timezone=True)),
        "settled_at": literal(None, UTCDateTime(timezone=True)),
        "reserved_tokens": literal(tokens, BigInteger()),
        "prompt_tokens": literal(0, BigInteger()),
        "completion_tokens": literal(0, BigInteger()),
        "outcome": literal(None, String()),
    }
    conditions = [
        select(func.coalesce(func.sum(_charged()), 0))
        .where(t.c.member_id == member_id, t.c.period.in_(list(c.months)))
        .scalar_subquery()
        + tokens
        <= c.tokens
        for c in caps
    ]
    source = select(*values.values())  # type: ignore[call-overload]
    if conditions:
        source = source.where(and_(*conditions))
    # RETURNING, not rowcount: drivers report -1 rows for INSERT ... SELECT.
    stmt = insert(t).from_select(list(values), source).returning(t.c.id)
    postgres = session.get_bind().dialect.name == "postgresql"

    def attempt() -> int:
        if postgres:
            for key in sorted({_lock_key(member_id, c.period) for c in caps}):
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        inserted = session.execute(stmt).first() is not None
        session.commit()
        return int(inserted)

    if _with_retries(session, attempt, postgres) == 1:
        return row_id
    raise _exhausted(session, member_id, caps, tokens)


def _exhausted(
    session: Session, member_id: str, caps: Sequence[TokenCap], tokens: int
) -> BudgetExhausted:
    for cap in caps:
        charged = tokens_charged(session, member_id, cap.months)
        session.rollback()
        if charged + tokens > cap.tokens:
            return BudgetExhausted(
                f"the token budget for {cap.period} is exhausted: {charged} of {cap.tokens} "
                f"tokens used or reserved, and this request may use up to {tokens}",
                details={
                    "period": cap.period,
                    "budget_tokens": cap.tokens,
                    "charged_tokens": charged,
                    "request_tokens": tokens,
                },
            )
    # Another request settled in between: say so rather than guess; a retry may pass.
    return BudgetExhausted(
        "the token budget could not cover this request when it arrived; retry",
        details={"request_tokens": tokens},
    )


def settle(
    session: Session,
    reservation_id: str,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    outcome: str,
    now: datetime,
    job_id: str | None = None,
) -> bool:
    """Close a reservation with what the request used; True when this call closed it.

    Idempotent: a reservation is settled once, later calls change nothing.
    """
    t = TokenUsage.__table__  # type: ignore[attr-defined]
    stmt = (
        update(t)
        .where(t.c.id == reservation_id, t.c.settled_at.is_(None))
        .values(
            prompt_tokens=max(0, prompt_tokens),
            completion_tokens=max(0, completion_tokens),
            outcome=outcome,
            job_id=job_id,
            reserved_tokens=0,
            settled_at=now,
        )
    )
    postgres = session.get_bind().dialect.name == "postgresql"

    def attempt() -> int:
        changed = session.execute(stmt).rowcount  # type: ignore[attr-defined]
        session.commit()
        return int(changed)

    return _with_retries(session, attempt, postgres) == 1


def _with_retries(session: Session, attempt: Callable[[], T], postgres: bool) -> T:
    """Run ``attempt`` (one transaction); on SQLite, under the process's writer lock and
    again while the database reports itself busy (another process writing)."""
    if postgres:
        try:
            return attempt()
        except BaseException:
            session.rollback()
            raise
    delay = 0.005
    for n in range(_SQLITE_TRIES):
        try:
            with _sqlite_lock:
                return attempt()
        except OperationalError as exc:
            session.rollback()
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or n == _SQLITE_TRIES - 1:
                raise
        except BaseException:
            session.rollback()
            raise
        time.sleep(delay)
        delay = min(0.2, delay * 2)
    raise AssertionError("unreachable")


def settle_abandoned(session: Session, now: datetime, older_than: timedelta = STALE_AFTER) -> int:
    """Close reservations left open by a gateway process that died (outcome ``abandoned``,
    nothing charged: what its replica generated was never delivered). Returns how many."""
    t = TokenUsage.__table__  # type: ignore[attr-defined]
    changed = session.execute(
        update(t)
        .where(t.c.settled_at.is_(None), t.c.created_at < now - older_than)
        .values(reserved_tokens=0, settled_at=now, outcome="abandoned")
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return int(changed)


# --- what the endpoint controller reads ----------------------------------------------------


def open_requests(session: Session, endpoint_id: str, now: datetime | None = None) -> int:
    """Requests of the endpoint in flight right now (open reservations): its demand.

    A request waiting for a cold start is one of them, so a positive count on an endpoint
    scaled to zero means "start a replica". Rows older than :data:`STALE_AFTER` (a dead
    gateway's) are not counted when ``now`` is given.
    """
    stmt = select(func.count()).where(
        col(TokenUsage.endpoint_id) == endpoint_id, col(TokenUsage.settled_at).is_(None)
    )
    if now is not None:
        stmt = stmt.where(col(TokenUsage.created_at) >= now - STALE_AFTER)
    return int(session.execute(stmt).scalar_one())


def touch_endpoint(
    session: Session, endpoint_id: str, now: datetime, min_interval: timedelta = timedelta(0)
) -> None:
    """Stamp ``Endpoint.last_request_at`` (at most once per ``min_interval``) and commit."""
    stmt = update(Endpoint).where(col(Endpoint.id) == endpoint_id)
    if min_interval > timedelta(0):
        stmt = stmt.where(
            col(Endpoint.last_request_at).is_(None)
            | (col(Endpoint.last_request_at) < now - min_interval)
        )
    postgres = session.get_bind().dialect.name == "postgresql"

    def attempt() -> None:
        session.execute(stmt.values(last_request_at=now))
        session.commit()

    _with_retries(session, attempt, postgres)


# --- requests and tokens per minute --------------------------------------------------------


class TokenRateLimits:
    """Per endpoint, in this process: ``rpm`` requests and ``tpm`` tokens per minute.

    Token buckets like ``controlplane.api.limits.RateLimiter``, holding a minute's worth. A
    request spends its reservation's worst case up front and :meth:`refund` gives back what
    it did not use once it settles. One request larger than a whole minute's tokens passes
    when the bucket is full (else it could never pass) and leaves the bucket in debt.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, tuple[float, float]] = {}
        self._tokens: dict[str, tuple[float, float]] = {}

    @staticmethod
    def _level(
        buckets: dict[str, tuple[float, float]], key: str, per_minute: int, now: float
    ) -> float:
        level, at = buckets.get(key, (float(per_minute), now))
        return min(float(per_minute), level + (now - at) * per_minute / 60.0)

    def admit(self, key: str, rpm: int | None, tpm: int | None, tokens: int) -> None:
        """Spend one request and ``tokens`` of ``key``'s buckets or raise
        :class:`TokenRateLimited` (spending nothing)."""
        now = float(self._clock())
        with self._lock:
            waits: list[tuple[float, str]] = []
            if rpm:
                level = self._level(self._requests, key, rpm, now)
                if level < 1.0:
                    waits.append(((1.0 - level) * 60.0 / rpm, f"{rpm} requests per minute"))
            if tpm:
                level = self._level(self._tokens, key, tpm, now)
                need = min(float(tokens), float(tpm))
                if level < need:
                    waits.append(((need - level) * 60.0 / tpm, f"{tpm} tokens per minute"))
            if waits:
                wait, what = max(waits)
                retry = max(1, math.ceil(wait))
                raise TokenRateLimited(
                    f"rate limit of this endpoint reached ({what}); retry after {retry} s",
                    retry,
                    {"rpm": rpm, "tpm": tpm, "request_tokens": tokens},
                )
            if rpm:
                self._requests[key] = (self._level(self._requests, key, rpm, now) - 1.0, now)
            if tpm:
                self._tokens[key] = (self._level(self._tokens, key, tpm, now) - tokens, now)

    def refund(self, key: str, tpm: int | None, tokens: int) -> None:
        """Give back ``tokens`` a request reserved but did not use."""
        if not tpm or tokens <= 0:
            return
        now = float(self._clock())
        with self._lock:
            level = self._level(self._tokens, key, tpm, now)
            self._tokens[key] = (min(float(tpm), level + tokens), now)
