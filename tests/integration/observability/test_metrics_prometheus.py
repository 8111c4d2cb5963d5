"""A real Prometheus scrapes a running Nuri (API + scheduler on a real Ray) while jobs are
submitted, admitted, preempted, cancelled and finished; its PromQL answers must agree with
the database. ``promtool check metrics`` must find nothing to say about the exposition."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlmodel import Session, col, func, select

from controlplane.db.models import Job, JobEvent, Member
from controlplane.observability.metrics import EVENTS
from tests.conftest import ADMIN_TOKEN, bearer, ok
from tests.e2e.server import free_port, stop
from tests.integration.observability import promtool
from tests.integration.scheduler import conftest as scheduler_world
from tests.integration.scheduler.conftest import POOL, Env

# The scheduler tests' fixtures: a real multi-node Ray and a world on SQLite served by it.
ray_cluster = scheduler_world.ray_cluster
env = scheduler_world.env

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

# How long Prometheus may take to show what the database holds: a few scrapes normally, far
# more on a loaded machine. Conditions are polled; nothing sleeps for a fixed time.
AGREE_S = 120.0
HOLDING = ("ADMITTED", "RUNNING", "PREEMPTING")


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app on a real HTTP port (uvicorn in a thread), for Prometheus to scrape."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def prometheus(tmp: Path, target: str) -> Iterator[str]:
    """Debian's Prometheus on 127.0.0.1 with its own storage, scraping ``target`` every
    second (``make prometheus`` installs it)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed; run `make prometheus`")
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: nuri\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: _ready(url) or proc.poll() is not None,
            lambda: f"Prometheus not ready:\n{log.read_text()}",
        )
        assert proc.poll() is None, log.read_text()
        yield url
    finally:
        stop(proc, timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(cond: Callable[[], bool], why: Callable[[], str], timeout: float = AGREE_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(why())
        time.sleep(0.5)  # poll interval


def promql(url: str, query: str) -> dict[tuple[str, ...], float]:
    """An instant query's vector as {label values in label-name order: value}."""
    resp = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=30)
    resp.raise_for_status()
    body = resp.json()["data"]
    assert body["resultType"] == "vector", body
    return {
        tuple(v for _, v in sorted(r["metric"].items())): float(r["value"][1])
        for r in body["result"]
    }


def agree(url: str, query: str, database: Callable[[], dict[tuple[str, ...], float]]) -> None:
    """Wait until Prometheus answers ``query`` as the database says it should."""
    seen: dict[str, Any] = {}

    def same() -> bool:
        seen["prometheus"], seen["database"] = promql(url, query), database()
        return seen["prometheus"] == seen["database"]

    wait_for(same, lambda: f"{query}: Prometheus {seen['prometheus']} != db {seen['database']}")


# --- the database's answers, computed here independently of the collector ------------------


def pending_per_pool(env: Env) -> dict[tuple[str, ...], float]:
    with Session(env.engine) as s:
        queued = s.exec(select(Job).where(Job.status == "QUEUED")).all()
    pools = Counter(
        (j.preferred_pools or j.allowed_pools or ["any"])[0] for j in queued
    )  # the pool a waiting job is shown under (see nuri_pending_jobs)
    return {(pool,): float(n) for pool, n in pools.items()}


def gpus_in_use_per_member(env: Env) -> dict[tuple[str, ...], float]:
    with Session(env.engine) as s:
        rows = s.exec(
            select(Member.name, func.sum(Job.gpus))
            .join(Member, col(Member.id) == col(Job.member_id))
            .where(col(Job.status).in_(HOLDING))
            .group_by(Member.name)
        ).all()
    return {(name,): float(n) for name, n in rows if n}


def admissions(env: Env) -> float:
    with Session(env.engine) as s:
        return float(s.exec(select(func.count()).where(JobEvent.to_status == "ADMITTED")).one())


def events_now(name: str, labels: dict[str, str]) -> float:
    """This process's counter before the test: earlier tests may have counted in it too."""
    return EVENTS.get_sample_value(name, labels) or 0.0


def test_prometheus_sees_what_the_database_holds(env: Env, tmp_path: Path) -> None:
    base = {
        "waits": events_now("nuri_admission_wait_time_seconds_count", {"pool": POOL}),
        "reclaims": events_now("nuri_preempted_jobs_total", {"pool": POOL, "reason": "reclaim"}),
        "evicted": events_now("nuri_evicted_jobs_total", {"pool": POOL, "reason": "preempted"}),
        "succeeded": events_now(
            "nuri_job_outcomes_total", {"kind": "finetune", "outcome": "succeeded"}
        ),
        "cancelled": events_now(
            "nuri_job_outcomes_total", {"kind": "finetune", "outcome": "cancelled"}
        ),
    }
    long_run = {"payload": "synthetic", "steps": 600, "step_seconds": 0.1, "checkpoint_every": 5}
    with serving(env.client.app) as target, prometheus(tmp_path, target) as url:
        # 1. alpha (nominal 8) borrows 8 of beta's idle 16; 16 more would pass its borrowing
        # limit (16), so its second job waits for its quota.
        borrower = env.submit(env.alpha, gpus=16, nodes=2, name="borrower", config=long_run)
        env.until_status(borrower["id"], "RUNNING")
        waiter = env.submit(env.alpha, gpus=16, nodes=2, name="waiter")
        env.run_until(lambda: env.job(waiter["id"])["reasons"][0]["code"] != "awaiting_scheduler")
        assert env.job(waiter["id"])["reasons"][0]["code"] == "quota_exceeded"
        # Nothing ticks while Prometheus catches up: the database stands still.
        agree(url, "sum by (pool) (nuri_pending_jobs)", lambda: pending_per_pool(env))
        agree(url, "sum by (member) (nuri_gpus_in_use) > 0", lambda: gpus_in_use_per_member(env))
        # The waiter names no pool ("any"); a rule holds it (its member's quota).
        inadmissible = 'sum by (member, pool) (nuri_pending_jobs{status="inadmissible"})'
        agree(url, inadmissible, lambda: {("alpha", "any"): 1.0})
        agree(url, "sum by (member, pool) (nuri_gpus_borrowed) > 0", lambda: {("alpha", POOL): 8.0})
        agree(url, "sum by (member, pool) (nuri_gpus_lent) > 0", lambda: {("beta", POOL): 8.0})

        # 2. beta claims its guaranteed 16: the borrower is preempted and waits again.
        owner = env.submit(
            env.beta,
            gpus=16,
            nodes=2,
            name="owner",
            priority_class="training",
            config={"payload": "synthetic", "steps": 4, "step_seconds": 0.1},
        )
        env.run_until(
            lambda: (
                env.job(borrower["id"])["status"] == "QUEUED"
                and env.job(owner["id"])["status"] == "RUNNING"
            )
        )
        agree(url, "sum by (pool) (nuri_pending_jobs)", lambda: pending_per_pool(env))
        agree(url, "sum by (member) (nuri_gpus_in_use) > 0", lambda: gpus_in_use_per_member(env))
        agree(
            url,
            f'sum(nuri_preempted_jobs_total{{pool="{POOL}",reason="reclaim"}})'
            f" - {base['reclaims']}",
            lambda: {(): 1.0},
        )
        agree(
            url,
            f'sum(nuri_evicted_jobs_total{{pool="{POOL}",reason="preempted"}}) - {base["evicted"]}',
            lambda: {(): 1.0},
        )

        # 3. The borrower is cancelled while it waits; the owner finishes, then the waiter.
        ok(env.client.post(f"/v1/jobs/{borrower['id']}/cancel", headers=bearer(ADMIN_TOKEN)))
        env.run_until(lambda: env.finished(owner["id"]) and env.finished(waiter["id"]))
        assert env.job(owner["id"])["status"] == env.job(waiter["id"])["status"] == "SUCCEEDED"
        agree(url, "sum by (pool) (nuri_pending_jobs)", lambda: pending_per_pool(env))
        agree(url, "sum by (member) (nuri_gpus_in_use) > 0", lambda: gpus_in_use_per_member(env))
        agree(
            url,
            f'sum(nuri_admission_wait_time_seconds_count{{pool="{POOL}"}}) - {base["waits"]}',
            lambda: {(): admissions(env)},
        )
        assert admissions(env) >= 3  # borrower, waiter, owner (and any placement retried)
        outcomes: dict[tuple[str, ...], float] = {}

        def outcomes_counted() -> bool:
            query = 'sum by (outcome) (nuri_job_outcomes_total{kind="finetune"})'
            outcomes.update(promql(url, query))
            return (
                outcomes.get(("succeeded",), 0.0) - base["succeeded"] == 2
                and outcomes.get(("cancelled",), 0.0) - base["cancelled"] == 1
            )

        wait_for(outcomes_counted, lambda: f"outcomes {outcomes}, counted before {base}")
        cycles = promql(url, "sum(nuri_scheduler_cycle_duration_seconds_count)")
        assert cycles[()] > 0
        routes = {
            r for (r,) in promql(url, "sum by (route) (nuri_api_request_duration_seconds_count)")
        }
        assert {"/v1/jobs", "/v1/jobs/{job_id}", "/metrics"} <= routes
        assert not any(borrower["id"] in r for r in routes), "route templates, not paths"

        # promtool lints what Prometheus scraped.
        exposition = httpx.get(f"http://{target}/metrics", timeout=30).text
    promtool.assert_clean(exposition)
    for name in ("nuri_pending_jobs", "nuri_admission_attempts_total", "nuri_gpus_nominal"):
        assert name in exposition
