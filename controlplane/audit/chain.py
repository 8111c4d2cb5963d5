"""Canonical form and hashing of one audit event (pure)."""

from __future__ import annotations

import hashlib
import json
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


# JSON's exact integers (RFC 8785 refuses the others).
_SAFE_INT = 2**53 - 1


def _plain(value: Any) -> bool:
    """True when ``json.dumps`` writes ``value`` exactly as RFC 8785 does.

    That holds for null, booleans, strings, safe integers, lists and objects whose keys sort
    the same by code point as by UTF-16 code unit (no character beyond the BMP): the escapes
    of strings are the same, and both write UTF-8 as is. Floats (ECMAScript number form),
    subclasses and everything else go to the reference implementation.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_SAFE_INT <= value <= _SAFE_INT)
    if kind is dict:
        return all(
            type(k) is str and (k.isascii() or max(k) < "\U00010000") and _plain(v)
            for k, v in value.items()
        )
    if kind is list:
        return all(_plain(v) for v in value)
    return False


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON; the C encoder when its output is the same (see ``_plain``),
    which is every audit event in practice and several times faster."""
    if _plain(obj):
        try:
            return json.dumps(
                obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")
            ).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: the reference refuses it too
            pass
    return rfc8785.dumps(obj)


def canonical(fields: dict[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of the hashed fields (``at`` as text)."""
    obj = {k: fields[k] for k in HASHED_FIELDS}
    if isinstance(obj["at"], datetime):
        obj["at"] = timestamp(obj["at"])
    return canonical_json(obj)


def event_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


def checkpoint_message(stream: str, seq: int, head_hash: str, at: datetime | str) -> bytes:
    """What a checkpoint signs: the stream, its head and the moment, canonically."""
    when = timestamp(at) if isinstance(at, datetime) else at
    return rfc8785.dumps({"stream": stream, "seq": seq, "hash": head_hash, "at": when})
