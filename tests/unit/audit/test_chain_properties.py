"""Property tests of the pure chain verifier: any single tampering is found at its seq."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.audit import chain, signing
from controlplane.audit.verify import verify, verify_stream

T0 = datetime(2026, 11, 29, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()


def build(
    n: int, stream: str = "mem_a", details: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    events, prev = [], chain.GENESIS
    for i in range(1, n + 1):
        ev: dict[str, Any] = {
            "stream": stream,
            "seq": i,
            "at": chain.timestamp(T0 + timedelta(seconds=i)),
            "actor": "usr_x",
            "actor_role": "member_user",
            "source_ip": "10.0.0.1",
            "request_id": f"r{i}",
            "trace_id": None,
            "action": "job.submit",
            "resource_type": "job",
            "resource_id": f"job_{i}",
            "outcome": "success",
            "details": (details or [{}] * n)[i - 1],
            "prev_hash": prev,
        }
        ev["hash"] = chain.event_hash(ev)
        prev = ev["hash"]
        events.append(ev)
    return events


def checkpoint(events: list[dict[str, Any]], seq: int, stream: str = "mem_a") -> dict[str, Any]:
    h = events[seq - 1]["hash"] if seq else chain.GENESIS
    at = chain.timestamp(T0)
    return {
        "stream": stream,
        "seq": seq,
        "hash": h,
        "at": at,
        "key_id": signing.key_id(KEY),
        "signature": signing.sign(KEY, chain.checkpoint_message(stream, seq, h, at)),
    }


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(
    details=st.lists(
        st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3), min_size=1, max_size=12
    )
)
def test_untouched_chains_verify(details: list[dict[str, Any]]) -> None:
    events = build(len(details), details=details)
    report = verify_stream("mem_a", events, [checkpoint(events, len(events))], KEY.public_key())
    assert report.ok and report.head_seq == len(details) and report.first_bad_seq is None


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 15),
    data=st.data(),
    op=st.sampled_from(["modify", "delete", "swap", "truncate", "forge_link", "resign"]),
)
def test_any_single_tampering_is_found_at_its_seq(n: int, data: st.DataObject, op: str) -> None:
    events = build(n)
    cps = [checkpoint(events, n)]
    k = data.draw(st.integers(1, n - 1), label="k")
    t = copy.deepcopy(events)
    if op == "modify":
        t[k - 1]["details"] = {"gpus": 9999}
        expected = k
    elif op == "delete":
        del t[k - 1]
        expected = k
    elif op == "swap":  # reorder two neighbours, renumbering them to look contiguous
        t[k - 1], t[k] = t[k], t[k - 1]
        t[k - 1]["seq"], t[k]["seq"] = k, k + 1
        expected = k
    elif op == "truncate":
        t = t[:k]
        expected = k + 1
    elif op == "forge_link":  # rewrite an event and recompute its own hash: the next breaks
        t[k - 1]["details"] = {"forged": True}
        t[k - 1]["hash"] = chain.event_hash(t[k - 1])
        expected = k + 1
    else:  # re-hash the whole tail after a change: only the signed checkpoint catches it
        t[k - 1]["details"] = {"forged": True}
        prev = t[k - 2]["hash"] if k > 1 else chain.GENESIS
        for ev in t[k - 1 :]:
            ev["prev_hash"] = prev
            ev["hash"] = chain.event_hash(ev)
            prev = ev["hash"]
        expected = n
    report = verify_stream("mem_a", t, cps, KEY.public_key())
    assert not report.ok
    assert report.first_bad_seq == expected, (op, k, report)


def test_checkpoint_signatures() -> None:
    events = build(3)
    good = checkpoint(events, 3)
    assert verify_stream("mem_a", events, [good], KEY.public_key()).ok
    bad_sig = {**good, "signature": "00" * 64}
    assert (
        verify_stream("mem_a", events, [bad_sig], KEY.public_key()).reason
        == "checkpoint signature is invalid"
    )
    other = Ed25519PrivateKey.generate().public_key()
    assert not verify_stream("mem_a", events, [good], other).ok
    moved = {**good, "at": chain.timestamp(T0 + timedelta(days=1))}
    assert not verify_stream("mem_a", events, [moved], KEY.public_key()).ok


def test_streams_are_independent() -> None:
    a, b = build(3, "mem_a"), build(2, "mem_b")
    b[1]["details"] = {"x": 1}
    report = verify(a + b, [], None)
    by = {s.stream: s for s in report.streams}
    assert by["mem_a"].ok and not by["mem_b"].ok and by["mem_b"].first_bad_seq == 2
    assert not report.ok


_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _outcome(dumps: Any, obj: Any) -> bytes | type[BaseException]:
    try:
        out: bytes = dumps(obj)
    except Exception as exc:
        return type(exc)
    return out


@given(_JSONISH)
@settings(max_examples=400, deadline=None)
def test_canonical_json_is_rfc8785(obj: Any) -> None:
    # The fast path must write exactly what the reference writes, and refuse what it refuses.
    assert _outcome(chain.canonical_json, obj) == _outcome(rfc8785.dumps, obj)


def test_canonical_json_edge_cases() -> None:
    for obj in [
        {"\U0001f600": 1, "\uffff": 2, "a": 3},  # UTF-16 order differs from code points
        {"k": "\ud800"},  # a lone surrogate is refused
        {"k": '\x00\x1f\x7f"\\\b\f\n\r\t\u2028é한'},
        {"n": 2**53 - 1, "m": -(2**53) + 1},
        {"n": 2**53},
        {"f": 1.0, "g": 1e21, "h": -0.0},
        [True, False, None, [], {}],
    ]:
        assert _outcome(chain.canonical_json, obj) == _outcome(rfc8785.dumps, obj), obj
