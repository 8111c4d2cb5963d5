"""Recovery of the control plane after kill -9, and how fast SIGTERM stops it (issue 17).

For `nuri up` (single host) and for the split deployment (`nuri api` + the standalone
scheduler + a Ray head of their own), on PostgreSQL, each repetition:

1. starts the control plane and waits until a warm-up job was admitted (a leader schedules);
2. kill -9 (`nuri up`; the API and the scheduler together in the split deployment);
3. queues a job while it is down (through the real app in this process, on the same
   database: as another API replica would);
4. restarts it and measures from that moment: `/healthz` answers 200, `/readyz` answers 200
   (404: this build has no /readyz), and the queued job's admission (its ADMITTED event);
5. SIGTERM: seconds until every control-plane process exited (killed after 60 s).

Targets (issue 17): first admission < 5 s after the control plane is healthy again; SIGTERM
stops it in < 10 s.

    .venv/bin/python bench/recovery.py [--repeats 3] [--modes single-host,split]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from controlplane.db.engine import make_engine, migrate  # noqa: E402
from controlplane.db.models import JobEvent  # noqa: E402
from controlplane.db.types import utcnow  # noqa: E402
from tests.integration.crash.harness import (  # noqa: E402
    Deployment,
    Processes,
    SingleHost,
    Split,
    answers,
    setup_client,
    setup_world,
    short_home,
    synthetic_job,
)

PG_URL = os.environ.get("NURI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
LIMIT_S = 120.0  # a figure not reached by then is reported as missing
POLL_S = 0.05


def pg_database() -> tuple[str, str]:
    name = f"nuri_bench_recovery_{uuid.uuid4().hex[:8]}"
    eng = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False), name


def drop_pg(name: str) -> None:
    eng = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


def admitted_at(engine: Any, job_id: str) -> datetime | None:
    with Session(engine) as s:
        ev = s.exec(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.to_status == "ADMITTED")
        ).first()
    return ev.at if ev is not None else None


def one_repetition(dep: Deployment, engine: Any, submit: Any) -> dict[str, Any]:
    if not dep.healthy():
        dep.start()
        dep.wait_healthy()
    warm = submit()
    deadline = time.monotonic() + LIMIT_S
    while admitted_at(engine, warm) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"{dep.name}: the warm-up job was never admitted\n{dep.logs()}")
        time.sleep(0.2)
    for part in ("both",) if isinstance(dep, Split) else ("up",):
        dep.kill(part)
    queued = submit()  # while the control plane is down
    restarted_wall, restarted = utcnow(), time.monotonic()
    dep.restart("both" if isinstance(dep, Split) else "up")
    out: dict[str, Any] = {"healthz": None, "readyz": None, "admit": None}
    while time.monotonic() - restarted < LIMIT_S and None in (out["admit"], out["healthz"]):
        now = time.monotonic() - restarted
        if out["healthz"] is None and answers(f"{dep.url}/healthz") == 200:
            out["healthz"] = now
        if out["readyz"] is None:
            code = answers(f"{dep.url}/readyz")
            if code == 200:
                out["readyz"] = now
            elif code == 404:
                out["readyz"] = "no /readyz"
        if out["admit"] is None:
            at = admitted_at(engine, queued)
            if at is not None:
                out["admit"] = (at - restarted_wall).total_seconds()
        time.sleep(POLL_S)
    deadline = time.monotonic() + LIMIT_S  # /readyz may come after the admission
    while out["readyz"] is None and time.monotonic() < deadline:
        code = answers(f"{dep.url}/readyz")
        if code in (200, 404):
            out["readyz"] = time.monotonic() - restarted if code == 200 else "no /readyz"
        time.sleep(POLL_S)
    out["sigterm"] = dep.sigterm()
    return out


def run_mode(mode: str, repeats: int) -> list[dict[str, Any]]:
    url, name = pg_database()
    home = short_home()
    (home / "logs").mkdir()
    engine = make_engine(url)
    migrate(engine)
    client = setup_client(engine, home)
    tokens = setup_world(client)
    procs = Processes(home, url, home / "logs")
    dep: Deployment = Split(procs) if mode == "split" else SingleHost(procs)

    def submit() -> str:
        resp = client.post(
            "/v1/jobs",
            headers={"Authorization": f"Bearer {tokens['beta']}"},
            json=synthetic_job(4, 8, "training"),
        )
        assert resp.status_code == 201, resp.text
        job_id: str = resp.json()["id"]
        return job_id

    results = []
    try:
        for i in range(repeats):
            r = one_repetition(dep, engine, submit)
            print(f"  {mode} #{i + 1}: {r}", flush=True)
            results.append(r)
    finally:
        dep.stop()
        engine.dispose()
        drop_pg(name)
        shutil.rmtree(home, ignore_errors=True)
    return results


def figure(values: list[Any]) -> str:
    """``median (worst)`` in seconds; a text value as it is; '-' when never reached."""
    texts = {v for v in values if isinstance(v, str)}
    if texts:
        return "/".join(sorted(texts))
    if any(v is None for v in values):
        return f"not in {LIMIT_S:.0f} s"
    return f"{statistics.median(values):.1f} ({max(values):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="single-host,split")
    args = p.parse_args()
    rows = {}
    for mode in args.modes.split(","):
        print(f"{mode}: {args.repeats} repetitions", flush=True)
        rows[mode] = run_mode(mode, args.repeats)
    print()
    print(
        "seconds, median (worst) over", args.repeats, "repetitions; from the restart unless noted"
    )
    head = (
        "deployment",
        "-> /healthz",
        "-> /readyz",
        "-> 1st admission",
        "healthz -> admit",
        "SIGTERM -> exit",
    )
    print(f"{head[0]:12} {head[1]:>13} {head[2]:>13} {head[3]:>17} {head[4]:>17} {head[5]:>16}")
    for mode, rs in rows.items():
        after = [
            r["admit"] - r["healthz"] if None not in (r["admit"], r["healthz"]) else None
            for r in rs
        ]
        cells = (
            figure([r["healthz"] for r in rs]),
            figure([r["readyz"] for r in rs]),
            figure([r["admit"] for r in rs]),
            figure(after),
            figure([r["sigterm"] for r in rs]),
        )
        print(
            f"{mode:12} {cells[0]:>13} {cells[1]:>13} {cells[2]:>17} {cells[3]:>17} {cells[4]:>16}"
        )
    print("targets: first admission < 5 s after healthy again; SIGTERM -> exit < 10 s")


if __name__ == "__main__":
    main()
