"""Exports round-trip any text and any one changed byte is found at its event (pure: the
export stream is built from in-memory chains, written, read back and verified offline)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.audit import chain, signing, store
from controlplane.client import NuriClient, NuriConnectionError

T0 = datetime(2026, 11, 29, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
PEM = signing.public_pem(KEY)

# Characters that break line-oriented readers or encoders: the Unicode line boundaries of
# str.splitlines (VT, FF, FS, GS, RS, NEL, LS, PS), CR, NUL, DEL, a BOM, noncharacters, the
# last code point, a bidi override, a combining mark, JSON's own escapes.
SPECIAL = (
    "\x00\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x7f\x85\xa0\u2028\u2029\ufeff\ufffe\uffff"
    '\U0010ffff\U0001f600\u202e\u0301"\\/'
)
# Every code point but the lone surrogates (which no chain holds: see test_chain_properties
# and the integration tests, where appending one is refused), plus the ones above, often.
CHARS = st.characters(exclude_categories=["Cs"]) | st.sampled_from(SPECIAL)


def text(max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(CHARS, max_size=max_size)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text(6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    """One event's audited fields, any text in each (as ``log.entry`` builds them)."""
    return {
        "actor": draw(text(40)),
        "actor_role": draw(st.none() | text(20)),
        "source_ip": draw(st.none() | text(64)),
        "request_id": draw(st.none() | text(64)),
        "trace_id": draw(st.none() | text(32)),
        "action": draw(text(60)),
        "resource_type": draw(text(40)),
        "resource_id": draw(st.none() | text(64)),
        "outcome": draw(text(20)),
        "details": draw(st.dictionaries(text(8), JSON_VALUES, max_size=4)),
    }


