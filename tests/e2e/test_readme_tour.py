"""The README's tour, run as written against a real `nuri up --demo` (SQLite + local Ray)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import BIN, free_port, nuri_server

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(240)]


def tour_script() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A short tour", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))


@pytest.fixture
def nuri_up(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    port = free_port()
    env = {
        **os.environ,
        "NURI_HOME": str(tmp_path / ".nuri"),
        "RAY_AUTH_MODE": "disabled",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    env.pop("NURI_DATABASE_URL", None)
    env.pop("NURI_TOKEN", None)
    url = f"http://127.0.0.1:{port}"
    args = ["up", "--demo", "--port", str(port)]
    with nuri_server(args, port, env, tmp_path, tmp_path / "up.log"):
        yield url, env, tmp_path


def test_readme_tour_works_as_written(nuri_up: tuple[str, dict[str, str], Path]) -> None:
    url, env, cwd = nuri_up
    script = tour_script().replace("http://127.0.0.1:8000", url)
    assert "nuri admin members create" in script and "curl" in script
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"tour failed:\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    # The demo consortium is there, with /docs served.
    admin = {"Authorization": f"Bearer {(cwd / '.nuri' / 'admin-token').read_text().strip()}"}
    assert httpx.get(f"{url}/docs", timeout=5).status_code == 200
    members = httpx.get(f"{url}/v1/members", headers=admin, params={"limit": 100}).json()
    names = {m["name"] for m in members["items"]}
    assert {"arirang-telecom", "pacific-research", "jeju-lab"} <= names
    pools = {p["name"]: p for p in httpx.get(f"{url}/v1/pools", headers=admin).json()["items"]}
    assert pools["kr-seoul-h200"]["total_gpus"] == 64

    # Both of Minji's jobs exist, were submitted once each and are now cancelled.
    jobs = httpx.get(f"{url}/v1/jobs", headers=admin, params={"member": "jeju-lab"}).json()
    by_name = {j["name"]: j for j in jobs["items"]}
    assert set(by_name) == {"tour-lora", "tour-infer"}
    assert {j["status"] for j in jobs["items"]} == {"CANCELLED"}
    assert by_name["tour-lora"]["idempotency_key"] == "tour-lora-1"
    assert "exceeds_capacity" in done.stdout and "residency_denied" in done.stdout
    assert "insufficient_gpus" in done.stdout
    assert "residency.schedule.region" in done.stdout
    assert "FAILED" not in done.stdout + done.stderr
    assert (cwd / "audit-export" / "events.jsonl").exists()
