"""Recompute audit chains and checkpoints; name the first bad sequence number (pure).

Works on plain dicts so the same code verifies the live database and an offline export.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from controlplane.audit import chain, signing


@dataclass(frozen=True, slots=True)
class StreamReport:
    stream: str
    ok: bool
    events: int
    head_seq: int
    checkpoints: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Report:
    ok: bool
    streams: list[StreamReport] = field(default_factory=list)
    # What an offline export holds that belongs to no stream (an unreadable line, a count
    # that differs from the manifest's); always empty for the database.
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "streams": [s.to_dict() for s in self.streams]}
        if self.problems:
            out["problems"] = list(self.problems)
        return out


def _fits(ev: dict[str, Any], prev: str) -> bool:
    """True when ``ev`` continues a chain whose last hash is ``prev``, content unchanged."""
    if ev["prev_hash"] != prev:
        return False
    try:
        return bool(chain.event_hash(ev) == ev["hash"])
    except (KeyError, TypeError, ValueError):  # a value no canonical form has: not the original
        return False


def _chain_break(
    events: Sequence[dict[str, Any]], flawed: Mapping[int, str] | None = None
) -> tuple[int | None, str | None, dict[int, str], list[tuple[int, str]]]:
    """Walk one stream in seq order; returns (first bad seq, reason, seq -> hash so far,
    intruders).

    The first bad seq is the first position 1, 2, ... whose event is missing, damaged (in
    ``flawed``: the reader found the event's record altered), unlinked or modified. An event
    that fits no position (a second claimant of a position, or an impossible seq) is an
    intruder: ``verify_stream`` reports one only when every position is sound, so a damaged
    event is named by the position it left, not by the one it claims.
    """
    by_seq: dict[int, list[dict[str, Any]]] = {}
    for ev in events:
        by_seq.setdefault(int(ev["seq"]), []).append(ev)
    flawed = flawed or {}
    hashes: dict[int, str] = {}
    intruders: list[tuple[int, str]] = [
        (s, "an event claims an impossible sequence number") for s in by_seq if s < 1
    ]
    prev = chain.GENESIS
    expected = 1
    for seq in sorted({s for s in by_seq if s >= 1} | {s for s in flawed if s >= 1}):
        if seq != expected:
            return expected, "missing event (gap in sequence)", hashes, intruders
        if seq in flawed:
            return seq, flawed[seq], hashes, intruders
        candidates = by_seq[seq]
        fit = next((ev for ev in candidates if _fits(ev, prev)), None)
        if fit is None:
            if len(candidates) > 1:
                why = "more than one event claims this sequence number; none continues the chain"
            elif candidates[0]["prev_hash"] != prev:
                why = "prev_hash does not match the previous event's hash"
            else:
                why = "event content does not match its hash (modified)"
            return seq, why, hashes, intruders
        if len(candidates) > 1:
            intruders.append((seq, "more than one event claims this sequence number"))
        hashes[seq] = fit["hash"]
        prev = fit["hash"]
        expected += 1
    return None, None, hashes, intruders


def verify_stream(
    stream: str,
    events: Sequence[dict[str, Any]],
    checkpoints: Sequence[dict[str, Any]],
    public_key: Ed25519PublicKey | None,
    *,
    head: int | None = None,
    flawed: Mapping[int, str] | None = None,
) -> StreamReport:
    """Check one stream's chain, then every checkpoint against it.

    ``head`` is the last seq an export's manifest lists for the stream (a lost tail that no
    checkpoint covers yet is still found); ``flawed`` maps a seq to why its record is damaged.
    """
    bad, reason, hashes, intruders = _chain_break(events, flawed)
    top = max(hashes, default=0)
    if bad is None and head is not None and top != head:
        if top < head:
            bad, reason = top + 1, f"events after {top} are missing (the export lists {head})"
        else:
            bad, reason = head + 1, f"more events than the export lists (its last is {head})"
    if bad is None:
        for cp in sorted(checkpoints, key=lambda c: int(c["seq"])):
            seq = int(cp["seq"])
            if public_key is not None and not signing.valid(
                public_key,
                chain.checkpoint_message(stream, seq, cp["hash"], cp["at"]),
                cp["signature"],
            ):
                bad, reason = seq, "checkpoint signature is invalid"
                break
            if seq > top:
                bad, reason = top + 1, f"events after {top} are missing (checkpoint at {seq})"
                break
            if seq > 0 and hashes.get(seq) != cp["hash"]:
                bad, reason = seq, "event hash differs from the signed checkpoint"
                break
    if bad is None and intruders:
        bad, reason = min(intruders)
    return StreamReport(
        stream=stream,
        ok=bad is None,
        events=len(events),
        head_seq=top,
        checkpoints=len(checkpoints),
        first_bad_seq=bad,
        reason=reason,
    )


def verify(
    events: Iterable[dict[str, Any]],
    checkpoints: Iterable[dict[str, Any]],
    public_key: Ed25519PublicKey | None,
    streams: Iterable[str] = (),
    *,
    heads: Mapping[str, int] | None = None,
    flawed: Mapping[str, Mapping[int, str]] | None = None,
    problems: Sequence[str] = (),
) -> Report:
    """Verify every stream that has events or checkpoints (plus any named in ``streams``).

    ``heads``, ``flawed`` and ``problems`` come from an export's reader (see
    ``verify_stream``); a problem fails the report even when every stream is sound.
    """
    by_stream: dict[str, list[dict[str, Any]]] = {s: [] for s in streams}
    cps: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_stream.setdefault(ev["stream"], []).append(ev)
    for cp in checkpoints:
        cps.setdefault(cp["stream"], []).append(cp)
        by_stream.setdefault(cp["stream"], [])
    for s in (*(heads or {}), *(flawed or {})):
        by_stream.setdefault(s, [])
    reports = [
        verify_stream(
            s,
            by_stream[s],
            cps.get(s, []),
            public_key,
            head=heads.get(s, 0) if heads is not None else None,
            flawed=(flawed or {}).get(s),
        )
        for s in sorted(by_stream)
    ]
    return Report(
        ok=all(r.ok for r in reports) and not problems,
        streams=reports,
        problems=list(problems),
    )
