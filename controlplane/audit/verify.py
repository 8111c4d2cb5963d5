"""Recompute audit chains and checkpoints; name the first bad sequence number (pure).

Works on plain dicts so the same code verifies the live database and an offline export.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "streams": [s.to_dict() for s in self.streams]}


def _chain_break(events: Sequence[dict[str, Any]]) -> tuple[int | None, str | None, dict[int, str]]:
    """Walk one stream in seq order; returns (first bad seq, reason, seq -> hash so far)."""
    hashes: dict[int, str] = {}
    prev = chain.GENESIS
    for expected, ev in enumerate(sorted(events, key=lambda e: int(e["seq"])), start=1):
        seq = int(ev["seq"])
        if seq != expected:
            why = "missing event (gap in sequence)" if seq > expected else "duplicate sequence"
            return expected, why, hashes
        if ev["prev_hash"] != prev:
            return seq, "prev_hash does not match the previous event's hash", hashes
        if chain.event_hash(ev) != ev["hash"]:
            return seq, "event content does not match its hash (modified)", hashes
        hashes[seq] = ev["hash"]
        prev = ev["hash"]
    return None, None, hashes


def verify_stream(
    stream: str,
    events: Sequence[dict[str, Any]],
    checkpoints: Sequence[dict[str, Any]],
    public_key: Ed25519PublicKey | None,
) -> StreamReport:
    """Check one stream's chain, then every checkpoint against it."""
    bad, reason, hashes = _chain_break(events)
    head = max(hashes, default=0)
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
            if seq > head:
                bad, reason = head + 1, f"events after {head} are missing (checkpoint at {seq})"
                break
            if seq > 0 and hashes.get(seq) != cp["hash"]:
                bad, reason = seq, "event hash differs from the signed checkpoint"
                break
    return StreamReport(
        stream=stream,
        ok=bad is None,
        events=len(events),
        head_seq=head,
        checkpoints=len(checkpoints),
        first_bad_seq=bad,
        reason=reason,
    )


def verify(
    events: Iterable[dict[str, Any]],
    checkpoints: Iterable[dict[str, Any]],
    public_key: Ed25519PublicKey | None,
    streams: Iterable[str] = (),
) -> Report:
    """Verify every stream that has events or checkpoints (plus any named in ``streams``)."""
    by_stream: dict[str, list[dict[str, Any]]] = {s: [] for s in streams}
    cps: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_stream.setdefault(ev["stream"], []).append(ev)
    for cp in checkpoints:
        cps.setdefault(cp["stream"], []).append(cp)
        by_stream.setdefault(cp["stream"], [])
    reports = [
        verify_stream(s, by_stream[s], cps.get(s, []), public_key) for s in sorted(by_stream)
    ]
    return Report(ok=all(r.ok for r in reports), streams=reports)
