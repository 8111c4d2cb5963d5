"""Any text the database can hold survives append -> export -> offline verify, on the real
SQLite and PostgreSQL; what it cannot hold is refused with a 422, never a 500 or a chain that
cannot verify."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane.audit import chain, log, signing, store
from controlplane.db.models import AuditEvent, AuditHead
from tests.conftest import World, bearer, ok

KEY = Ed25519PrivateKey.generate()
PEM = signing.public_pem(KEY)
T0 = datetime(2026, 11, 29, tzinfo=UTC)
EXAMPLE = itertools.count()

SPECIAL = (
    "\x00\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x7f\x85\xa0\u2028\u2029\ufeff\ufffe\uffff"
    '\U0010ffff\U0001f600\u202e\u0301"\\/'
)
# Column widths of auditevent (PostgreSQL refuses longer values; SQLite does not check).
WIDTH = {
    "stream": 40,
    "actor": 40,
    "actor_role": 20,
    "source_ip": 64,
    "request_id": 64,
    "trace_id": 32,
    "action": 60,
    "resource_type": 40,
    "resource_id": 64,
    "outcome": 20,
}
NULLABLE = {"actor_role", "source_ip", "request_id", "trace_id", "resource_id"}


def text(max_size: int, nul: bool = True) -> st.SearchStrategy[str]:
    """Any string of code points (no lone surrogate, see the tests below), the awkward
    ones often; without NUL where the column cannot hold it."""
    chars = st.characters(exclude_categories=["Cs"]) | st.sampled_from(SPECIAL)
    if not nul:
        chars = chars.filter(lambda c: c != "\x00")
    return st.text(chars, max_size=max_size)


def details(nul: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**53) + 1, 2**53 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | text(12, nul),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(text(6, nul), inner, max_size=3)
        ),
        max_leaves=8,
    )
    return st.dictionaries(text(8, nul), values, max_size=4)


def entry_of(draw: st.DataObject, stream: str, at: datetime, pg: bool) -> dict[str, Any]:
    """What ``log.entry`` builds, with any storable text in every audited field."""
    item: dict[str, Any] = {"stream": stream, "at": at}
    for name, width in WIDTH.items():
        if name == "stream":
            continue
        value = text(width, nul=not pg)  # PostgreSQL's text holds no NUL
        item[name] = draw.draw(st.none() | value if name in NULLABLE else value, label=name)
    item["details"] = draw.draw(details(), label="details")  # its json column holds NUL
    return item


def export_to(engine: Engine, streams: list[str] | None, out: Path, batch: int) -> Any:
    with Session(engine) as s:
        plan = store.plan_export(s, streams)
    return store.write_export(store.export_lines(engine, plan, PEM, batch), out)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_storable_text_round_trips_and_any_changed_byte_is_found(
    engine: Engine, data: st.DataObject
) -> None:
    pg = engine.dialect.name == "postgresql"
    # The database outlives an example: a prefix of its own keeps each example's streams
    # (and so what it draws) independent of the ones before.
    prefix = f"{next(EXAMPLE):06d}/"
    names = data.draw(
        st.lists(text(WIDTH["stream"] - 8, nul=not pg), min_size=1, max_size=3, unique=True),
        label="streams",
    )
    streams = [prefix + n for n in names]
    order = data.draw(st.lists(st.sampled_from(streams), min_size=1, max_size=6), label="order")
    appended: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for i, stream in enumerate(order):
            item = entry_of(data, stream, T0 + timedelta(microseconds=i), pg)
            appended += log.append(conn, stream, [item])
    if data.draw(st.booleans(), label="checkpoint"):
        with Session(engine) as s:
            log.write_checkpoints(s, KEY, T0)
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        export_to(engine, streams, out, data.draw(st.integers(1, 4), label="batch"))
        report = store.verify_export(out)
        assert report.ok, report
        raw = (out / "events.jsonl").read_bytes()
        assert raw.isascii()
        exported = {(e["stream"], e["seq"]): e for e in map(json.loads, raw.splitlines())}
        for ev in appended:  # exactly the values the chain hashed
            assert exported[ev["stream"], ev["seq"]] == ev
            assert chain.canonical(exported[ev["stream"], ev["seq"]]) == chain.canonical(ev)
        # Any one byte changed anywhere in the events is found, at that event's seq.
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]), label="byte")
        line = raw[:pos].count(b"\n")
        target = json.loads(raw.split(b"\n")[line])
        (out / "events.jsonl").write_bytes(raw[:pos] + bytes([new]) + raw[pos + 1 :])
        flipped = store.verify_export(out)
        assert not flipped.ok
        got = {s.stream: s for s in flipped.streams}[target["stream"]]
        assert got.first_bad_seq == target["seq"], (pos, new, got, flipped.problems)


def _entry(**over: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "stream": "mem_text",
        "at": T0,
        "actor": "usr_x",
        "actor_role": "member_user",
        "source_ip": "10.0.0.1",
        "request_id": "r1",
        "trace_id": None,
        "action": "dataset.create",
        "resource_type": "dataset",
        "resource_id": "ds_1",
        "outcome": "success",
        "details": {"uri": "s3://a/b"},
    }
    return {**item, **over}


def _count(engine: Engine) -> tuple[int, int]:
    with Session(engine) as s:
        events = s.exec(select(func.count()).select_from(AuditEvent)).one()
        heads = s.exec(select(func.count()).select_from(AuditHead)).one()
    return events, heads


@pytest.mark.parametrize(
    "where", [*log.TEXT_FIELDS, "details value", "details key", "details nested"]
)
def test_a_lone_surrogate_is_refused_with_a_422(engine: Engine, where: str) -> None:
    bad = "a\ud800b"
    if where == "details value":
        item = _entry(details={"uri": bad})
    elif where == "details key":
        item = _entry(details={bad: 1})
    elif where == "details nested":
        item = _entry(details={"labels": [{"k": ["x", "\udfff"]}]})
    else:
        item = _entry(**{where: bad})
    before = _count(engine)
    with pytest.raises(log.UnrecordableText) as err, engine.begin() as conn:
        log.append(conn, item["stream"], [item])
    exc = err.value
    assert exc.status_code == 422 and exc.code == "unrecordable_text"
    body = JSONResponse(exc.body()).body  # renders: the message never carries the character
    assert bytes(body).isascii()
    assert exc.details["code_point"] in ("U+D800", "U+DFFF")
    # Nothing was recorded (the caller's transaction rolled back) and the log still verifies.
    assert _count(engine) == before
    with Session(engine) as s:
        assert s.get(AuditHead, "mem_text") is None
        assert store.verify_db(s, KEY.public_key(), None).ok


@pytest.mark.parametrize("where", log.TEXT_FIELDS)
def test_nul_is_recorded_where_the_database_holds_it(
    engine: Engine, where: str, tmp_path: Path
) -> None:
    item = _entry(**{where: "a\x00b"}, details={"k\x00": "v\x00"})
    if engine.dialect.name == "postgresql":  # its text refuses NUL: a clean 422
        before = _count(engine)
        with pytest.raises(log.UnrecordableText, match="cannot hold NUL"), engine.begin() as c:
            log.append(c, item["stream"], [item])
        assert _count(engine) == before
        item[where] = _entry()[where]  # NUL in details alone: the json column holds it
    with engine.begin() as conn:
        [ev] = log.append(conn, item["stream"], [item])
    export_to(engine, [item["stream"]], tmp_path, 1000)
    assert store.verify_export(tmp_path).ok
    [back] = [json.loads(x) for x in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    assert back == ev and back["details"] == {"k\x00": "v\x00"}


def test_the_export_is_a_snapshot_read_in_batches(engine: Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        for i in range(7):
            log.append(conn, "mem_snap", [_entry(stream="mem_snap", resource_id=f"ds_{i}")])
    with Session(engine) as s:
        log.write_checkpoints(s, KEY, T0)
        plan = store.plan_export(s, ["mem_snap"])
    # Written after the plan: neither the events nor the checkpoint that covers them is
    # exported, so the export stays consistent.
    with engine.begin() as conn:
        log.append(conn, "mem_snap", [_entry(stream="mem_snap"), _entry(stream="mem_snap")])
    with Session(engine) as s:
        log.write_checkpoints(s, KEY, T0 + timedelta(seconds=1))
    summary = store.write_export(store.export_lines(engine, plan, PEM, batch=2), tmp_path)
    assert (summary.events, summary.checkpoints, plan.events) == (7, 1, 7)
    report = store.verify_export(tmp_path)
    assert report.ok and report.streams[0].head_seq == 7


# --- through the API -----------------------------------------------------------------------

AWKWARD = {
    "nel": "\x85",
    "ls": "\u2028",
    "ps": "\u2029",
    "vt": "\x0b",
    "ff": "\x0c",
    "fs": "\x1c",
    "cr": "\r",
    "lf": "\n",
    "del": "\x7f",
    "bom": "\ufeff",
    "astral": "\U0001f600",
    "nul": "\x00",
}


def test_api_export_of_awkward_text_verifies_offline(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "EXPORT_BATCH", 3)  # many batches
    pg = world.client.app.state.engine.dialect.name == "postgresql"  # type: ignore[attr-defined]
    user = {**bearer(world.a.user_token), "content-type": "application/json"}
    uris = {}
    for name, ch in AWKWARD.items():
        if pg and name == "nul":
            continue  # the dataset table's own text refuses it (not the audit log's)
        uris[name] = f"s3://alpha/{name}{ch}x"
        body = {
            "name": f"ds-{name}",
            "uri": uris[name],
            "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
        }
        ok(world.client.post("/v1/datasets", headers=user, content=json.dumps(body)), 201)
    # A lone surrogate is refused at the boundary, cleanly, and nothing is recorded.
    body = {"name": "ds-sur", "uri": "s3://alpha/\ud800", "labels": {"jurisdiction": "KR"}}
    resp = world.client.post("/v1/datasets", headers=user, content=json.dumps(body))
    assert resp.status_code == 422, resp.text

    resp = world.client.get("/v1/audit/export", headers=bearer(world.auditor_token))
    assert resp.status_code == 200 and resp.headers["content-type"] == store.MEDIA_TYPE
    assert resp.content.isascii()
    records = [json.loads(line) for line in resp.content.split(b"\n")[:-1]]
    assert records[0]["format"] == store.FORMAT and "end" in records[-1]
    summary = store.write_export([resp.content], tmp_path)
    assert summary.events == records[-1]["end"]["events"]
    report = store.verify_export(tmp_path)
    assert report.ok, report

    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    created = {
        e["details"]["name"]: e["details"]["uri"] for e in events if e["action"] == "dataset.create"
    }
    for name, uri in uris.items():
        assert created[f"ds-{name}"] == uri
    assert ok(world.client.get("/v1/audit/verify", headers=bearer(world.auditor_token)))["ok"]


def test_a_stream_filter_no_stream_can_have_is_never_a_500(world: World) -> None:
    pg = world.client.app.state.engine.dialect.name == "postgresql"  # type: ignore[attr-defined]
    for path in ("/v1/audit/events", "/v1/audit/verify", "/v1/audit/export"):
        resp = world.client.get(
            path, headers=bearer(world.auditor_token), params={"stream": "a\x00b"}
        )
        if pg:  # no stream has the name; recording that it was asked for is refused
            assert resp.status_code == 422, resp.text
            assert resp.json()["code"] == "unrecordable_text"
        else:
            assert resp.status_code == 200, resp.text
