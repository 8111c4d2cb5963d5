"""Reading, verifying and exporting the audit log held in the database.

An export is JSON Lines in which every line is ASCII: ``json.dumps`` with sorted keys, every
character beyond ASCII and every control character (DEL aside) written as an escape (lone
surrogates, which JSON allows, included). No byte of a record is then a line break, or
anything but ASCII, to any reader (``str.splitlines`` also splits at U+0085, U+2028, U+2029,
VT, FF and FS..RS; a locale may not be UTF-8), so each record parses back to exactly the
values whose canonical form (RFC 8785) the chain hashed, whatever text they hold. A reader
splits at ``\\n`` only, and accepts a line only if writing its values again gives the same
bytes: a change that keeps the values (an escape's case, a space) is found like any other,
at its event.

``GET /v1/audit/export`` streams the same records (``export_lines``): a header with the
format, the streams and the public key; the events; the checkpoints; an ``end`` record with
the counts and each stream's last seq, without which a reader treats the export as cut off.
``write_export`` turns that stream into events.jsonl, checkpoints.jsonl, public_key.pem and
manifest.json; ``verify_export`` checks a directory offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controlplane.audit import chain, signing
from controlplane.audit.verify import Report, verify
from controlplane.db.models import AuditCheckpoint, AuditEvent, AuditHead

EVENT_FIELDS = (*chain.HASHED_FIELDS, "hash")

FORMAT = "nuri-audit-export/2"
# Format 1 wrote events with their characters as UTF-8 (not escaped); it is still read.
FORMAT_1 = "nuri-audit-export/1"
MEDIA_TYPE = "application/jsonl"
FILES = ("events.jsonl", "checkpoints.jsonl", "public_key.pem", "manifest.json")
# Rows read per query while streaming an export: one short read each, no long transaction.
EXPORT_BATCH = 1000


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


def _holdable(session: Session, streams: Sequence[str]) -> list[str]:
    """The names among ``streams`` that the database could hold: PostgreSQL's text holds no
    NUL (it refuses even to compare one), so no stream has such a name there."""
    if session.get_bind().dialect.name == "postgresql":
        return [s for s in streams if "\x00" not in s]
    return list(streams)


def read_events(
    session: Session,
    streams: Sequence[str] | None,
    after_id: int = 0,
    limit: int | None = None,
    until_id: int | None = None,
) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(col(AuditEvent.id) > after_id)
    if until_id is not None:
        stmt = stmt.where(col(AuditEvent.id) <= until_id)
    if streams is not None:
        stmt = stmt.where(col(AuditEvent.stream).in_(_holdable(session, streams)))
    stmt = stmt.order_by(col(AuditEvent.id))
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


def read_checkpoints(
    session: Session,
    streams: Sequence[str] | None,
    after_id: int = 0,
    limit: int | None = None,
    until_id: int | None = None,
) -> list[AuditCheckpoint]:
    stmt = select(AuditCheckpoint).where(col(AuditCheckpoint.id) > after_id)
    if until_id is not None:
        stmt = stmt.where(col(AuditCheckpoint.id) <= until_id)
    if streams is not None:
        stmt = stmt.where(col(AuditCheckpoint.stream).in_(_holdable(session, streams)))
    stmt = stmt.order_by(col(AuditCheckpoint.id))
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


def known_streams(session: Session) -> list[str]:
    return sorted(session.exec(select(AuditHead.stream)).all())


def verify_db(
    session: Session, public_key: Ed25519PublicKey | None, streams: Sequence[str] | None
) -> Report:
    events = [event_dict(e) for e in read_events(session, streams)]
    cps = [checkpoint_dict(c) for c in read_checkpoints(session, streams)]
    names = streams if streams is not None else known_streams(session)
    return verify(events, cps, public_key, names)


# --- the records -----------------------------------------------------------------------------


def encode_line(obj: Any, *, ascii_only: bool = True) -> bytes:
    """One JSONL record: sorted keys, non-ASCII and control characters escaped, then ``\\n``.

    The same values always give the same bytes, and every string (NUL, U+2028, a lone
    surrogate ...) parses back as itself. ``ascii_only=False`` is format 1's event encoding.
    """
    text = json.dumps(obj, ensure_ascii=ascii_only, sort_keys=True, allow_nan=False)
    return text.encode("utf-8") + b"\n"


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream, each with its ``\\n``; a last line without one as it is.

    Only ``\\n`` ends a line: never ``\\r`` or a Unicode line boundary, whatever the bytes.
    """
    pending: list[bytes] = []  # the start of a line still open, in pieces
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if pending:
                pending.append(chunk[start : end + 1])
                yield b"".join(pending)
                pending.clear()
            else:
                yield chunk[start : end + 1]
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        yield b"".join(pending)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def parse_line(raw: bytes) -> Any:
    """The value of one record (strict UTF-8 and JSON; no NaN or Infinity)."""
    return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)


