"""Job submissions per second through the REST API (auth + validation + persistence).

Runs the real app under uvicorn in a child process (so server and client use different
cores), on SQLite and on PostgreSQL, with one API process and with several (as
`nuri api --workers N`), and a bare FastAPI endpoint that parses the same body as
the reference ceiling, all in one run. Prints the median of several runs and the ratios.

    .venv/bin/python bench/api_submit.py [--seconds 5] [--runs 5] [--concurrency 16]
        [--workers 1,2]

The load comes from wrk (a C load generator, installed by `make bench`) so that the client
costs the server's core as little as possible; without wrk it falls back to httpx, which is
itself the bottleneck on a 2-core machine (the figures are then a floor).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN = "nuri-bench-bootstrap-admin-token-0123456789"
PG_URL = os.environ.get("NURI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# A real job reads registered data: the submission resolves the dataset and its labels.
BODY = {
    "kind": "lora",
    "model": "axk1-tiny",
    "gpus": 8,
    "allowed_pools": ["kr-bench-h200"],
    "inputs": ["bench-corpus"],
}


class BareBody(BaseModel):
    kind: str
    model: str
    gpus: int
    allowed_pools: list[str]
    inputs: list[str]


def bare_app() -> FastAPI:
    """The ceiling: same framework, same body parsing, no auth, no database."""
    app = FastAPI()

    @app.post("/v1/jobs", status_code=201)
    def submit(body: BareBody) -> dict[str, object]:
        return {"id": "job_x", **body.model_dump()}

    return app


def serve(kind: str, db: str, port: int, workers: int = 1) -> None:
    import uvicorn

    if kind == "bare":
        uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return
    from controlplane.api.app import create_app
    from controlplane.db.engine import make_engine
    from controlplane.settings import Settings

    home = tempfile.mkdtemp(prefix="nuri-bench-")
    # The per-token rate limit is off: the bench measures how fast the server can go.
    os.environ.update(
        NURI_DATABASE_URL=db,
        NURI_BOOTSTRAP_ADMIN_TOKEN=ADMIN,
        NURI_HOME=home,
        NURI_ENV="dev",
        NURI_RATE_LIMIT_PER_S="0",
    )
    if workers == 1:
        app = create_app(Settings(), make_engine(db))
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return
    # As `nuri api --workers N`: migrate and bootstrap once, then N worker processes.
    create_app(Settings(warm_planner=False)).state.engine.dispose()
    uvicorn.run(
        "controlplane.api.app:create_app_from_env",
        factory=True,
        workers=workers,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, db: str, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, __file__, "--serve", kind, "--db", db),
            *("--port", str(port), "--workers", str(workers)),
        ],
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/docs", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


def member_token(url: str) -> str:
    h = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=url, headers=h) as c:
        c.post(
            "/v1/pools",
            json={
                "name": "kr-bench-h200",
                "gpu_model": "H200",
                "gpu_memory_gib": 141,
                "gpus_per_node": 8,
                "site": "Seoul",
                "region": "kr-seoul",
                "jurisdiction": "KR",
                "node_count": 8,
            },
        ).raise_for_status()
        c.post("/v1/members", json={"name": "bench", "display_name": "B"}).raise_for_status()
        user = c.post(
            "/v1/users", json={"email": "b@bench.example", "name": "B", "member": "bench"}
        ).json()
        tok = c.post("/v1/tokens", json={"name": "b", "user_id": user["id"]}).json()
        c.post(
            "/v1/datasets",
            headers={"Authorization": f"Bearer {tok['token']}"},
            json={
                "name": "bench-corpus",
                "uri": "s3://bench/corpus/",
                "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
            },
        ).raise_for_status()
    return str(tok["token"])


def wrk_rate(url: str, token: str | None, seconds: int, concurrency: int) -> float:
    """Requests/s measured by wrk (C, one thread), which costs the server's core little."""
    import json
    import re

    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps(BODY))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", fh.name, f"{url}/v1/jobs"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(fh.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw failed submissions:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return float(m.group(1))


async def blast(url: str, token: str | None, n: int, concurrency: int) -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60.0) as c:
        queue = list(range(n))
        failures = 0

        async def worker() -> None:
            nonlocal failures
            while queue:
                queue.pop()
                r = await c.post("/v1/jobs", json=BODY)
                if r.status_code != 201:
                    failures += 1
                    if failures == 1:
                        print(f"first failure: {r.status_code} {r.text[:300]}", file=sys.stderr)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{failures} submissions failed")
    return n / elapsed


def pg_database() -> tuple[str, str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"nuri_bench_{uuid.uuid4().hex[:8]}"
    eng = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False), name


def drop_pg(name: str) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


def measure(kind: str, db: str, args: argparse.Namespace, workers: int = 1) -> list[float]:
    proc, url = start(kind, db, workers)
    try:
        token = None if kind == "bare" else member_token(url)
        asyncio.run(blast(url, token, 200, args.concurrency))  # warm-up, and a correctness check
        if workers > 1:  # every worker imports the capacity planner in the background first
            time.sleep(15)
            asyncio.run(blast(url, token, 200, args.concurrency))
        if shutil.which("wrk"):
            return [wrk_rate(url, token, args.seconds, args.concurrency) for _ in range(args.runs)]
        return [
            asyncio.run(blast(url, token, args.requests, args.concurrency))
            for _ in range(args.runs)
        ]
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=1500, help="per run, without wrk")
    p.add_argument("--seconds", type=int, default=5, help="per run, with wrk")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--serve")
    p.add_argument("--db", default="")
    p.add_argument("--port", type=int, default=0)
    p.add_argument(
        "--workers", default="1,2", help="API worker processes to measure (as `nuri api`)"
    )
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.db, args.port, int(args.workers))
        return

    results: dict[str, list[float]] = {}
    results["bare FastAPI (reference)"] = measure("bare", "", args)
    for workers in (int(w) for w in args.workers.split(",")):
        label = f"{workers} worker" + ("s" if workers > 1 else "")
        with tempfile.TemporaryDirectory() as tmp:
            results[f"nuri on SQLite, {label}"] = measure(
                "nuri", f"sqlite:///{tmp}/bench.db", args, workers
            )
        url, name = pg_database()
        try:
            results[f"nuri on PostgreSQL, {label}"] = measure("nuri", url, args, workers)
        finally:
            drop_pg(name)

    ref = statistics.median(results["bare FastAPI (reference)"])
    load = f"wrk, {args.seconds} s" if shutil.which("wrk") else f"httpx, {args.requests} requests"
    print(
        f"\nPOST /v1/jobs ({load}) x {args.runs} runs, concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores (wrk runs on them too)"
    )
    print(f"{'target':36} {'median/s':>10} {'min/s':>9} {'max/s':>9} {'vs bare':>8}")
    for label, rates in results.items():
        med = statistics.median(rates)
        print(f"{label:36} {med:10.0f} {min(rates):9.0f} {max(rates):9.0f} {med / ref:8.2f}")


if __name__ == "__main__":
    main()
