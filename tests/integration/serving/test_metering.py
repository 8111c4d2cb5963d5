"""The token ledger on SQLite and PostgreSQL: reservations under concurrency never overshoot
a budget, settlement is once, budgets take a token cap, /v1/usage shows tokens."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane.db.models import Budget, Endpoint, Member, TokenUsage, User
from controlplane.services.inventory import ensure_priority_classes
from controlplane.serving import metering
from controlplane.usage import period_of
from tests.conftest import World, ok

NOW = datetime.now(UTC)


def seed(engine: Engine, cap: int | None) -> tuple[str, str]:
    """A member with a budget of ``cap`` tokens for this month, and one endpoint."""
    with Session(engine, expire_on_commit=False) as s:
        ensure_priority_classes(s)
        member = Member(name=f"m{uuid.uuid4().hex[:12]}", display_name="M")
        s.add(member)
        s.flush()
        user = User(email=f"u{member.id}@x.example", name="U", role="member_user",
                    member_id=member.id)  # fmt: skip
        s.add(user)
        s.flush()
        start = datetime(NOW.year, NOW.month, 1, tzinfo=UTC)
        end = datetime(NOW.year + NOW.month // 12, NOW.month % 12 + 1, 1, tzinfo=UTC)
        s.add(Budget(member_id=member.id, period=period_of(NOW), starts_at=start, ends_at=end,
                     gpu_hours=10, tokens=cap))  # fmt: skip
        ep = Endpoint(member_id=member.id, creator_id=user.id, name="ep", model="axk1-tiny",
                      min_replicas=0, max_replicas=1, gpus_per_replica=1,
                      priority_class="research")  # fmt: skip
        s.add(ep)
        s.commit()
        return member.id, ep.id


def ledger(engine: Engine, member_id: str) -> list[TokenUsage]:
    with Session(engine) as s:
        return list(s.exec(select(TokenUsage).where(TokenUsage.member_id == member_id)).all())


def test_concurrent_requests_never_charge_more_than_the_budget(engine: Engine) -> None:
    cap, n = 5_000, 40
    member_id, ep_id = seed(engine, cap)
    refused: list[metering.BudgetExhausted] = []
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def one_stream(i: int) -> None:
        rnd = random.Random(i)
        want = rnd.randrange(100, 600)
        try:
            start.wait()
            with Session(engine) as s:
                rid = metering.reserve(s, member_id=member_id, endpoint_id=ep_id, tokens=want,
                                       now=datetime.now(UTC))  # fmt: skip
            # the "stream": uses at most what it reserved, sometimes cut by a disconnect
            used = rnd.randrange(0, want + 1)
            with Session(engine) as s:
                metering.settle(s, rid, prompt_tokens=used // 3, completion_tokens=used - used // 3,
                                outcome=rnd.choice(["stop", "disconnected"]),
                                now=datetime.now(UTC))  # fmt: skip
        except metering.BudgetExhausted as exc:
            refused.append(exc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one_stream, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    rows = ledger(engine, member_id)
    assert len(rows) + len(refused) == n
    assert refused, "the budget must have refused some of 40 requests of 100..600 tokens"
    assert all(r.status_code == 429 and r.code == "insufficient_quota" for r in refused)
    assert all(r.settled_at is not None and r.reserved_tokens == 0 for r in rows)
    assert sum(r.prompt_tokens + r.completion_tokens for r in rows) <= cap


def test_open_reservations_count_against_the_budget_and_settle_is_once(engine: Engine) -> None:
    member_id, ep_id = seed(engine, 1_000)
    with Session(engine) as s:
        a = metering.reserve(s, member_id=member_id, endpoint_id=ep_id, tokens=600, now=NOW)
        with pytest.raises(metering.BudgetExhausted) as err:
            metering.reserve(s, member_id=member_id, endpoint_id=ep_id, tokens=500, now=NOW)
        assert err.value.details["charged_tokens"] == 600
        assert metering.open_requests(s, ep_id) == 1
        assert metering.settle(s, a, prompt_tokens=10, completion_tokens=90, outcome="stop",
                               now=NOW, job_id="job_x")  # fmt: skip
        assert not metering.settle(s, a, prompt_tokens=500, completion_tokens=500,
                                   outcome="stop", now=NOW)  # fmt: skip
        assert metering.open_requests(s, ep_id) == 0
        metering.reserve(s, member_id=member_id, endpoint_id=ep_id, tokens=900, now=NOW)
    (row,) = [r for r in ledger(engine, member_id) if r.id == a]
    assert (row.prompt_tokens, row.completion_tokens, row.outcome, row.job_id) == (
        10, 90, "stop", "job_x",
    )  # fmt: skip


def test_no_token_budget_means_no_cap_and_stale_rows_are_closed(engine: Engine) -> None:
    member_id, ep_id = seed(engine, None)
    with Session(engine) as s:
        metering.reserve(s, member_id=member_id, endpoint_id=ep_id, tokens=10**12, now=NOW)
        old = NOW - metering.STALE_AFTER - timedelta(seconds=1)
        metering.reserve(s, member_id=member_id, endpoint_id=ep_id, tokens=5, now=old)
        assert metering.open_requests(s, ep_id, NOW) == 1
        assert metering.settle_abandoned(s, NOW) == 1
        assert metering.open_requests(s, ep_id) == 1


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cap=st.integers(0, 2_000),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["reserve", "settle", "settle-again"]),
            st.integers(0, 800),
            st.floats(0, 1),
        ),
        max_size=25,
    ),
)
def test_reserve_and_settle_keep_the_ledger_under_the_cap(
    sqlite_engine: Engine, cap: int, steps: list[tuple[str, int, float]]
) -> None:
    member_id, ep_id = seed(sqlite_engine, cap)
    open_: dict[str, int] = {}
    settled: dict[str, int] = {}
    with Session(sqlite_engine) as s:
        for action, n, share in steps:
            if action == "reserve":
                try:
                    rid = metering.reserve(s, member_id=member_id, endpoint_id=ep_id,
                                           tokens=n, now=NOW)  # fmt: skip
                    open_[rid] = n
                except metering.BudgetExhausted:
                    assert sum(open_.values()) + sum(settled.values()) + n > cap
            elif action == "settle" and open_:
                rid = sorted(open_)[int(share * (len(open_) - 1))]
                used = int(open_.pop(rid) * share)
                assert metering.settle(s, rid, prompt_tokens=0, completion_tokens=used,
                                       outcome="stop", now=NOW)  # fmt: skip
                settled[rid] = used
            elif action == "settle-again" and settled:
                rid = sorted(settled)[0]
                assert not metering.settle(s, rid, prompt_tokens=n, completion_tokens=n,
                                           outcome="stop", now=NOW)  # fmt: skip
            charged = metering.tokens_charged(s, member_id, [period_of(NOW)])
            assert charged == sum(open_.values()) + sum(settled.values()) <= cap


# --- budgets and the usage report ----------------------------------------------------------


def test_budgets_take_an_optional_token_cap(world: World) -> None:
    w = world
    budget = w.a.budget
    assert budget["tokens"] is None and budget["used_tokens"] == 0
    changed = ok(w.client.patch(f"/v1/budgets/{budget['id']}", headers=w.root,
                                json={"tokens": 1000}))  # fmt: skip
    assert changed["tokens"] == 1000 and changed["gpu_hours"] == budget["gpu_hours"]
    for bad in (-1, 10**15 + 1, "x"):
        resp = w.client.patch(f"/v1/budgets/{budget['id']}", headers=w.root, json={"tokens": bad})
        assert resp.status_code == 422, resp.text
    cleared = ok(w.client.patch(f"/v1/budgets/{budget['id']}", headers=w.root,
                                json={"tokens": None}))  # fmt: skip
    assert cleared["tokens"] is None
    created = ok(w.client.post("/v1/budgets", headers=w.root,
                               json={"member": "alpha", "period": "2027-01", "gpu_hours": 1,
                                     "tokens": 10**15}), 201)  # fmt: skip
    assert created["tokens"] == 10**15
    listed = ok(w.client.get("/v1/budgets", headers=w.root))["items"]
    assert {b["period"]: b["tokens"] for b in listed if b["member_id"] == created["member_id"]} == {
        "2026-Q4": None, "2027-01": 10**15,
    }  # fmt: skip


def test_usage_shows_tokens_beside_gpu_hours(world: World) -> None:
    import csv
    import io

    w = world
    engine: Engine = w.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as s:
        member_id = w.a.member["id"]
        user = s.exec(select(User).where(User.member_id == member_id)).first()
        assert user is not None
        ep = Endpoint(member_id=member_id, creator_id=user.id, name="chat", model="axk1-tiny",
                      min_replicas=0, max_replicas=1, gpus_per_replica=1,
                      priority_class="research")  # fmt: skip
        s.add(ep)
        s.commit()
        at = datetime(2026, 11, 5, tzinfo=UTC)
        for prompt, completion in ((10, 20), (5, 7)):
            rid = metering.reserve(s, member_id=member_id, endpoint_id=ep.id, tokens=100, now=at)
            metering.settle(s, rid, prompt_tokens=prompt, completion_tokens=completion,
                            outcome="stop", now=at)  # fmt: skip
        metering.reserve(s, member_id=member_id, endpoint_id=ep.id, tokens=100, now=at)  # open
    report = ok(w.client.get("/v1/usage?period=2026-Q4", headers=w.root))
    assert "lines" in report and "total_gpu_hours" in report
    assert report["token_lines"] == [
        {"member": "alpha", "endpoint": "chat", "month": "2026-11", "requests": 2,
         "prompt_tokens": 15, "completion_tokens": 27, "total_tokens": 42},
    ]  # fmt: skip
    assert report["total_tokens"] == 42
    beta = ok(w.client.get("/v1/usage?period=2026-Q4", headers=w.as_(w.b.user_token)))
    assert beta["token_lines"] == []
    rows = list(csv.DictReader(io.StringIO(
        w.client.get("/v1/usage?period=2026-Q4&format=csv", headers=w.root).text)))  # fmt: skip
    tokens = [r for r in rows if r["endpoint"]]
    assert [(r["member"], r["endpoint"], r["prompt_tokens"], r["completion_tokens"])
            for r in tokens] == [("alpha", "chat", "15", "27")]  # fmt: skip
    assert all(r["pool"] for r in rows if not r["endpoint"])
