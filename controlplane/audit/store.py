"""Reading, verifying and exporting the audit log held in the database."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlmodel import Session, col, select

from controlplane.audit import chain, signing
from controlplane.audit.verify import Report, verify
from controlplane.db.models import AuditCheckpoint, AuditEvent, AuditHead

EVENT_FIELDS = (*chain.HASHED_FIELDS, "hash")


def event_dict(row: AuditEvent) -> dict[str, Any]:
    out = {f: getattr(row, f) for f in EVENT_FIELDS}
    out["at"] = chain.timestamp(row.at)
    return out


def checkpoint_dict(row: AuditCheckpoint) -> dict[str, Any]:
    return {
        "stream": row.stream,
        "seq": row.seq,
        "hash": row.hash,
        "at": chain.timestamp(row.at),
        "key_id": row.key_id,
        "signature": row.signature,
    }


def read_events(
    session: Session, streams: Sequence[str] | None, after_id: int = 0, limit: int | None = None
) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(col(AuditEvent.id) > after_id)
    if streams is not None:
        stmt = stmt.where(col(AuditEvent.stream).in_(streams))
    stmt = stmt.order_by(col(AuditEvent.id))
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


def read_checkpoints(session: Session, streams: Sequence[str] | None) -> list[AuditCheckpoint]:
    stmt = select(AuditCheckpoint)
    if streams is not None:
        stmt = stmt.where(col(AuditCheckpoint.stream).in_(streams))
    return list(session.exec(stmt.order_by(col(AuditCheckpoint.id))).all())


def known_streams(session: Session) -> list[str]:
    return sorted(session.exec(select(AuditHead.stream)).all())


def verify_db(
    session: Session, public_key: Ed25519PublicKey | None, streams: Sequence[str] | None
) -> Report:
    events = [event_dict(e) for e in read_events(session, streams)]
    cps = [checkpoint_dict(c) for c in read_checkpoints(session, streams)]
    names = streams if streams is not None else known_streams(session)
    return verify(events, cps, public_key, names)


def bundle(session: Session, public_pem: bytes, streams: Sequence[str] | None) -> dict[str, Any]:
    """Everything an offline verifier needs, as one JSON-able object."""
    return {
        "format": "nuri-audit-export/1",
        "streams": list(streams) if streams is not None else known_streams(session),
        "events": [event_dict(e) for e in read_events(session, streams)],
        "checkpoints": [checkpoint_dict(c) for c in read_checkpoints(session, streams)],
        "public_key_pem": public_pem.decode(),
    }


def write_export(data: dict[str, Any], out: Path) -> list[Path]:
    """Write an export bundle as events.jsonl, checkpoints.jsonl, public_key.pem, manifest.json."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out / name
        for name in ("events.jsonl", "checkpoints.jsonl", "public_key.pem", "manifest.json")
    }
    with paths["events.jsonl"].open("w") as fh:
        for ev in data["events"]:
            fh.write(json.dumps(ev, ensure_ascii=False, sort_keys=True) + "\n")
    with paths["checkpoints.jsonl"].open("w") as fh:
        for cp in data["checkpoints"]:
            fh.write(json.dumps(cp, sort_keys=True) + "\n")
    paths["public_key.pem"].write_text(data["public_key_pem"])
    paths["manifest.json"].write_text(
        json.dumps(
            {
                "format": data["format"],
                "streams": data["streams"],
                "events": len(data["events"]),
                "checkpoints": len(data["checkpoints"]),
            },
            indent=2,
        )
    )
    return list(paths.values())


def verify_export(directory: Path) -> Report:
    """Verify an export offline: nothing but the files and this code."""

    def lines(name: str) -> list[dict[str, Any]]:
        text = (directory / name).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    manifest = json.loads((directory / "manifest.json").read_text())
    key = signing.load_public((directory / "public_key.pem").read_bytes())
    return verify(lines("events.jsonl"), lines("checkpoints.jsonl"), key, manifest["streams"])
