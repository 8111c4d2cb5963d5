"""Canonical form and hashing of one audit event (pure)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import rfc8785

GENESIS = "0" * 64
PLATFORM_STREAM = "platform"

# The fields covered by an event's hash, in the JSON object that is canonicalised.
HASHED_FIELDS = (
    "stream",
    "seq",
    "at",
    "actor",
    "actor_role",
    "source_ip",
    "request_id",
    "trace_id",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "details",
    "prev_hash",
)


def timestamp(at: datetime) -> str:
    """RFC 3339 UTC with microseconds: the one textual form of a time in the chain."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def canonical(fields: dict[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of the hashed fields (``at`` as text)."""
    obj = {k: fields[k] for k in HASHED_FIELDS}
    if isinstance(obj["at"], datetime):
        obj["at"] = timestamp(obj["at"])
    return rfc8785.dumps(obj)


def event_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


def checkpoint_message(stream: str, seq: int, head_hash: str, at: datetime | str) -> bytes:
    """What a checkpoint signs: the stream, its head and the moment, canonically."""
    when = timestamp(at) if isinstance(at, datetime) else at
    return rfc8785.dumps({"stream": stream, "seq": seq, "hash": head_hash, "at": when})
