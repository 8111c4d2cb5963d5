"""The README's tour, run as written against a real `nuri up --demo` (SQLite + local Ray)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import BIN, free_port, nuri_server

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(720)]


def tour_script() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A short tour", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))


@pytest.fixture(scope="module")
def nuri_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """One `nuri up --demo` for the module: the tour (its own member, jeju-lab) and then the
    portal's default submission (the demo's hangang member)."""
    tmp_path = tmp_path_factory.mktemp("tour")
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
        timeout=600,
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

    # Both of Minji's jobs ran for real, once each, and succeeded.
    jobs = httpx.get(f"{url}/v1/jobs", headers=admin, params={"member": "jeju-lab"}).json()
    by_name = {j["name"]: j for j in jobs["items"]}
    assert set(by_name) == {"tour-lora", "tour-infer"}
    assert {j["status"] for j in jobs["items"]} == {"SUCCEEDED"}, jobs
    lora = by_name["tour-lora"]
    assert lora["idempotency_key"] == "tour-lora-1"
    assert lora["execution_plan"]["capacity"]["ranks"] == 2
    curve = httpx.get(f"{url}/v1/jobs/{lora['id']}/metrics", headers=admin).json()["items"]
    losses = [m["values"]["loss"] for m in curve if "loss" in m["values"]]
    assert losses[-1] < losses[0], losses
    # The artifacts inherit the data's label: Korean regions only, personal information.
    arts = httpx.get(f"{url}/v1/artifacts", headers=admin, params={"limit": 100}).json()
    mine = {a["job_id"]: a for a in arts["items"]}
    adapter, outputs = mine[lora["id"]], mine[by_name["tour-infer"]["id"]]
    assert adapter["kind"] == "adapter" and outputs["kind"] == "outputs"
    for art in (adapter, outputs):
        assert set(art["labels"]["allowed_regions"]) <= {"kr-seoul", "kr-daejeon"}
        assert art["labels"]["personal_info"] is True
    assert "exceeds_capacity" in done.stdout and "residency_denied" in done.stdout
    assert "weights_unavailable" in done.stdout and "invalid_config" in done.stdout
    assert "residency.schedule.region" in done.stdout
    assert "FAILED" not in done.stdout + done.stderr
    assert (cwd / "audit-export" / "events.jsonl").exists()


def test_the_portals_default_submission_runs_a_real_job(
    nuri_up: tuple[str, dict[str, str], Path],
) -> None:
    """The submit form as it comes (kind, model, GPUs untouched), with one of the demo's
    shipped datasets ticked: a real tiny job whose loss falls and whose artifact appears."""
    url, _env, cwd = nuri_up
    admin = {"Authorization": f"Bearer {(cwd / '.nuri' / 'admin-token').read_text().strip()}"}
    users = httpx.get(f"{url}/v1/users", headers=admin, params={"limit": 100}).json()["items"]
    researcher = next(u for u in users if u["email"] == "researcher@hangang.example")
    token = httpx.post(
        f"{url}/v1/tokens", headers=admin, json={"name": "portal", "user_id": researcher["id"]}
    ).json()["token"]
    with httpx.Client(base_url=url, timeout=60, follow_redirects=True) as browser:
        # The sign-in form's login-CSRF token, bound to the cookie that fetching it sets.
        form_page = browser.get("/portal/login").text
        sign_in = re.search(r'name="csrf" value="([0-9a-f]{64})"', form_page)
        assert sign_in is not None
        login = {"token": token, "csrf": sign_in.group(1)}
        assert browser.post("/portal/login", data=login).status_code == 200
        form = browser.get("/portal/jobs/new").text
        fields = dict(re.findall(r'<input[^>]*name="(\w+)" value="([^"]*)"', form))
        kind = re.search(r'<option value="(\w+)" selected>', form)
        assert kind is not None and fields["gpus"] == "1" and fields["model"] == "axk1-tiny"
        submitted = browser.post(
            "/portal/jobs/new",
            data={
                "csrf": fields["csrf"],
                "idempotency_key": fields["idempotency_key"],
                "kind": kind.group(1),
                "model": fields["model"],
                "gpus": fields["gpus"],
                "max_runtime_h": fields["max_runtime_h"],
                "priority_class": "research",
                "preemptible": "default",
                "inputs": "ko-encyclopedia",
            },
        )
        assert submitted.status_code == 200 and "/portal/jobs/job_" in str(submitted.url)
    job_id = str(submitted.url).rsplit("/", 1)[1]
    mine = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 420
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=mine, timeout=30).json()
        if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(2)
    assert job["status"] == "SUCCEEDED", job
    curve = httpx.get(f"{url}/v1/jobs/{job_id}/metrics", headers=mine, timeout=30).json()
    losses = [m["values"]["loss"] for m in curve["items"] if "loss" in m["values"]]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
    arts = httpx.get(f"{url}/v1/artifacts", headers=mine, timeout=30).json()["items"]
    art = next(a for a in arts if a["job_id"] == job_id)
    assert art["kind"] == "adapter" and art["sha256"]