@st.composite
def logs(draw: st.DrawFn) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(streams, events interleaved as the database orders them, checkpoints)."""
    streams = draw(st.lists(text(40), min_size=1, max_size=3, unique=True))
    order = draw(st.lists(st.sampled_from(streams), min_size=1, max_size=10))
    heads = {s: (0, chain.GENESIS) for s in streams}
    events = []
    for i, stream in enumerate(order):
        seq, prev = heads[stream]
        ev = {
            **draw(entries()),
            "stream": stream,
            "seq": seq + 1,
            "at": chain.timestamp(T0 + timedelta(microseconds=i)),
            "prev_hash": prev,
        }
        ev["hash"] = chain.event_hash(ev)
        heads[stream] = (seq + 1, ev["hash"])
        events.append(ev)
    cps = []
    for stream in draw(st.lists(st.sampled_from(streams), max_size=2)):
        by_seq = {e["seq"]: e["hash"] for e in events if e["stream"] == stream}
        seq = draw(st.sampled_from(sorted(by_seq))) if by_seq else 0
        head = by_seq.get(seq, chain.GENESIS)
        at = chain.timestamp(T0)
        cps.append(
            {
                "stream": stream,
                "seq": seq,
                "hash": head,
                "at": at,
                "key_id": signing.key_id(KEY),
                "signature": signing.sign(KEY, chain.checkpoint_message(stream, seq, head, at)),
            }
        )
    return streams, events, cps


def wire(streams: list[str], events: list[dict[str, Any]], cps: list[dict[str, Any]]) -> bytes:
    """What GET /v1/audit/export streams for these rows (two batches of events)."""
    half = len(events) // 2
    return b"".join(store.export_records(streams, PEM, [events[:half], events[half:]], [cps]))


def export(directory: Path, data: bytes, chunk: int = 7) -> store.ExportSummary:
    """Write an export from the stream, delivered in ``chunk``-byte pieces."""
    pieces = (data[i : i + chunk] for i in range(0, len(data), chunk))
    return store.write_export(pieces, directory)


def by_stream(report: Any) -> dict[str, Any]:
    return {s.stream: s for s in report.streams}


@settings(max_examples=300, deadline=None)
@given(log=logs(), chunk=st.integers(1, 64))
def test_any_text_round_trips_and_verifies(
    log: tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]], chunk: int
) -> None:
    streams, events, cps = log
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        summary = export(out, wire(streams, events, cps), chunk)
        assert (summary.events, summary.checkpoints) == (len(events), len(cps))
        raw = (out / "events.jsonl").read_bytes()
        # Every byte is ASCII and the only line breaks are the records' own: any reader
        # (str.splitlines, a non-UTF-8 locale, an editor) sees the same lines.
        assert raw.isascii()
        assert len(raw.decode("ascii").splitlines()) == len(events) == raw.count(b"\n")
        back = [json.loads(line) for line in raw.decode("ascii").splitlines()]
        assert back == events  # the same values, so the same canonical bytes
        for old, new in zip(events, back, strict=True):
            assert chain.canonical(old) == chain.canonical(new)
        report = store.verify_export(out)
        assert report.ok, report
        assert {s.stream for s in report.streams} == set(streams)


def _flip_target(raw: bytes, pos: int) -> tuple[str, int]:
    """(stream, seq) of the event whose line holds byte ``pos`` (its ``\\n`` included)."""
    line = raw[: pos + 1].count(b"\n") - (1 if raw[pos : pos + 1] == b"\n" else 0)
    ev = json.loads(raw.split(b"\n")[line])
    return ev["stream"], ev["seq"]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=logs(), data=st.data())
def test_any_changed_byte_is_found_at_its_event(
    log: tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]], data: st.DataObject
) -> None:
    streams, events, cps = log
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        export(out, wire(streams, events, cps))
        path = out / "events.jsonl"
        raw = path.read_bytes()
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]), label="byte")
        stream, seq = _flip_target(raw, pos)
        path.write_bytes(raw[:pos] + bytes([new]) + raw[pos + 1 :])
        report = store.verify_export(out)
        assert not report.ok
        got = by_stream(report)[stream]
        assert got.first_bad_seq == seq, (pos, new, got, report.problems)


def _one_stream(n: int = 4) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    events, prev = [], chain.GENESIS
    for i in range(1, n + 1):
        ev: dict[str, Any] = {
            "stream": "mem_a",
            "seq": i,
            "at": chain.timestamp(T0 + timedelta(seconds=i)),
            "actor": "usr_é",
            "actor_role": None,
            "source_ip": "10.0.0.1",
            "request_id": f"r{i}\u2028",
            "trace_id": None,
            "action": "dataset.create",
            "resource_type": "dataset",
            "resource_id": f"ds_{i}",
            "outcome": "success",
            "details": {"uri": "s3://a/\x85b", "n": 1.5e-07},
            "prev_hash": prev,
        }
        ev["hash"] = prev = chain.event_hash(ev)
        events.append(ev)
    return ["mem_a"], events, []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"\\u00e9", b"\\u00E9"),  # an escape's case
        (b"s3://", b"s3:\\/\\/"),  # an escape JSON allows where none is needed
        (b'"action": ', b'"action":  '),  # whitespace JSON ignores
        (b'"action": ', b'"action":\t'),
        (b"1.5e-07", b"1.5E-07"),  # an exponent's case
        (b"1.5e-07", b"1.50e-07"),
        (b'{"action"', b'{"zzz": 0, "action"'),  # a field the export does not have
    ],
)
def test_value_preserving_edits_are_found_too(tmp_path: Path, old: bytes, new: bytes) -> None:
    export(tmp_path, wire(*_one_stream()))
    path = tmp_path / "events.jsonl"
    lines = path.read_bytes().split(b"\n")
    assert old in lines[2]
    lines[2] = lines[2].replace(old, new, 1)
    path.write_bytes(b"\n".join(lines))
    report = store.verify_export(tmp_path)
    assert not report.ok
    assert by_stream(report)["mem_a"].first_bad_seq == 3
    assert "altered" in (by_stream(report)["mem_a"].reason or "")


def test_reordered_keys_are_found(tmp_path: Path) -> None:
    export(tmp_path, wire(*_one_stream()))
    path = tmp_path / "events.jsonl"
    lines = path.read_bytes().split(b"\n")
    ev = json.loads(lines[1])
    lines[1] = json.dumps(dict(reversed(ev.items()))).encode()
    path.write_bytes(b"\n".join(lines))
    report = store.verify_export(tmp_path)
    assert not report.ok and by_stream(report)["mem_a"].first_bad_seq == 2


def test_a_lost_last_event_is_found_without_a_checkpoint(tmp_path: Path) -> None:
    export(tmp_path, wire(*_one_stream()))
    path = tmp_path / "events.jsonl"
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join([*lines[:3], b""]))  # event 4 gone, and the count fixed up
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "events": 3}))
    report = store.verify_export(tmp_path)
    assert not report.ok and by_stream(report)["mem_a"].first_bad_seq == 4


def test_format_1_exports_still_verify(tmp_path: Path) -> None:
    """Exports written before (characters as UTF-8) verify; the old reader's splitlines()
    was the bug: one U+2028, U+0085 ... in any field broke every export holding it."""
    streams, events, _ = _one_stream()
    text = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in events)
    (tmp_path / "events.jsonl").write_bytes(text.encode("utf-8"))
    (tmp_path / "checkpoints.jsonl").write_bytes(b"")
    (tmp_path / "public_key.pem").write_bytes(PEM)
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {"format": "nuri-audit-export/1", "streams": streams, "events": 4, "checkpoints": 0}
        )
    )
    with pytest.raises(json.JSONDecodeError):  # what `nuri audit verify --offline` did
        [json.loads(line) for line in text.splitlines() if line.strip()]
    assert store.verify_export(tmp_path).ok
    lines = text.encode("utf-8").split(b"\n")
    lines[1] = lines[1].replace("\u2028".encode(), "\u2029".encode())
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines))
    report = store.verify_export(tmp_path)
    assert not report.ok and by_stream(report)["mem_a"].first_bad_seq == 2


@settings(max_examples=200, deadline=None)
@given(log=logs(), data=st.data())
def test_a_cut_off_stream_writes_nothing(
    log: tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]], data: st.DataObject
) -> None:
    full = wire(*log)
    cut = data.draw(st.integers(0, len(full) - 1), label="cut")
    with TemporaryDirectory() as tmp:
        with pytest.raises(store.ExportError):
            export(Path(tmp), full[:cut])
        assert list(Path(tmp).iterdir()) == []


def test_stream_records_are_checked(tmp_path: Path) -> None:
    full = wire(*_one_stream())
    lines = full.split(b"\n")
    for bad in (
        b"[]\n" + full,  # no header
        full + full,  # more after the end
        b"\n".join([lines[0], b'{"event": 1, "x": 2}', *lines[1:]]),
        b"\n".join([lines[0], lines[1], *lines[3:]]),  # an event lost: the end disagrees
        full.replace(b"nuri-audit-export/2", b"nuri-audit-export/9"),
    ):
        with pytest.raises(store.ExportError):
            store.write_export([bad], tmp_path)
        assert list(tmp_path.iterdir()) == []


def test_split_lines_splits_at_newline_only() -> None:
    data = "a\u2028b\x85c\rd\x0be\x0cf\x1cg\n".encode() + b"h\r\n" + b"tail"
    for size in (1, 2, 3, 100):
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        assert list(store.split_lines(pieces)) == [
            "a\u2028b\x85c\rd\x0be\x0cf\x1cg\n".encode(),
            b"h\r\n",
            b"tail",
        ]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_split_lines_is_bytes_split_whatever_the_chunks(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    expected = [line + b"\n" for line in data.split(b"\n")[:-1]]
    if not data.endswith(b"\n") and data:
        expected.append(data.split(b"\n")[-1])
    assert list(store.split_lines(pieces)) == expected


def test_format_1_with_crlf_line_ends_verifies(tmp_path: Path) -> None:
    """Format 1 wrote its files in text mode: CRLF where the CLI ran on Windows."""
    streams, events, _ = _one_stream()
    text = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\r\n" for e in events)
    (tmp_path / "events.jsonl").write_bytes(text.encode("utf-8"))
    (tmp_path / "checkpoints.jsonl").write_bytes(b"")
    (tmp_path / "public_key.pem").write_bytes(PEM)
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {"format": "nuri-audit-export/1", "streams": streams, "events": 4, "checkpoints": 0}
        )
    )
    assert store.verify_export(tmp_path).ok


def test_a_failed_export_leaves_no_directory_it_made(tmp_path: Path) -> None:
    out = tmp_path / "new" / "export"
    with pytest.raises(store.ExportError):
        store.write_export([wire(*_one_stream())[:-1]], out)
    assert not out.exists()
    # An earlier export in the directory stays whole when a new one fails.
    store.write_export([wire(*_one_stream())], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(store.ExportError):
        store.write_export([wire(*_one_stream(2))[:-5]], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert store.verify_export(out).ok


def test_a_connection_lost_mid_stream_writes_nothing(tmp_path: Path) -> None:
    """Through the SDK's streamed read, as `nuri audit export` does."""
    full = wire(*_one_stream())

    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Any:
            yield full[: len(full) // 2]
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("stream") == "whole":
            return httpx.Response(200, content=full)
        return httpx.Response(200, stream=Broken())

    with NuriClient("http://nuri", "t", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(NuriConnectionError, match="lost the connection"):
            store.write_export(client.stream_bytes("GET", "/x", params={"stream": "cut"}), tmp_path)
        assert list(tmp_path.iterdir()) == []
        chunks = client.stream_bytes("GET", "/x", params={"stream": "whole"})
        assert store.write_export(chunks, tmp_path).events == 4
    assert store.verify_export(tmp_path).ok
