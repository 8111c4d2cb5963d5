"""The `nuri` CLI against a real server (uvicorn in a thread, SQLite)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from controlplane.cli.main import app
from controlplane.db.engine import make_engine
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, KEY_DIR, make_client

MEMBER = "jeju-lab"

runner = CliRunner()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    engine = make_engine(f"sqlite:///{tmp_path / 'nuri.db'}")
    api = make_client(engine).app
    # The server gets a socket already bound to a free port: no other process can take the
    # port between choosing it and listening on it.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60  # generous: a loaded machine starts the app slowly
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval
    assert srv.started, "the test server did not start"
    yield url
    srv.should_exit = True
    thread.join(30)
    sock.close()
    engine.dispose()


def nuri(url: str, token: str | None, *args: str, config_home: Path | None = None):
    env = {"NURI_URL": url, "XDG_CONFIG_HOME": str(config_home or "/nonexistent"), "COLUMNS": "250"}
    env["NURI_TOKEN"] = token or ""
    return runner.invoke(app, list(args), env=env)


def test_admin_and_member_workflow(server: str, tmp_path: Path) -> None:
    r = nuri(
        server,
        ADMIN_TOKEN,
        "admin",
        "pools",
        "create",
        "kr-test-h100",
        "--gpu-model",
        "H100",
        "--gpu-memory-gib",
        "80",
        "--gpus-per-node",
        "8",
        "--site",
        "Daejeon",
        "--region",
        "kr-daejeon",
        "--jurisdiction",
        "KR",
        "--node-count",
        "2",
    )
    assert r.exit_code == 0, r.output
    assert (
        nuri(
            server,
            ADMIN_TOKEN,
            "admin",
            "members",
            "create",
            "jeju-lab",
            "--display-name",
            "Jeju Lab",
        ).exit_code
        == 0
    )
    r = nuri(
        server,
        ADMIN_TOKEN,
        "admin",
        "quotas",
        "set",
        "--member",
        "jeju-lab",
        "--pool",
        "kr-test-h100",
        "--nominal",
        "8",
    )
    assert r.exit_code == 0, r.output
    r = nuri(
        server,
        ADMIN_TOKEN,
        "admin",
        "quotas",
        "set",
        "--member",
        "jeju-lab",
        "--pool",
        "kr-test-h100",
        "--nominal",
        "16",
        "--json",
    )
    assert r.exit_code == 0 and '"nominal_gpus": 16' in r.output, r.output
    assert (
        nuri(
            server,
            ADMIN_TOKEN,
            "admin",
            "users",
            "create",
            "minji@jeju.example",
            "--name",
            "Minji",
            "--member",
            "jeju-lab",
        ).exit_code
        == 0
    )
    r = nuri(
        server,
        ADMIN_TOKEN,
        "admin",
        "tokens",
        "create",
        "laptop",
        "--user",
        "minji@jeju.example",
        "-q",
    )
    assert r.exit_code == 0, r.output
    token = r.output.strip()
    assert token.startswith("nuri_")

    # Her data, in her member's data directory, registered and fingerprinted.
    data = Settings(home=KEY_DIR).resolved_data_dir / MEMBER / "notes.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text('{"text": "제주 바람"}\n{"prompt": "안녕"}\n', encoding="utf-8")
    labels = '{"jurisdiction": "KR", "allowed_regions": ["kr-seoul", "kr-daejeon"]}'
    uri = data.as_uri()
    r = nuri(server, token, "datasets", "create", "notes", "--uri", uri, "--labels", labels)
    assert r.exit_code == 0 and "sha256" in r.output, r.output

    spec = tmp_path / "job.yaml"
    spec.write_text(
        "kind: finetune\nmodel: axk1-tiny\ngpus: 16\nname: from-yaml\n"
        "allowed_pools: [kr-test-h100]\ninputs: [notes]\n"
    )
    r = nuri(server, token, "submit", "-f", str(spec), "--max-runtime", "2h", "-q")
    assert r.exit_code == 0, r.output
    yaml_job = r.output.strip()
    r = nuri(
        server,
        token,
        "submit",
        "--kind",
        "inference",
        "--model",
        "axk1-tiny",
        "--gpus",
        "1",
        "--name",
        "flags",
        "--input",
        "notes",
        "--set",
        "max_new_tokens=8",
        "--set",
        "think=true",
    )
    assert r.exit_code == 0 and "submitted job_" in r.output, r.output
    # A knob that is not one of the kind's is refused, naming the allowed ones.
    r = nuri(
        server,
        token,
        "submit",
        "--kind",
        "inference",
        "--model",
        "axk1-tiny",
        "--gpus",
        "1",
        "--input",
        "notes",
        "--set",
        "steps=3",
    )
    assert r.exit_code == 1 and "invalid_config" in r.output and "max_new_tokens" in r.output

    r = nuri(server, token, "jobs", "list")
    assert r.exit_code == 0 and "from-yaml" in r.output and "flags" in r.output
    r = nuri(server, token, "jobs", "get", yaml_job, "--json")
    assert '"max_runtime_s": 7200' in r.output and '"nodes": 2' in r.output
    r = nuri(server, token, "jobs", "cancel", yaml_job, "--reason", "changed my mind")
    assert r.exit_code == 0 and "CANCELLED" in r.output
    r = nuri(server, token, "jobs", "events", yaml_job)
    assert "changed my mind" in r.output
    r = nuri(server, token, "jobs", "cancel", yaml_job)
    assert r.exit_code == 1
    assert "409 invalid_transition" in r.output
    r = nuri(server, token, "jobs", "list", "--status", "QUEUED", "-q")
    assert r.output.split() and yaml_job not in r.output


def test_login_saves_a_private_config(server: str, tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        ["login", "--url", server, "--token", "nuri_wrong"],
        env={"XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert r.exit_code == 1 and "401 unauthenticated" in r.output
    r = runner.invoke(
        app,
        ["login", "--url", server, "--token", ADMIN_TOKEN],
        env={"XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "nuri" / "config.json"
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600
    r = runner.invoke(
        app, ["whoami"], env={"XDG_CONFIG_HOME": str(tmp_path), "NURI_TOKEN": "", "NURI_URL": ""}
    )
    assert r.exit_code == 0 and "platform_admin" in r.output, r.output


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["submit", "--kind", "lora"], 2, "missing model, gpus"),
        (["submit", "-f", "/nonexistent.yaml"], 2, "cannot read"),
        (
            ["submit", "--kind", "lora", "--model", "axk1", "--gpus", "1", "--max-runtime", "soon"],
            2,
            "duration",
        ),
        (
            ["submit", "--kind", "lora", "--model", "axk1", "--gpus", "9999"],
            1,
            "403 member_required",
        ),
        (["jobs", "get", "job_nope"], 1, "404 not_found"),
        (["admin", "members", "create", "Bad Name", "--display-name", "x"], 1, "validation_error"),
    ],
)
def test_errors_are_clear_with_nonzero_exit(
    server: str, args: list[str], code: int, needle: str
) -> None:
    r = nuri(server, ADMIN_TOKEN, *args)
    assert r.exit_code == code, r.output
    assert needle in r.output
    assert "Traceback" not in r.output


def test_not_logged_in_and_unreachable(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["jobs", "list"], env={"XDG_CONFIG_HOME": str(tmp_path), "NURI_TOKEN": ""}
    )
    assert r.exit_code == 2 and "not logged in" in r.output
    r = nuri("http://127.0.0.1:9", ADMIN_TOKEN, "jobs", "list")
    assert r.exit_code == 1 and "cannot reach Nuri" in r.output


def test_audit_verify_and_export(server: str, tmp_path: Path) -> None:
    assert (
        nuri(
            server,
            ADMIN_TOKEN,
            "admin",
            "members",
            "create",
            "audit-lab",
            "--display-name",
            "Audit Lab",
        ).exit_code
        == 0
    )
    r = nuri(server, ADMIN_TOKEN, "audit", "checkpoint")
    assert r.exit_code == 0 and "signed" in r.output, r.output
    r = nuri(server, ADMIN_TOKEN, "audit", "verify")
    assert r.exit_code == 0 and "platform" in r.output, r.output
    r = nuri(server, ADMIN_TOKEN, "audit", "events", "--json")
    assert r.exit_code == 0 and "member.create" in r.output
    out = tmp_path / "export"
    r = nuri(server, ADMIN_TOKEN, "audit", "export", "--out", str(out))
    assert r.exit_code == 0, r.output
    r = nuri(server, None, "audit", "verify", "--offline", str(out))
    assert r.exit_code == 0, r.output
    events = (out / "events.jsonl").read_text().replace("member.create", "member.delete")
    (out / "events.jsonl").write_text(events)
    r = nuri(server, None, "audit", "verify", "--offline", str(out))
    assert r.exit_code == 1 and "FAILED" in r.output and "first bad seq" in r.output
    r = nuri(server, None, "audit", "verify", "--offline", str(tmp_path / "nothing"))
    assert r.exit_code == 2 and "not an audit export" in r.output


def test_audit_export_of_any_text_verifies_offline(server: str, tmp_path: Path) -> None:
    """Unicode line boundaries (U+2028, U+2029, NEL ...) in an audited field, and a request
    id whose header bytes hold NEL (0x85, read as Latin-1), export and verify offline."""
    name = "Lab\u2028\x85\u2029\x0b\x0c\x1c\x00\U0001f600 Name"
    resp = httpx.post(
        f"{server}/v1/members",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Request-ID": b"req\x85\xa0z"},
        json={"name": "text-lab", "display_name": name},
    )
    assert resp.status_code == 201, resp.text
    out = tmp_path / "export"
    r = nuri(server, ADMIN_TOKEN, "audit", "export", "--out", str(out))
    assert r.exit_code == 0, r.output
    r = nuri(server, None, "audit", "verify", "--offline", str(out))
    assert r.exit_code == 0, r.output
    events = [json.loads(x) for x in (out / "events.jsonl").read_bytes().splitlines()]
    created = next(e for e in events if e["action"] == "member.create")
    assert created["details"]["display_name"] == name
    assert created["request_id"] == "req\x85\xa0z"


def test_policy_admin_commands(server: str, tmp_path: Path) -> None:
    r = nuri(server, ADMIN_TOKEN, "admin", "policies", "show", "--json")
    assert r.exit_code == 0 and '"source": "shipped"' in r.output
    bad = tmp_path / "bad.cedar"
    bad.write_text("permit(principal, action, resource")
    r = nuri(server, ADMIN_TOKEN, "admin", "policies", "upload", str(bad))
    assert r.exit_code == 1 and "policy_set_invalid" in r.output
    r = nuri(server, ADMIN_TOKEN, "admin", "policies", "upload", str(tmp_path / "none.cedar"))
    assert r.exit_code == 2 and "cannot read" in r.output
    from policies.policy_set import shipped_sources

    good = tmp_path / "good.cedar"
    good.write_text("\n".join(shipped_sources()[0].values()))
    r = nuri(
        server,
        ADMIN_TOKEN,
        "admin",
        "policies",
        "upload",
        str(good),
        "--note",
        "same",
        "--activate",
        "--json",
    )
    assert r.exit_code == 0 and '"active": true' in r.output, r.output
    r = nuri(server, ADMIN_TOKEN, "admin", "policies", "list")
    assert r.exit_code == 0 and "same" in r.output
    r = nuri(server, ADMIN_TOKEN, "admin", "policies", "revert", "--json")
    assert r.exit_code == 0 and '"source": "shipped"' in r.output


def test_usage_report_table_and_csv(server: str) -> None:
    r = nuri(server, ADMIN_TOKEN, "admin", "usage", "--period", "2026-11")
    assert r.exit_code == 0, r.output
    assert "usage 2026-11: 0 GPU-hours" in r.output.replace("0.0", "0")
    r = nuri(server, ADMIN_TOKEN, "admin", "usage", "--period", "2026-Q4", "--csv")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == ["member,pool,jobs,attempts,gpu_hours,running_attempts"]
    r = nuri(server, ADMIN_TOKEN, "admin", "usage", "--period", "2026-13", "--csv")
    assert r.exit_code != 0 and "bad month" in r.output
