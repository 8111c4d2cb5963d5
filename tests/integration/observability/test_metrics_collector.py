"""/metrics on SQLite and PostgreSQL: the state gauges against a world whose numbers are known,
who may read them, job outcomes counted only when committed, bounded route labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlmodel import Session, col, select

from controlplane.db.models import Job, Node, Pool, UsageRecord
from controlplane.jobstate import JobStatus, transition
from controlplane.observability import metrics
from controlplane.observability.metrics import EVENTS, StateCollector
from controlplane.scheduler.service import CycleReport
from tests.conftest import ADMIN_TOKEN, World, bearer, ok
from tests.e2e.server import free_port

POOL = "kr-test-h200"
NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)  # inside the world's 2026-Q4 budgets


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} of an exposition."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def state(world: World) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    engine = world.client.app.state.engine  # type: ignore[attr-defined]
    registry = CollectorRegistry()
    registry.register(StateCollector(engine, clock=lambda: NOW))
    return samples(generate_latest(registry).decode())


def mp(member: str, pool: str = POOL) -> tuple[tuple[str, str], ...]:
    return (("member", member), ("pool", pool))


def test_state_gauges_match_a_known_world(world: World) -> None:
    engine = world.client.app.state.engine  # type: ignore[attr-defined]
    # beta waits for its quota (a rule: inadmissible) and, pool named, for its turn (active).
    named = ok(
        world.client.post(
            "/v1/jobs",
            headers=bearer(world.b.user_token),
            json={
                "kind": "lora",
                "model": "axk1-tiny",
                "gpus": 8,
                "inputs": [world.b.dataset["id"]],
                "allowed_pools": [POOL],
            },
        ),
        201,
    )
    with Session(engine) as s:
        pool_id = s.exec(select(Pool.id).where(Pool.name == POOL)).one()
        # alpha runs 24 GPUs on a nominal 16: 8 borrowed, all of them from beta's idle 16.
        s.execute(
            update(Job)
            .where(col(Job.id) == world.a.job["id"])
            .values(status="RUNNING", pool=POOL, gpus=24, assignment=[["n", 24]])
        )
        s.execute(
            update(Job)
            .where(col(Job.id) == world.b.job["id"])
            .values(reasons=[{"code": "quota_exceeded", "message": "full"}])
        )
        for attempt, start, hours, gpus, open_ in (
            (1, datetime(2026, 11, 1, tzinfo=UTC), 1.0, 2, False),  # 2 GPU-hours in Q4
            (2, datetime(2026, 9, 1, tzinfo=UTC), 1.0, 8, False),  # Q3: not this budget's
            (3, NOW - timedelta(hours=1), 0.0, 24, True),  # running for an hour: 24
        ):
            s.add(
                UsageRecord(
                    member_id=world.a.member["id"],
                    pool_id=pool_id,
                    job_id=world.a.job["id"],
                    attempt=attempt,
                    period=f"{start:%Y-%m}",
                    started_at=start,
                    ended_at=None if open_ else start + timedelta(hours=hours),
                    gpus=gpus,
                    gpu_seconds=0.0 if open_ else hours * 3600 * gpus,
                )
            )
        s.commit()
    got = state(world)
    assert got["nuri_pending_jobs"] == {
        (("member", "beta"), ("pool", "any"), ("status", "inadmissible")): 1.0,
        (("member", "beta"), ("pool", POOL), ("status", "active")): 1.0,
    }, named
    assert got["nuri_gpus_in_use"] == {mp("alpha"): 24.0, mp("beta"): 0.0}
    assert got["nuri_gpus_nominal"] == {mp("alpha"): 16.0, mp("beta"): 16.0}
    assert got["nuri_gpus_borrowed"] == {mp("alpha"): 8.0, mp("beta"): 0.0}
    assert got["nuri_gpus_lent"] == {mp("alpha"): 0.0, mp("beta"): 8.0}
    period = (("member", "alpha"), ("period", "2026-Q4"))
    assert got["nuri_budget_used_gpu_seconds"][period] == pytest.approx((2 + 24) * 3600.0)
    assert got["nuri_budget_limit_gpu_seconds"][period] == 1000 * 3600.0
    assert got["nuri_pool_gpus"] == {(("pool", POOL),): 32.0}
    nodes = {status: 0.0 for status in ("ready", "cordoned", "down", "quarantined")}
    assert got["nuri_nodes"] == {
        (("pool", POOL), ("status", k)): v for k, v in {**nodes, "ready": 4.0}.items()
    }
    # A node the Kubernetes inventory quarantined is counted as such (and its GPUs still are).
    with Session(engine) as s:
        node = s.exec(select(Node).where(Node.pool_id == pool_id)).first()
        assert node is not None
        node.status = "quarantined"
        s.add(node)
        s.commit()
    got = state(world)
    assert got["nuri_nodes"][(("pool", POOL), ("status", "quarantined"))] == 1.0
    assert got["nuri_nodes"][(("pool", POOL), ("status", "ready"))] == 3.0


def test_lent_gpus_are_shared_by_idle_guarantees_within_lending_limits() -> None:
    keys = [("a", "p"), ("b", "p"), ("c", "p"), ("d", "q")]
    borrowed = {("a", "p"): 0, ("b", "p"): 0, ("c", "p"): 9, ("d", "q"): 3}
    # a may lend 2 (its lending limit), b all its idle 10; nobody lends in q.
    lendable = {("a", "p"): 2, ("b", "p"): 10, ("c", "p"): 0, ("d", "q"): 0}
    lent = metrics._attribute_lending(keys, borrowed, lendable)
    assert lent == {("a", "p"): 2, ("b", "p"): 7}  # 1.5 + 7.5: the tie goes to "a"
    assert sum(lent.values()) == 9


def test_metrics_need_the_metrics_scope_on_a_public_address(world: World) -> None:
    c = world.client
    settings = c.app.state.settings  # type: ignore[attr-defined]
    assert c.get("/metrics").status_code == 200  # the test server is on 127.0.0.1
    settings.host = "0.0.0.0"
    assert c.get("/metrics").status_code == 401
    denied = c.get("/metrics", headers=bearer(ADMIN_TOKEN))  # read, write, admin: not metrics
    assert denied.status_code == 403 and denied.json()["code"] == "insufficient_scope"
    scraper = ok(
        c.post(
            "/v1/tokens", headers=world.root, json={"name": "prometheus", "scopes": ["metrics"]}
        ),
        201,
    )
    assert scraper["scopes"] == ["metrics"]
    resp = c.get("/metrics", headers=bearer(scraper["token"]))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert "# TYPE nuri_pending_jobs gauge" in resp.text
    for_auditor = {"name": "p", "user_id": "auditor@nuri.example", "scopes": ["metrics"]}
    auditor = ok(c.post("/v1/tokens", headers=world.root, json=for_auditor), 201)
    assert c.get("/metrics", headers=bearer(auditor["token"])).status_code == 200
    # Member identities see one member; the metrics show all of them.
    refused = c.post(
        "/v1/tokens", headers=bearer(world.a.admin_token), json={"name": "p", "scopes": ["metrics"]}
    )
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_scopes"
    default = ok(c.post("/v1/tokens", headers=world.root, json={"name": "d"}), 201)
    assert default["scopes"] == ["admin", "read", "write"]  # never given unasked
    settings.metrics_public = True
    assert c.get("/metrics").status_code == 200
    assert "/metrics" not in c.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("host", "public", "open_"),
    [
        ("127.0.0.1", False, True),
        ("::1", False, True),
        ("localhost", False, True),
        ("10.1.2.3", False, True),
        ("192.168.0.5", False, True),
        ("[fd00::1]", False, True),
        ("0.0.0.0", False, False),
        ("::", False, False),
        ("34.64.0.10", False, False),  # a public address
        ("nuri.example", False, False),
        ("0.0.0.0", True, True),
    ],
)
def test_which_addresses_need_no_token(host: str, public: bool, open_: bool) -> None:
    assert metrics.open_without_token(host, public) is open_


def outcome(kind: str, name: str) -> float:
    return EVENTS.get_sample_value("nuri_job_outcomes_total", {"kind": kind, "outcome": name}) or 0


def test_job_outcomes_count_when_committed(world: World) -> None:
    engine = world.client.app.state.engine  # type: ignore[attr-defined]
    before = outcome("lora", "cancelled")
    with Session(engine) as s:
        transition(s, world.a.job["id"], expected=JobStatus.QUEUED, to=JobStatus.CANCELLED, now=NOW)
        s.rollback()
    with Session(engine) as s:  # closed without commit
        transition(s, world.a.job["id"], expected=JobStatus.QUEUED, to=JobStatus.CANCELLED, now=NOW)
    assert outcome("lora", "cancelled") == before
    ok(world.client.post(f"/v1/jobs/{world.a.job['id']}/cancel", headers=world.root))
    assert outcome("lora", "cancelled") == before + 1


def requests(route: str, status: str) -> float:
    labels = {"method": "GET", "route": route, "status": status}
    return EVENTS.get_sample_value("nuri_api_request_duration_seconds_count", labels) or 0


def test_request_durations_are_labelled_by_route_template(world: World) -> None:
    c = world.client
    template, before = "/v1/jobs/{job_id}", requests("/v1/jobs/{job_id}", "200")
    unmatched = requests("unmatched", "404")
    for tenant in (world.a, world.b):
        ok(c.get(f"/v1/jobs/{tenant.job['id']}", headers=world.root))
    assert c.get("/no/such/path/12345").status_code == 404
    assert requests(template, "200") == before + 2
    assert requests("unmatched", "404") == unmatched + 1
    text = c.get("/metrics").text
    assert "/v1/jobs/" + world.a.job["id"] not in text  # never a raw path


def test_a_scheduler_serves_its_cycle_metrics_on_its_own_port() -> None:
    with pytest.raises(ValueError, match="NURI_METRICS_PUBLIC"):
        metrics.serve("0.0.0.0", free_port(), None, public=False)
    port = free_port()
    server = metrics.serve("127.0.0.1", port, None, public=False)
    try:
        count = "nuri_scheduler_cycle_duration_seconds_count"
        before = EVENTS.get_sample_value(count) or 0
        report = CycleReport(leader=True, depth=3, admitted=["j"], waits=[("p", 12.0)])
        report.preemptions.append(("p", "reclaim"))
        metrics.record_cycle(report, 0.25)
        got = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text)
        assert got[count][()] == before + 1
        assert got["nuri_admission_wait_time_seconds_count"][(("pool", "p"),)] >= 1
        assert "nuri_pending_jobs" not in got, "the state is the API's, never counted twice"
    finally:
        server.shutdown()
        server.server_close()
