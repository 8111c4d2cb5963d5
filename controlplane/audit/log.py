"""Appending to the audit log, inside the caller's transaction, and signing checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import bindparam, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import Session, select

from controlplane.audit import chain, signing
from controlplane.db.models import AuditCheckpoint, AuditEvent, AuditHead
from controlplane.errors import InvalidRequest

if TYPE_CHECKING:  # auth records sign-ins here, so the import goes one way at run time
    from controlplane.auth import Principal

SYSTEM_ACTOR = "system"

# Core statements on the table, parameters bound per call: compiled once and reused, and no
# ORM bulk-update machinery on the path every mutation of the system takes.
_HEAD = AuditHead.__table__  # type: ignore[attr-defined]
_BUMP = (
    update(_HEAD)
    .where(_HEAD.c.stream == bindparam("stream_key"))
    .values(seq=_HEAD.c.seq + bindparam("count"))
    .returning(_HEAD.c.seq, _HEAD.c.hash)
)
_SET_HASH = (
    update(_HEAD).where(_HEAD.c.stream == bindparam("stream_key")).values(hash=bindparam("head"))
)
_INSERT_EVENT = insert(AuditEvent.__table__)  # type: ignore[attr-defined]


def _reserve(conn: Connection, stream: str, count: int) -> tuple[int, str]:
    """(first seq, prev_hash) for ``count`` new events, taking the stream's lock first.

    The UPDATE comes before any read so that it is the statement that acquires the lock: a
    concurrent appender waits here and then sees the committed head, never a stale one.
    """
    params = {"stream_key": stream, "count": count}
    row = conn.execute(_BUMP, params).first()
    if row is None:
        # First event of this stream: create its head (idempotently, another transaction may
        # be doing the same) and take the lock the normal way.
        ins = (
            pg_insert(AuditHead) if conn.dialect.name == "postgresql" else sqlite_insert(AuditHead)
        )
        conn.execute(ins.values(stream=stream, seq=0, hash=chain.GENESIS).on_conflict_do_nothing())
        row = conn.execute(_BUMP, params).first()
        if row is None:
            raise RuntimeError(f"audit stream {stream!r} has no head row")
    return int(row[0]) - count + 1, str(row[1])


# The fields of an entry (see ``entry``) that text columns hold: the hashed ones but the
# number, the time, the JSON ``details`` and the previous hash.
TEXT_FIELDS = tuple(
    f for f in chain.HASHED_FIELDS if f not in ("seq", "at", "details", "prev_hash")
)


class UnrecordableText(InvalidRequest):
    """An audited value holds text the log cannot keep exactly, so the change it records is
    refused (422) rather than recorded differently or left unverifiable.

    A lone surrogate (U+D800..U+DFFF unpaired) is no character: UTF-8, hence every text
    column and RFC 8785, cannot encode it. PostgreSQL's text holds no NUL (U+0000); its
    ``json`` column, which holds ``details``, does (as the escape ``\\u0000``), as SQLite does
    everywhere. Every other code point is recorded and exported as it is.
    """

    code = "unrecordable_text"

    def __init__(self, where: str, char: str, why: str) -> None:
        point = f"U+{ord(char):04X}"
        super().__init__(
            f"{where} holds {point}, which the audit log cannot record ({why})",
            details={"field": where, "code_point": point},
        )


def _lone_surrogate(value: Any, where: str) -> tuple[str, str] | None:
    """(where, the character) of the first lone surrogate in ``value``, keys included."""
    if isinstance(value, str):
        for ch in value:
            if "\ud800" <= ch <= "\udfff":
                return where, ch
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            # The path is written with !a (ascii): it must never carry the character itself.
            found = _lone_surrogate(k, f"{where} key {k!a}") or _lone_surrogate(
                v, f"{where}[{k!a}]"
            )
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _lone_surrogate(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _check_text(dialect: str, entries: Sequence[dict[str, Any]]) -> None:
    """Refuse what a text column cannot hold, before anything is written (``details`` is
    checked only if hashing fails: it is the one field large enough for that to matter)."""
    nul_refused = dialect == "postgresql"
    for item in entries:
        for name in TEXT_FIELDS:
            value = item[name]
            if not isinstance(value, str):
                continue
            if nul_refused and "\x00" in value:
                raise UnrecordableText(name, "\x00", "PostgreSQL text cannot hold NUL")
            if not value.isascii():
                found = _lone_surrogate(value, name)
                if found:
                    raise UnrecordableText(*found, "a lone surrogate is not a character")


def _unrecordable(fields: dict[str, Any]) -> UnrecordableText | None:
    """Why ``fields`` has no canonical form, when the reason is its text."""
    for name in chain.HASHED_FIELDS:
        found = _lone_surrogate(fields[name], name)
        if found:
            return UnrecordableText(*found, "a lone surrogate is not a character")
    return None


def entry(
    actor: Principal | None,
    action: str,
    resource_type: str,
    resource_id: str | None,
    *,
    stream: str,
    now: datetime,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of one event, before ``append`` gives it its place in the stream."""
    return {
        "stream": stream,
        "at": now,
        "actor": actor.user_id if actor else SYSTEM_ACTOR,
        "actor_role": actor.role.value if actor else None,
        "source_ip": actor.source_ip if actor else None,
        "request_id": actor.request_id if actor else None,
        "trace_id": actor.trace_id if actor else None,
        "action": action,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "outcome": outcome,
        "details": details or {},
    }