# --- streaming an export (server) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportPlan:
    """What one export holds: fixed before the first row is streamed, so events and
    checkpoints committed meanwhile are left out together (every checkpoint exported is
    covered by the events exported)."""

    streams: list[str] | None  # the filter (None: all)
    names: list[str]  # the streams the export lists
    last_event_id: int
    last_checkpoint_id: int
    events: int


def plan_export(session: Session, streams: Sequence[str] | None) -> ExportPlan:
    # Checkpoints first: one signed before this point pins a head whose events committed
    # before it, so they have ids at most the event cut-off read next.
    last_cp = session.exec(select(func.max(AuditCheckpoint.id))).one()
    last_ev = session.exec(select(func.max(AuditEvent.id))).one()
    count = select(func.count()).select_from(AuditEvent).where(col(AuditEvent.id) <= (last_ev or 0))
    if streams is not None:
        count = count.where(col(AuditEvent.stream).in_(_holdable(session, streams)))
    return ExportPlan(
        streams=list(streams) if streams is not None else None,
        names=list(streams) if streams is not None else known_streams(session),
        last_event_id=int(last_ev or 0),
        last_checkpoint_id=int(last_cp or 0),
        events=int(session.exec(count).one()),
    )


def export_records(
    names: Sequence[str],
    public_pem: bytes,
    event_batches: Iterable[Iterable[dict[str, Any]]],
    checkpoint_batches: Iterable[Iterable[dict[str, Any]]],
) -> Iterator[bytes]:
    """The export stream, one chunk per batch: header, events, checkpoints, end."""
    yield encode_line(
        {"format": FORMAT, "streams": list(names), "public_key_pem": public_pem.decode("ascii")}
    )
    heads: dict[str, int] = {}
    events = checkpoints = 0
    for batch in event_batches:
        lines = []
        for ev in batch:
            heads[ev["stream"]] = max(heads.get(ev["stream"], 0), int(ev["seq"]))
            lines.append(encode_line({"event": ev}))
        events += len(lines)
        yield b"".join(lines)
    for batch in checkpoint_batches:
        lines = [encode_line({"checkpoint": cp}) for cp in batch]
        checkpoints += len(lines)
        yield b"".join(lines)
    yield encode_line({"end": {"events": events, "checkpoints": checkpoints, "heads": heads}})


def export_lines(
    engine: Engine, plan: ExportPlan, public_pem: bytes, batch: int | None = None
) -> Iterator[bytes]:
    """Stream ``plan``'s export from the database, ``batch`` rows per query (each query in
    a session of its own: no transaction stays open while a slow client reads)."""
    size = batch or EXPORT_BATCH

    def events() -> Iterator[list[dict[str, Any]]]:
        after = 0
        while True:
            with Session(engine) as s:
                rows = read_events(s, plan.streams, after, size, plan.last_event_id)
                out = [event_dict(r) for r in rows]
            if out:
                yield out
            if len(rows) < size:
                return
            after = int(rows[-1].id or 0)

    def checkpoints() -> Iterator[list[dict[str, Any]]]:
        after = 0
        while True:
            with Session(engine) as s:
                rows = read_checkpoints(s, plan.streams, after, size, plan.last_checkpoint_id)
                out = [checkpoint_dict(r) for r in rows]
            if out:
                yield out
            if len(rows) < size:
                return
            after = int(rows[-1].id or 0)

    return export_records(plan.names, public_pem, events(), checkpoints())


# --- writing an export (client) --------------------------------------------------------------


class ExportError(ValueError):
    """The export stream is cut off or is not an audit export; nothing was written."""


@dataclass(frozen=True, slots=True)
class ExportSummary:
    streams: list[str]
    events: int
    checkpoints: int
    paths: list[Path] = field(default_factory=list)


