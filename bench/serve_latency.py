"""Online serving: time to first token and requests/s through the gateway, and against the
bare engine, in the same run (issue 14: the gateway adds < 5 ms p50 to the time to first
token).

One real replica (the ``axk1-tiny`` preset, transformers on CPU) on a local Ray Serve, and
two ways to it, measured alternately so that both see the same machine:

1. **gateway**: ``POST /openai/v1/chat/completions`` with ``stream: true`` through a real
   uvicorn server (authentication, rate limits, the ledger's reservation and settlement on
   SQLite, residency, routing), read with raw httpx streaming;
2. **bare engine**: the replica's Serve handle,
   ``handle.options(stream=True).stream.remote(request)``, from the same process.

Time to first token is from sending the request to the first delta that carries text;
requests/s is ``--concurrency`` streams at a time, ``--throughput-requests`` in all.

    .venv/bin/python bench/serve_latency.py [--requests 40] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import httpx  # noqa: E402
import ray  # noqa: E402
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from ray import serve  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from controlplane.api.app import create_app  # noqa: E402
from controlplane.db.engine import make_engine  # noqa: E402
from controlplane.db.models import Endpoint, Job, User  # noqa: E402
from controlplane.serving.names import SERVE_KIND, replica_app_name  # noqa: E402
from controlplane.settings import Settings  # noqa: E402

ADMIN = "nuri-bench-bootstrap-admin-token-0123456789"
POOL = "bench-kr"
PRESET = "axk1-tiny"
JOB_ID = "job_bench_serve"
MESSAGES = [{"role": "user", "content": "the cat sat on the"}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def setup(tmp: Path) -> tuple[TestClient, str, Any]:
    """A consortium of one member, its endpoint "chat" and its replica job RUNNING."""
    engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    settings = Settings(bootstrap_admin_token=ADMIN, home=tmp, rate_limit_per_s=0)
    c = TestClient(create_app(settings, engine))
    h = {"Authorization": f"Bearer {ADMIN}"}
    c.post("/v1/pools", headers=h, json={
        "name": POOL, "gpu_model": "H100", "gpu_memory_gib": 80, "gpus_per_node": 8,
        "site": "Daejeon", "region": "kr-daejeon", "jurisdiction": "KR", "node_count": 1,
        "max_classification": "classified", "interconnect_domains": ["ib-a"],
    }).raise_for_status()  # fmt: skip
    c.post("/v1/members", headers=h, json={"name": "bench", "display_name": "B"}).raise_for_status()
    user = c.post(
        "/v1/users", headers=h, json={"email": "b@bench.example", "name": "B", "member": "bench"}
    ).json()
    token = c.post("/v1/tokens", headers=h, json={"name": "b", "user_id": user["id"]}).json()
    with Session(engine) as s:
        u = s.exec(select(User).where(User.id == user["id"])).one()
        assert u.member_id is not None
        ep = Endpoint(member_id=u.member_id, creator_id=u.id, name="chat", model=PRESET,
                      min_replicas=1, max_replicas=1, gpus_per_replica=1,
                      priority_class="research", config={})  # fmt: skip
        s.add(ep)
        s.flush()
        s.add(Job(id=JOB_ID, member_id=ep.member_id, submitter_id=u.id, name="replica-0",
                  kind=SERVE_KIND, model=PRESET, gpus=1, nodes=1, gpus_per_node=1,
                  priority_class="research", max_runtime_s=10**6, preemptible=False,
                  status="RUNNING", pool=POOL, endpoint_id=ep.id))  # fmt: skip
        s.commit()
    return c, token["token"], engine


def deploy_replica(tmp: Path) -> Any:
    from workers.execution import CapacityPlan, ExecutionPlan, JobDirs, ModelPlan
    from workers.serving import build_replica_app

    plan = ExecutionPlan(
        job_id=JOB_ID, attempt=1, kind="serve", payload="model",
        model=ModelPlan(ref=PRESET, preset=PRESET), teacher=None, inputs=(),
        capacity=CapacityPlan(1, 1, 1, "bf16", None, False, False, 1, 1, 512, 80.0, 8),
        knobs={"max_tokens_default": 8, "max_ongoing_requests": 64},
        dirs=JobDirs.under(tmp / "replica"),
    )  # fmt: skip
    app = replica_app_name(JOB_ID, 1)
    target = build_replica_app(plan.to_dict(), pool=POOL, node="n0", gpus=1, name="replica")
    serve.run(target, name=app, route_prefix=None, blocking=False)
    deadline = time.monotonic() + 300
    while getattr(serve.status().applications.get(app), "status", None) != "RUNNING":
        if time.monotonic() > deadline:
            raise SystemExit("the replica did not start within 300 s")
        time.sleep(0.2)
    return serve.get_app_handle(app)


def start_server(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline:
            raise SystemExit("uvicorn did not start")
        time.sleep(0.05)
    return srv, thread, port


# --- one request each way: seconds to the first text, and the whole -----------------------

Timed = Callable[[], Awaitable[tuple[float, float]]]


def gateway_request(http: httpx.AsyncClient, url: str, token: str, max_tokens: int) -> Timed:
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}

    async def one() -> tuple[float, float]:
        t0 = time.perf_counter()
        first = None
        async with http.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                raise SystemExit(f"gateway: {resp.status_code} {(await resp.aread())[:300]!r}")
            async for line in resp.aiter_lines():
                if first is None and line.startswith("data: {"):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if choices[0].get("delta", {}).get("content"):
                        first = time.perf_counter()
        if first is None:
            raise SystemExit("gateway: no text streamed")
        return first - t0, time.perf_counter() - t0

    return one


def engine_request(handle: Any, max_tokens: int) -> Timed:
    request = {"messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}

    async def one() -> tuple[float, float]:
        t0 = time.perf_counter()
        first = None
        async for delta in handle.options(stream=True).stream.remote(request):
            if first is None and delta.get("text"):
                first = time.perf_counter()
        if first is None:
            raise SystemExit("engine: no text streamed")
        return first - t0, time.perf_counter() - t0

    return one


async def throughput(one: Timed, total: int, concurrency: int) -> float:
    """Requests/s with ``concurrency`` in flight until ``total`` are done."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