def append(
    conn: Connection, stream: str, entries: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Append ``entries`` (from ``entry``, all of ``stream``) in order, in the connection's
    transaction, under one lock of the stream's head; returns each event's chained fields.

    The caller commits (or rolls back) the events together with the changes they record.
    Text the log cannot keep exactly raises ``UnrecordableText`` (see there): the caller's
    transaction, the change included, is then rolled back.
    """
    _check_text(conn.dialect.name, entries)
    seq, prev = _reserve(conn, stream, len(entries))
    events: list[dict[str, Any]] = []
    for item in entries:
        if item["stream"] != stream:
            raise ValueError(f"an event of stream {item['stream']!r} appended to {stream!r}")
        now: datetime = item["at"]
        fields = {**item, "seq": seq, "at": chain.timestamp(now), "prev_hash": prev}
        try:
            prev = chain.event_hash(fields)
        except ValueError:  # no canonical form; the cause is looked for only then
            refused = _unrecordable(fields)
            if refused is None:
                raise
            raise refused from None
        events.append({**fields, "hash": prev})
        seq += 1
    conn.execute(
        _INSERT_EVENT, [{**e, "at": i["at"]} for e, i in zip(events, entries, strict=True)]
    )
    conn.execute(_SET_HASH, {"stream_key": stream, "head": prev})
    return events


def record(
    session: Session,
    actor: Principal | None,
    action: str,
    resource_type: str,
    resource_id: str | None,
    *,
    stream: str,
    now: datetime,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one event to ``stream`` in the session's transaction; returns its fields.

    ``stream`` is a member id or ``platform``. The caller commits (or rolls back) the event
    together with the change it records.
    """
    item = entry(
        actor,
        action,
        resource_type,
        resource_id,
        stream=stream,
        now=now,
        outcome=outcome,
        details=details,
    )
    return append(session.connection(), stream, [item])[0]


def stream_for(member_id: str | None) -> str:
    return member_id or chain.PLATFORM_STREAM


def write_checkpoints(session: Session, key: Ed25519PrivateKey, now: datetime) -> int:
    """Sign the head of every stream (even when nothing happened since the last one).

    A checkpoint on an idle stream is still evidence: it proves the log existed up to that
    head at that moment, so a later truncation or rewrite cannot go unnoticed.
    """
    kid = signing.key_id(key)
    heads = session.exec(select(AuditHead)).all()
    for head in heads:
        message = chain.checkpoint_message(head.stream, head.seq, head.hash, now)
        session.add(
            AuditCheckpoint(
                stream=head.stream,
                seq=head.seq,
                hash=head.hash,
                at=now,
                key_id=kid,
                signature=signing.sign(key, message),
            )
        )
    session.commit()
    return len(heads)