def _record(raw: bytes, n: int) -> tuple[str, Any]:
    if not raw.endswith(b"\n"):
        raise ExportError(f"the export stream ends inside record {n} (connection lost?)")
    try:
        value = parse_line(raw)
    except ValueError as exc:
        raise ExportError(f"record {n} of the export stream is not JSON: {exc}") from None
    if not isinstance(value, dict) or not value:
        raise ExportError(f"record {n} of the export stream is not a JSON object")
    if "format" in value:
        return "header", value
    kind = next(iter(value))
    if len(value) != 1 or kind not in ("event", "checkpoint", "end"):
        raise ExportError(f"record {n} of the export stream is of no known kind")
    return kind, value[kind]


def write_export(chunks: Iterable[bytes], out: Path) -> ExportSummary:
    """Write the export stream ``chunks`` (from ``GET /v1/audit/export``) into ``out`` as
    events.jsonl, checkpoints.jsonl, public_key.pem and manifest.json.

    The files appear only once the whole stream, its ``end`` record included, has arrived
    (manifest.json last); a stream cut off raises ``ExportError`` and leaves none behind.
    """
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    final = {name: out / name for name in FILES}
    part = {name: out / f".{name}.partial" for name in FILES}
    try:
        header: dict[str, Any] | None = None
        end: dict[str, Any] | None = None
        heads: dict[str, int] = {}
        events = checkpoints = 0
        with (
            part["events.jsonl"].open("wb") as ev_fh,
            part["checkpoints.jsonl"].open("wb") as cp_fh,
        ):
            for n, raw in enumerate(split_lines(chunks), start=1):
                kind, value = _record(raw, n)
                if end is not None:
                    raise ExportError("the export stream goes on after its end record")
                if header is None:
                    fmt = value.get("format") if kind == "header" else None
                    if fmt != FORMAT:
                        raise ExportError(f"not an audit export of format {FORMAT} ({fmt!r})")
                    header = value
                elif kind == "event" and isinstance(value, dict):
                    ev_fh.write(encode_line(value))
                    events += 1
                    stream, seq = value.get("stream"), value.get("seq")
                    if isinstance(stream, str) and type(seq) is int:
                        heads[stream] = max(heads.get(stream, 0), seq)
                elif kind == "checkpoint" and isinstance(value, dict):
                    cp_fh.write(encode_line(value))
                    checkpoints += 1
                elif kind == "end" and isinstance(value, dict):
                    end = value
                else:
                    raise ExportError(f"record {n} of the export stream is out of place")
        if header is None or end is None:
            raise ExportError(
                "the export stream was cut off before its end record "
                "(the connection was lost or the server failed mid-way)"
            )
        if (end.get("events"), end.get("checkpoints"), end.get("heads")) != (
            events,
            checkpoints,
            heads,
        ):
            raise ExportError(
                f"the export stream's end record does not match what arrived "
                f"({events} events, {checkpoints} checkpoints)"
            )
        streams = header.get("streams")
        pem = header.get("public_key_pem")
        if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
            raise ExportError("the export stream's header lists no streams")
        if not isinstance(pem, str):
            raise ExportError("the export stream's header has no public key")
        signing.load_public(pem.encode("ascii"))  # refuse a key no verifier could load
        part["public_key.pem"].write_bytes(pem.encode("ascii"))
        manifest = {
            "format": FORMAT,
            "streams": streams,
            "events": events,
            "checkpoints": checkpoints,
            "heads": heads,
        }
        part["manifest.json"].write_bytes(
            json.dumps(manifest, ensure_ascii=True, sort_keys=True, indent=2).encode() + b"\n"
        )
        # A directory without manifest.json is no export: an earlier one's goes first, the
        # new one comes last.
        final["manifest.json"].unlink(missing_ok=True)
        for name in FILES:
            os.replace(part[name], final[name])
    except BaseException:
        for path in part.values():
            path.unlink(missing_ok=True)
        if made and not any(out.iterdir()):
            out.rmdir()
        raise
    return ExportSummary(streams, events, checkpoints, [final[n] for n in FILES])


# --- verifying an export (offline) -----------------------------------------------------------


def _read_json_file(path: Path) -> Any:
    return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)


