"""`nuri jobs logs [--follow]`, `nuri jobs watch` and progress output, against a real server
(uvicorn in a thread, SQLite) while another thread writes what the scheduler would."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import Result
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from controlplane import jobstate
from controlplane.cli.main import app
from controlplane.cli.session import console
from controlplane.db.models import Job, JobLog
from controlplane.jobstate import JobStatus as S
from controlplane.services import jobs as jobs_service
from tests.conftest import World, bearer, build_world, make_client

pytestmark = pytest.mark.timeout(180)

runner = CliRunner()
WAIT_S = 60  # generous bound for anything this machine does in the background


@dataclass
class Live:
    url: str
    world: World
    engine: Engine
    follow_polls: list[int]  # after_id of each cursor request the server answered

    @property
    def token(self) -> str:
        return self.world.a.user_token

    @property
    def job_id(self) -> str:
        return str(self.world.a.job["id"])


@pytest.fixture
def live(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    test_client = make_client(sqlite_engine)
    world = build_world(test_client)
    polls: list[int] = []
    real_logs = jobs_service.logs

    def counting_logs(*args: Any, **kwargs: Any) -> Any:
        after_id = args[5] if len(args) > 5 else kwargs.get("after_id")
        if after_id is not None:
            polls.append(after_id)
        return real_logs(*args, **kwargs)

    monkeypatch.setattr(jobs_service, "logs", counting_logs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(test_client.app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    until(lambda: srv.started or not thread.is_alive(), "the test server to start")
    assert srv.started, "the test server did not start"
    yield Live(f"http://127.0.0.1:{port}", world, sqlite_engine, polls)
    srv.should_exit = True
    thread.join(30)
    sock.close()


def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)  # poll interval


def nuri(live: Live, *args: str, **env: str) -> Result:
    base = {
        "NURI_URL": live.url,
        "NURI_TOKEN": live.token,
        "XDG_CONFIG_HOME": "/nonexistent",
        "COLUMNS": "250",
    }
    return runner.invoke(app, list(args), env={**base, **env})


def append(live: Live, lines: Sequence[str], attempt: int) -> None:
    with Session(live.engine) as s:
        for line in lines:
            s.add(JobLog(job_id=live.job_id, attempt=attempt, at=datetime.now(UTC), line=line))
        s.commit()


def move(live: Live, *steps: tuple[S, S]) -> None:
    with Session(live.engine) as s:
        for src, dst in steps:
            jobstate.transition(s, live.job_id, expected=src, to=dst, now=datetime.now(UTC))
        s.commit()


def test_logs_prints_the_tail_of_the_current_attempt(live: Live) -> None:
    append(live, ["one", "two [rank 0] {not markup}", "three"], attempt=1)
    r = nuri(live, "jobs", "logs", live.job_id, "--tail", "2")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["two [rank 0] {not markup}", "three"]
    r = nuri(live, "jobs", "logs", live.job_id, "--attempt", "2")
    assert r.exit_code == 0 and r.stdout == ""
    r = nuri(live, "jobs", "logs", "job_doesnotexist")
    assert r.exit_code == 1 and "404" in r.stderr


def test_follow_prints_each_new_line_once_and_exits_with_the_job(live: Live) -> None:
    """Lines stored while it runs, across a requeue to attempt 2, each printed once, in
    order; it ends by itself when the job fails, with a non-zero exit."""
    append(live, ["a1", "a2", "a3"], attempt=1)
    problems: list[BaseException] = []

    def scheduler_side() -> None:
        try:
            until(lambda: len(live.follow_polls) >= 1, "the follower's first poll")
            append(live, ["b1", "b2"], attempt=1)
            move(live, (S.QUEUED, S.ADMITTED), (S.ADMITTED, S.RUNNING))
            seen = len(live.follow_polls)
            until(lambda: len(live.follow_polls) > seen, "a poll after b1, b2")
            # Stored just before a requeue: the follower must still print b3 before c1.
            append(live, ["b3"], attempt=1)
            move(live, (S.RUNNING, S.QUEUED))
            append(live, ["c1"], attempt=2)
            seen = len(live.follow_polls)
            until(lambda: len(live.follow_polls) > seen, "a poll after c1")
            append(live, ["c2"], attempt=2)
        except BaseException as exc:  # reported by the test, not lost in the thread
            problems.append(exc)
        finally:  # whatever happened, the job ends, so the follower does too
            with Session(live.engine) as s:
                job = s.get(Job, live.job_id)
                assert job is not None
                status = S(job.status)
            steps = {
                S.QUEUED: [(S.QUEUED, S.ADMITTED), (S.ADMITTED, S.RUNNING)],
                S.ADMITTED: [(S.ADMITTED, S.RUNNING)],
            }.get(status, [])
            move(live, *steps, (S.RUNNING, S.FAILED))

    writer = threading.Thread(target=scheduler_side, daemon=True)
    writer.start()
    r = nuri(live, "jobs", "logs", live.job_id, "--tail", "2", "--follow", "--interval", "0.05")
    writer.join(WAIT_S)
    assert not problems, problems
    assert r.stdout.splitlines() == ["a2", "a3", "b1", "b2", "b3", "c1", "c2"], r.output
    assert "--- attempt 2 ---" in r.stderr
    assert f"{live.job_id} is FAILED" in r.stderr
    assert r.exit_code == 1
    assert "Traceback" not in r.output


def test_follow_of_a_finished_job_prints_the_rest_and_exits_zero(live: Live) -> None:
    append(live, [f"line {i}" for i in range(5)], attempt=1)
    move(live, (S.QUEUED, S.ADMITTED), (S.ADMITTED, S.RUNNING), (S.RUNNING, S.SUCCEEDED))
    r = nuri(live, "jobs", "logs", live.job_id, "-n", "1", "-f", "--interval", "0.05")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["line 4"]
    assert f"{live.job_id} is SUCCEEDED" in r.stderr


def ctrl_c_at(monkeypatch: pytest.MonkeyPatch, nth: int) -> list[float]:
    """Make the CLI's ``nth`` wait between polls (on the main thread) a Ctrl-C."""
    real_sleep, waits = time.sleep, []

    def sleep(seconds: float) -> None:
        if threading.current_thread() is not threading.main_thread():
            return real_sleep(seconds)
        waits.append(seconds)
        if len(waits) >= nth:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    return waits


