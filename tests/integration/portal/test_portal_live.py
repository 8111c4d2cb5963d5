"""The job pages' live parts over the real app and database (SQLite and PostgreSQL): the
fragments the browser polls, the whole-log download, scoping of both exactly like the page,
and the status badges' contrast in the stylesheet."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from controlplane.db.models import Job, JobEvent, JobLog, JobMetric, Pool, UsageRecord
from controlplane.jobstate import JobStatus
from controlplane.portal import live
from controlplane.portal.views import WEB_DIR
from tests.conftest import World
from tests.integration.portal.test_portal import browser, engine_session, signed_in

TRIGGER = 'hx-trigger="every 2s"'


def move(w: World, job_id: str, status: str, **values: object) -> None:
    """Put a job where the scheduler would have (the pages only read it)."""
    with engine_session(w) as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.status = status
        for key, value in values.items():
            setattr(job, key, value)
        s.add(job)
        s.commit()


def run_for_a_while(w: World, job_id: str, now: datetime) -> None:
    """Three steps of a running lora job (30 steps by default), two checkpoints, a log line,
    and an open usage record of 8 GPUs for the last half hour."""
    started = now - timedelta(minutes=30)
    move(w, job_id, "RUNNING", pool="kr-test-h200", started_at=started)
    with engine_session(w) as s:
        pool = s.exec(select(Pool).where(Pool.name == "kr-test-h200")).one()
        job = s.get(Job, job_id)
        assert job is not None
        s.add(
            UsageRecord(
                member_id=job.member_id,
                pool_id=pool.id,
                job_id=job_id,
                attempt=1,
                period="2026-Q4",
                started_at=started,
                gpus=8,
            )
        )
        for step in (1, 2, 3):
            s.add(JobMetric(job_id=job_id, attempt=1, at=now, step=step, values={"loss": 3 - step}))
        for step in (1, 2):
            s.add(
                JobEvent(
                    job_id=job_id,
                    at=now,
                    type="checkpoint",
                    message=f"checkpoint at step {step}",
                    details={"uri": "checkpoints", "step": step},
                )
            )
        s.add(JobLog(job_id=job_id, attempt=1, at=now, line="[rank 0] step 3 loss 0.5 <ok>"))
        s.commit()


def test_job_fragment_is_the_changing_parts_and_stops_asking_when_final(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    job_id = world.a.job["id"]
    queued = alpha.get(f"/portal/live/jobs/{job_id}")
    assert queued.status_code == 200
    assert queued.headers["content-security-policy"].startswith("default-src 'none'")
    assert queued.headers["cache-control"] == "no-store"
    body = queued.text
    # Only the fragment: no layout, no request card; the status block polls, the activity
    # comes out of band.
    assert "<html" not in body and "<nav" not in body and "Request</h2>" not in body
    assert f'hx-get="/portal/live/jobs/{job_id}" {TRIGGER}' in body
    assert 'id="job-activity" hx-swap-oob="true"' in body
    assert 'data-testid="status">QUEUED<' in body

    run_for_a_while(world, job_id, datetime.now(UTC))
    running = alpha.get(f"/portal/live/jobs/{job_id}").text
    assert 'data-testid="status">RUNNING<' in running and TRIGGER in running
    assert "Step 3 of 30, 10%" in running
    assert '<progress max="30" value="3"' in running
    assert re.search(r'data-testid="checkpoints">2 · last at step 2, ', running)
    assert re.search(r'data-testid="duration">30 min<', running)
    assert re.search(r'data-testid="gpu-hours">4\.0\d<', running)  # 8 GPUs for half an hour
    assert "[rank 0] step 3 loss 0.5 &lt;ok&gt;" in running  # escaped, in the log tail

    move(world, job_id, "SUCCEEDED", finished_at=datetime.now(UTC))
    final = alpha.get(f"/portal/live/jobs/{job_id}").text
    assert 'data-testid="status">SUCCEEDED<' in final
    assert "hx-trigger" not in final and "hx-get" not in final  # nothing asks again
    assert "Cancel job" not in final
    # The full page of a final job has no polling either, and still shows everything.
    full = alpha.get(f"/portal/jobs/{job_id}").text
    assert "hx-trigger" not in full and "Step 3 of 30, 10%" in full and "Request</h2>" in full


def test_job_page_names_its_inputs_and_offers_the_whole_log(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    job_id = world.a.job["id"]
    page = alpha.get(f"/portal/jobs/{job_id}").text
    name = world.a.dataset["name"]
    assert f'<a href="/portal/datasets" title="{world.a.dataset["id"]}">{name}</a>' in page
    assert f'href="/portal/jobs/{job_id}/log" download' in page
    assert 'data-testid="checkpoints">none yet<' in page
    assert f'hx-get="/portal/live/jobs/{job_id}" {TRIGGER}' in page  # a queued job polls
    # Skip link first in the body, to the main content.
    body = page.split("<body>", 1)[1].lstrip()
    assert body.startswith('<a class="skip" href="#main">') and '<main id="main"' in page
    assert '<label for="cancel-reason"' in page and 'id="cancel-reason"' in page


@pytest.mark.parametrize("path", ["/portal/live/jobs/{}", "/portal/jobs/{}/log"])
def test_another_members_job_is_a_404_like_a_missing_one(world: World, path: str) -> None:
    alpha = signed_in(world, world.a.user_token)
    foreign = world.b.job["id"]
    theirs = alpha.get(path.format(foreign))
    missing = alpha.get(path.format("job_missing"))
    assert theirs.status_code == missing.status_code == 404
    assert 'data-testid="error-code">not_found<' in theirs.text
    assert theirs.text.replace(foreign, "X") == missing.text.replace("job_missing", "X")
    assert "content-disposition" not in theirs.headers
    # The owner reads it.
    assert signed_in(world, world.b.user_token).get(path.format(foreign)).status_code == 200


def test_log_download_is_the_whole_log_of_every_attempt(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "LOG_BATCH", 2)  # several batches: none lost, none repeated
    job_id = world.a.job["id"]
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    lines = [(1, "[rank 0] starting"), (1, "[rank 0] step 1 <b>&"), (1, "[rank 0] preempted")]
    lines += [(2, "[rank 0] resumed at step 1"), (2, "[rank 0] done 한국어")]
    with engine_session(world) as s:
        for attempt, line in lines:
            s.add(JobLog(job_id=job_id, attempt=attempt, at=at, line=line))
        s.commit()
    resp = signed_in(world, world.a.user_token).get(f"/portal/jobs/{job_id}/log")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.headers["content-disposition"] == f'attachment; filename="{job_id}.log"'
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["cache-control"] == "no-store"
    stamp = "2026-11-02 09:00:00 UTC"
    assert resp.text.splitlines() == [
        "# attempt 1",
        *(f"{stamp} {line}" for _, line in lines[:3]),
        "# attempt 2",
        *(f"{stamp} {line}" for _, line in lines[3:]),
    ]
    # A job with no log yet: an empty file, not an error.
    empty = signed_in(world, world.b.user_token).get(f"/portal/jobs/{world.b.job['id']}/log")
    assert empty.status_code == 200 and empty.text == ""


def test_jobs_list_fragment_is_scoped_and_polls_while_something_can_change(
    world: World,
) -> None:
    alpha = signed_in(world, world.a.user_token)
    active = alpha.get("/portal/live/jobs?show=active")
    assert active.status_code == 200 and "<html" not in active.text
    assert f'data-job="{world.a.job["id"]}"' in active.text
    assert world.b.job["id"] not in active.text
    assert 'hx-get="/portal/live/jobs?show=active"' in active.text and TRIGGER in active.text
    finished = alpha.get("/portal/live/jobs?show=finished").text
    assert "hx-trigger" not in finished and 'data-testid="no-jobs"' in finished
    # The full list has the same region, polling.
    assert 'id="jobs-live" hx-get="/portal/live/jobs?show=active"' in alpha.get("/portal/jobs").text


def test_a_poll_without_a_session_sends_the_whole_page_to_sign_in(world: World) -> None:
    anonymous = browser(world)
    here = f"http://testserver/portal/jobs/{world.a.job['id']}"
    resp = anonymous.get(
        f"/portal/live/jobs/{world.a.job['id']}",
        headers={"HX-Request": "true", "HX-Current-URL": here},
    )
    assert resp.status_code == 401 and resp.text == ""
    assert resp.headers["hx-redirect"] == (
        f"/portal/login?next=%2Fportal%2Fjobs%2F{world.a.job['id']}"
    )
    # Without htmx (a plain request) it is the usual redirect.
    plain = anonymous.get(f"/portal/live/jobs/{world.a.job['id']}")
    assert plain.status_code == 303


# -- contrast of the status badges (WCAG 2.x AA: 4.5:1 for normal text) ---------------------


def luminance(hex_colour: str) -> float:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    channels = [int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def badge_colours(css: str) -> dict[str, tuple[str, str]]:
    """(text, background) of every ``.s-<status>`` badge class, variables resolved, falling
    back to the ``.status`` rule for whichever of the two a badge does not set."""
    variables = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{3,6})", css))

    def resolve(value: str) -> str:
        found = re.fullmatch(r"var\(--([\w-]+)\)", value.strip())
        return variables[found.group(1)] if found else value.strip()

    def props(body: str) -> dict[str, str]:
        pairs = (p.split(":", 1) for p in body.split(";") if ":" in p)
        return {k.strip(): resolve(v) for k, v in pairs}

    rules = re.findall(r"([^{}]+)\{([^}]*)\}", css)
    base = next(props(body) for sel, body in rules if sel.strip() == ".status")
    badges: dict[str, tuple[str, str]] = {}
    for selectors, body in rules:
        for sel in selectors.split(","):
            name = re.fullmatch(r"\s*\.(s-[a-z]+)\s*", sel)
            if name:
                p = {**base, **badges_props(badges, name.group(1)), **props(body)}
                badges[name.group(1)] = (p["color"], p["background"])
    return badges


def badges_props(badges: dict[str, tuple[str, str]], name: str) -> dict[str, str]:
    if name not in badges:
        return {}
    colour, background = badges[name]
    return {"color": colour, "background": background}


def test_status_badges_have_at_least_4_5_to_1_contrast() -> None:
    css = Path(WEB_DIR / "static" / "portal.css").read_text()
    badges = badge_colours(css)
    # Every job status has its badge (a new status must not fall back unnoticed).
    assert {f"s-{s.value.lower()}" for s in JobStatus} <= set(badges)
    low = {
        name: round(contrast(fg, bg), 2)
        for name, (fg, bg) in badges.items()
        if contrast(fg, bg) < 4.5
    }
    assert low == {}, f"badges below 4.5:1: {low}"
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)  # the formula itself