def _records(
    path: Path, name: str, ascii_only: bool, format_1: bool, problems: list[str]
) -> tuple[list[tuple[int, dict[str, Any], bool]], int]:
    """(line number, value, canonical) of each line that is a JSON object, and the number
    of lines; the other lines become problems. ``canonical``: writing the value again gives
    the line's bytes exactly."""
    out: list[tuple[int, dict[str, Any], bool]] = []
    n = 0
    with path.open("rb") as fh:
        for n, raw in enumerate(split_lines(iter(lambda: fh.read(1 << 16), b"")), start=1):
            if format_1 and raw.endswith(b"\r\n"):  # format 1 wrote text: CRLF on Windows
                raw = raw[:-2] + b"\n"
            try:
                value = parse_line(raw)
            except ValueError:
                problems.append(f"{name} line {n} cannot be read (not JSON)")
                continue
            if not isinstance(value, dict):
                problems.append(f"{name} line {n} cannot be read (not a JSON object)")
                continue
            try:
                canonical = encode_line(value, ascii_only=ascii_only) == raw
            except ValueError:  # UnicodeEncodeError included: a lone surrogate in format 1
                canonical = False
            out.append((n, value, canonical))
    return out, n


def _read_events(
    path: Path, format_1: bool, problems: list[str]
) -> tuple[list[dict[str, Any]], dict[str, dict[int, str]], int]:
    """The sound events, the damaged ones by stream and seq, and the number of lines."""
    events: list[dict[str, Any]] = []
    flawed: dict[str, dict[int, str]] = {}
    expected = set(EVENT_FIELDS)
    # Format 1 wrote events' characters as UTF-8 (and its checkpoints escaped).
    records, lines = _records(path, "events.jsonl", not format_1, format_1, problems)
    for n, ev, canonical in records:
        stream, seq = ev.get("stream"), ev.get("seq")
        if not isinstance(stream, str) or type(seq) is not int:
            problems.append(f"events.jsonl line {n} cannot be read (no stream or seq)")
            continue
        if set(ev) != expected:
            odd = ", ".join(sorted(ascii(k) for k in set(ev) ^ expected))
            flawed.setdefault(stream, {})[seq] = f"events.jsonl line {n} is altered (fields {odd})"
        elif not canonical:
            flawed.setdefault(stream, {})[seq] = (
                f"events.jsonl line {n} is altered (not as the export writes it)"
            )
        else:
            events.append(ev)
    return events, flawed, lines


_CHECKPOINT_TYPES = {
    "stream": str,
    "seq": int,
    "hash": str,
    "at": str,
    "key_id": str,
    "signature": str,
}


def _read_checkpoints(
    path: Path, format_1: bool, problems: list[str]
) -> tuple[list[dict[str, Any]], int]:
    cps: list[dict[str, Any]] = []
    records, lines = _records(path, "checkpoints.jsonl", True, format_1, problems)
    for n, cp, canonical in records:
        if set(cp) != set(_CHECKPOINT_TYPES) or not all(
            type(cp[k]) is t for k, t in _CHECKPOINT_TYPES.items()
        ):
            problems.append(f"checkpoints.jsonl line {n} is altered (its fields)")
        elif not canonical:
            problems.append(f"checkpoints.jsonl line {n} is altered (not as the export writes it)")
        else:
            cps.append(cp)
    return cps, lines


def verify_export(directory: Path) -> Report:
    """Verify an export offline: nothing but the files and this code.

    Raises ``ValueError`` (or ``OSError``) when the directory is no readable export: a
    manifest or public key that cannot be read, or an unknown format.
    """
    manifest = _read_json_file(directory / "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") not in (FORMAT, FORMAT_1):
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"unknown export format {fmt!r}")
    streams = manifest.get("streams")
    if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
        raise ValueError("the manifest lists no streams")
    heads: dict[str, int] | None = None
    if manifest["format"] == FORMAT:
        heads = manifest.get("heads")
        if not isinstance(heads, dict) or not all(
            isinstance(s, str) and type(h) is int for s, h in heads.items()
        ):
            raise ValueError("the manifest has no heads")
    key = signing.load_public((directory / "public_key.pem").read_bytes())
    problems: list[str] = []
    format_1 = manifest["format"] == FORMAT_1
    events, flawed, lines = _read_events(directory / "events.jsonl", format_1, problems)
    cps, cp_lines = _read_checkpoints(directory / "checkpoints.jsonl", format_1, problems)
    for name, have, listed in (
        ("events.jsonl", lines, manifest.get("events")),
        ("checkpoints.jsonl", cp_lines, manifest.get("checkpoints")),
    ):
        if have != listed:
            problems.append(f"{name} has {have} lines; the manifest lists {listed!r}")
    return verify(events, cps, key, streams, heads=heads, flawed=flawed, problems=problems)