async def measure(
    url: str, token: str, handle: Any, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        ways = {
            "gateway": gateway_request(http, url, token, args.max_tokens),
            "bare engine": engine_request(handle, args.max_tokens),
        }
        for one in ways.values():  # warm-up: connections, handles, the model's first steps
            for _ in range(3):
                await one()
        ttft: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(args.requests):  # one at a time, alternating
            for name, one in ways.items():
                ttft[name].append((await one())[0])
        rps: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(args.rounds):
            for name, one in ways.items():
                rps[name].append(await throughput(one, args.throughput_requests, args.concurrency))
    return {k: {"ttft": ttft[k], "rps": statistics.median(rps[k])} for k in ways}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=40, help="sequential requests per way")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--throughput-requests", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds per way (median)")
    args = p.parse_args()
    ray.init(
        address="local",  # a Ray of its own, never one already running on the machine
        num_cpus=2,
        num_gpus=1,
        resources={f"pool:{POOL}": 1, "nuri-node:n0": 1},
        namespace="nuri",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        serve.start(proxy_location="Disabled")
        with tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            c, token, _ = setup(tmp)
            handle = deploy_replica(tmp)
            srv, thread, port = start_server(c.app)
            try:
                url = f"http://127.0.0.1:{port}/openai/v1/chat/completions"
                got = asyncio.run(measure(url, token, handle, args))
            finally:
                srv.should_exit = True
                thread.join(timeout=30)
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"\none {PRESET} replica on a local Ray Serve (CPU), SQLite, {os.cpu_count()} cores")
    print(f"chat stream, max_tokens {args.max_tokens}: time to first token over "
          f"{args.requests} requests one at a time (alternating), ms")  # fmt: skip
    print(
        f"{'':>12}  {'p50':>7}  {'p95':>7}  {'req/s (' + str(args.concurrency) + ' at once)':>18}"
    )
    for name, figures in got.items():
        ttft = figures["ttft"]
        print(f"{name:>12}  {statistics.median(ttft) * 1000:7.1f}  "
              f"{percentile(ttft, 0.95) * 1000:7.1f}  {figures['rps']:18.1f}")  # fmt: skip
    gw, bare = got["gateway"], got["bare engine"]
    gw50, bare50 = statistics.median(gw["ttft"]), statistics.median(bare["ttft"])
    print(f"gateway / bare engine: TTFT p50 x{gw50 / bare50:.2f}, "
          f"requests/s x{gw['rps'] / bare['rps']:.2f}")  # fmt: skip
    print(f"the gateway adds {(gw50 - bare50) * 1000:.1f} ms to the p50 time to first token "
          "(target: < 5 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