def test_ctrl_c_stops_following_without_a_traceback(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctrl_c_at(monkeypatch, 1)
    append(live, ["only"], attempt=1)
    r = nuri(live, "jobs", "logs", live.job_id, "--follow")
    assert r.exit_code == 130
    assert r.stdout == "only\n"
    assert "Traceback" not in r.output and "Aborted" not in r.output


def test_after_id_is_a_cursor_and_tail_keeps_its_meaning(live: Live) -> None:
    append(live, [f"l{i}" for i in range(6)], attempt=1)
    url, headers = f"{live.url}/v1/jobs/{live.job_id}/logs", bearer(live.token)

    def get(**params: Any) -> list[dict[str, Any]]:
        resp = httpx.get(url, headers=headers, params=params, timeout=WAIT_S)
        assert resp.status_code == 200, resp.text
        return list(resp.json()["items"])

    every = get()
    assert [x["line"] for x in every] == [f"l{i}" for i in range(6)]
    ids = [x["id"] for x in every]
    assert ids == sorted(ids)
    assert [x["line"] for x in get(tail=2)] == ["l4", "l5"]  # without a cursor: the last 2
    assert [x["line"] for x in get(tail=2, after_id=ids[1])] == ["l2", "l3"]  # after: next 2
    assert get(after_id=ids[-1]) == []
    assert get(after_id=0, attempt=2) == []
    assert httpx.get(url, headers=headers, params={"after_id": -1}).status_code == 422


def test_watch_prints_one_table_when_not_a_terminal(live: Live) -> None:
    r = nuri(live, "jobs", "watch", "--interval", "0.1")
    assert r.exit_code == 0, r.output
    assert live.job_id in r.stdout and "QUEUED" in r.stdout
    assert "queue / progress" in r.stdout
    assert str(live.world.b.job["id"]) not in r.stdout  # another member's job
    assert "Ctrl-C" not in r.stdout  # one table, nothing to stop
    r = nuri(live, "jobs", "watch", "--status", "RUNNING")
    assert r.exit_code == 0 and live.job_id not in r.stdout


def test_watch_on_a_terminal_refreshes_until_ctrl_c(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "_force_terminal", True)
    waits = ctrl_c_at(monkeypatch, 3)
    r = nuri(live, "jobs", "watch", "--interval", "0.5")
    assert r.exit_code == 0, r.output
    assert waits == [0.5, 0.5, 0.5]  # refreshed twice, then stopped at the third wait
    assert live.job_id in r.stdout and "Ctrl-C to stop" in r.stdout
    assert "Traceback" not in r.output


def test_plan_progress_goes_to_stderr_and_json_stays_clean() -> None:
    args = ["plan", "--model", "axk1-tiny", "--json"]
    r = runner.invoke(app, args, env={"NURI_PROGRESS_AFTER_S": "0"})
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == "axk1-tiny"
    assert "planning inference of axk1-tiny" in r.stderr
    # Outside a terminal a step quicker than NURI_PROGRESS_AFTER_S says nothing at all.
    r = runner.invoke(app, args, env={"NURI_PROGRESS_AFTER_S": "600"})
    assert r.exit_code == 0 and r.stderr == "", r.output
