"""The portal's jobs list over the real app and database (SQLite and PostgreSQL): search and
filters that only narrow the caller's scope, sort orders, pages both ways, duration and
GPU-hours per job, bad parameters as a page, bulk cancel behind a confirmation (another
member's ids refused like missing ones), and Clone into a prefilled submit form."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from controlplane.db.models import Pool, UsageRecord
from controlplane.portal import jobs_list, notices
from tests.conftest import World, bearer, ok
from tests.integration.portal.test_portal import csrf, engine_session, signed_in
from tests.integration.portal.test_portal_live import move

ROW = re.compile(r'<tr data-job="([^"]+)"')


def submit(w: World, token: str, name: str, **body: Any) -> str:
    """A job of alpha's (``token`` is one of alpha's users) reading alpha's dataset."""
    job = {"kind": "lora", "model": "axk1-tiny", "gpus": 1, "name": name, **body}
    job.setdefault("inputs", [w.a.dataset["id"]])
    made: dict[str, Any] = ok(w.client.post("/v1/jobs", headers=bearer(token), json=job), 201)
    return str(made["id"])


def listed(client: TestClient, url: str) -> list[str]:
    """The job ids a list page (or fragment) shows, in order."""
    resp = client.get(url)
    assert resp.status_code == 200, resp.text
    return ROW.findall(resp.text)


def status_of(w: World, job_id: str) -> str:
    return str(ok(w.client.get(f"/v1/jobs/{job_id}", headers=w.root))["status"])


def used(w: World, job_id: str, gpus: int, started: datetime, ended: datetime | None) -> None:
    """A usage record of one attempt, as the scheduler writes it (closed ones have a total)."""
    with engine_session(w) as s:
        pool = s.exec(select(Pool).where(Pool.name == "kr-test-h200")).one()
        member = ok(w.client.get(f"/v1/jobs/{job_id}", headers=w.root))["member_id"]
        seconds = (ended - started).total_seconds() * gpus if ended else 0.0
        s.add(
            UsageRecord(
                member_id=member,
                pool_id=pool.id,
                job_id=job_id,
                attempt=1,
                period="2026-12",
                started_at=started,
                ended_at=ended,
                gpus=gpus,
                gpu_seconds=seconds,
            )
        )
        s.commit()


def without(text: str, *values: str) -> str:
    """The page with the given values (as typed and as in a URL) and its tokens left out."""
    for value in values:
        text = text.replace(value, "X").replace(quote_plus(value), "X")
    return re.sub(r'name="(csrf|confirm)" value="[0-9a-f]{64}"', "", text)


def test_search_and_filters_narrow_the_callers_own_jobs(world: World) -> None:
    a, b = world.a, world.b
    first = a.job["id"]
    nightly = submit(world, a.user_token, "Nightly-eval", kind="inference")
    sweep = submit(world, a.admin_token, "admin-sweep")
    move(world, nightly, "RUNNING", pool="kr-test-h200", started_at=datetime.now(UTC))
    alpha = signed_in(world, a.user_token)
    base = "/portal/jobs?show=all"

    assert set(listed(alpha, base)) == {first, nightly, sweep}  # beta's job is never here
    assert listed(alpha, f"{base}&q=nightly") == [nightly]  # any case, part of the name
    assert listed(alpha, f"{base}&q={first[-10:]}") == [first]  # part of the id
    assert listed(alpha, f"{base}&q=%25") == []  # a LIKE wildcard is a character, not "all"
    assert listed(alpha, f"{base}&status=running") == [nightly]
    assert listed(alpha, "/portal/jobs?show=finished&status=RUNNING") == [nightly]
    assert listed(alpha, f"{base}&kind=inference") == [nightly]
    assert listed(alpha, f"{base}&pool=kr-test-h200") == [nightly]
    assert set(listed(alpha, f"{base}&submitter=me")) == {first, nightly}
    assert listed(alpha, f"{base}&submitter=ADMIN@alpha.example") == [sweep]

    # Another member's submitter or member name finds what an unknown one does: nothing,
    # on a page that is the same but for the typed value.
    for name, foreign, unknown in (
        ("submitter", b.user["email"], "nobody@nowhere.example"),
        ("member", "beta", "gamma"),
    ):
        theirs = alpha.get(f"{base}&{name}={foreign}")
        missing = alpha.get(f"{base}&{name}={unknown}")
        assert theirs.status_code == missing.status_code == 200
        assert 'data-testid="no-jobs">No jobs match these filters.<' in theirs.text
        assert without(theirs.text, foreign) == without(missing.text, unknown)
    assert set(listed(alpha, f"{base}&member=alpha")) == {first, nightly, sweep}
    assert 'id="f-member"' not in alpha.get(base).text  # a member user picks no member

    # An auditor reads every member and narrows to one with the labelled member control.
    auditor = signed_in(world, world.auditor_token)
    page = auditor.get(base).text
    assert '<label for="f-member">Member</label>' in page and '<option value="beta"' in page
    assert listed(auditor, f"{base}&member=beta") == [b.job["id"]]
    assert "bulk-cancel" not in page  # read-only: no boxes, no button


def test_sort_orders_pages_both_ways_and_run_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha = signed_in(world, world.a.user_token)
    first = world.a.job["id"]  # named lora-axk1-tiny, 8 GPUs, queued
    names = {submit(world, world.a.user_token, n): n for n in ("c-job", "a-job", "b-job")}
    ids = {n: i for i, n in names.items()}
    now = datetime.now(UTC)
    # b-job ran 2 h on 4 GPUs (closed); c-job runs for half an hour on 8 GPUs (open).
    move(world, ids["b-job"], "SUCCEEDED", started_at=now - timedelta(hours=3), finished_at=now)
    used(world, ids["b-job"], 4, now - timedelta(hours=3), now - timedelta(hours=1))
    move(world, ids["c-job"], "RUNNING", pool="kr-test-h200", started_at=now)
    used(world, ids["c-job"], 8, now - timedelta(minutes=30), None)
    base = "/portal/jobs?show=all"

    by_name = [ids["a-job"], ids["b-job"], ids["c-job"], first]
    assert listed(alpha, f"{base}&sort=name&order=asc") == by_name
    assert listed(alpha, f"{base}&sort=name&order=desc") == by_name[::-1]
    newest = listed(alpha, base)
    assert newest == [ids["b-job"], ids["a-job"], ids["c-job"], first]  # submitted, desc
    assert listed(alpha, f"{base}&order=asc") == newest[::-1]
    # Status in the lifecycle's order: queued, ..., running, ..., succeeded.
    by_status = listed(alpha, f"{base}&sort=status&order=asc")
    assert by_status[2:] == [ids["c-job"], ids["b-job"]]
    # Run time: the database sorts by what the page shows; never-run jobs come last.
    assert listed(alpha, f"{base}&sort=gpu_hours")[:2] == [ids["b-job"], ids["c-job"]]
    assert listed(alpha, f"{base}&sort=duration")[:2] == [ids["b-job"], ids["c-job"]]
    assert listed(alpha, f"{base}&sort=duration&order=asc")[:2] == [ids["c-job"], ids["b-job"]]
    page = alpha.get(f"{base}&sort=name&order=asc").text
    rows = {
        m.group(1): m.group(2) for m in re.finditer(r'data-job="([^"]+)"(.*?)</tr>', page, re.S)
    }
    assert re.search(r'data-testid="duration">2\.0 h<', rows[ids["b-job"]])
    assert re.search(r'data-testid="gpu-hours">8\.00<', rows[ids["b-job"]])
    assert re.search(r'data-testid="duration">30 min<', rows[ids["c-job"]])
    assert re.search(r'data-testid="gpu-hours">4\.0\d<', rows[ids["c-job"]])
    assert re.search(r'data-testid="duration">-<', rows[first])
    assert 'aria-sort="ascending"><a href="/portal/jobs?show=all&amp;sort=name">' in page

    # Two to a page: forwards, then back, and nothing lost or repeated.
    monkeypatch.setattr(jobs_list, "PAGE_SIZE", 2)
    one = alpha.get(f"{base}&sort=name&order=asc").text
    assert ROW.findall(one) == by_name[:2] and 'data-testid="prev"' not in one
    nxt = re.search(r'<a href="([^"]+)" rel="next" data-testid="next">Next page →', one)
    assert nxt, one
    two = alpha.get(nxt.group(1).replace("&amp;", "&")).text
    assert ROW.findall(two) == by_name[2:] and 'data-testid="next"' not in two
    prev = re.search(r'<a href="([^"]+)" rel="prev" data-testid="prev">← Previous page', two)
    assert prev and listed(alpha, prev.group(1).replace("&amp;", "&")) == by_name[:2]
    # Newest first, the links say newer and older.
    older = alpha.get(f"{base}&page=2").text
    assert "← Newer jobs" in older and "Older jobs →" not in older
    assert ROW.findall(older) == newest[2:]
    assert 'data-testid="no-jobs">No jobs on page 9.<' in alpha.get(f"{base}&page=9").text

    # The live refresh asks for the same filters, sort and page, and gets the same rows.
    asked = f"{base}&q=-job&sort=name&order=asc&page=2"
    fragment = "/portal/live/jobs?show=all&amp;q=-job&amp;sort=name&amp;order=asc&amp;page=2"
    assert f'id="jobs-live" hx-get="{fragment}" hx-trigger="every 2s"' in alpha.get(asked).text
    live = fragment.replace("&amp;", "&")
    assert listed(alpha, live) == listed(alpha, asked) == [ids["c-job"]]


BAD = [
    ("status=BOGUS", "status"),
    ("kind=teleport", "kind"),
    ("pool=nowhere", "pool"),
    ("sort=cost", "sort"),
    ("order=sideways", "order"),
    ("show=some", "show"),
    ("page=0", "page"),
    ("page=abc", "page"),
    ("page=%D9%A3", "page"),  # an Arabic-Indic three
    ("page=99999999999999999999999", "page"),
    ("q=" + "x" * 201, "q"),
]


def test_bad_parameters_are_a_page_that_says_what_is_wrong(sqlite_world: World) -> None:
    alpha = signed_in(sqlite_world, sqlite_world.a.user_token)
    for query, named in BAD:
        for path in ("/portal/jobs", "/portal/live/jobs"):
            resp = alpha.get(f"{path}?{query}")
            assert resp.status_code == 400, (query, resp.text)
            errors = re.search(r'data-testid="form-errors">(.*?)</div>', resp.text, re.S)
            assert errors and f"<li>{named}: " in errors.group(1), (query, resp.text)
            assert "data-job=" not in resp.text and "hx-trigger" not in resp.text
        # The filter form is still there to fix it.
        assert 'data-testid="job-filters"' in alpha.get(f"/portal/jobs?{query}").text


def test_bulk_cancel_confirms_then_cancels_only_what_the_caller_may(world: World) -> None:
    a, b = world.a, world.b
    mine, theirs = a.job["id"], b.job["id"]
    colleagues = submit(world, a.admin_token, "admin-sweep")
    done = submit(world, a.user_token, "already-done")
    move(world, done, "SUCCEEDED", finished_at=datetime.now(UTC))
    alpha = signed_in(world, a.user_token)
    page = alpha.get("/portal/jobs?show=all").text
    # Boxes only where this user may cancel: their own unfinished jobs.
    assert f'id="pick-{mine}"' in page and 'form="bulk-cancel"' in page
    assert f'id="pick-{colleagues}"' not in page and f'id="pick-{done}"' not in page
    token = csrf(alpha)
    picked = [mine, colleagues, done, theirs, "job_missing"]
    form = {"csrf": token, "job": picked, "back": "show=all&sort=name", "reason": "wrong data"}

    # Without the session's CSRF token: refused, nothing asked, nothing changed.
    forged = alpha.post("/portal/jobs/bulk-cancel", data={**form, "csrf": "0" * 64})
    assert forged.status_code == 403

    # First post: a confirmation naming only the job it will cancel; nothing changes.
    asked = alpha.post("/portal/jobs/bulk-cancel", data=form)
    assert asked.status_code == 200 and 'data-testid="confirm"' in asked.text
    listing = re.search(r'data-testid="confirm-jobs">(.*?)</ul>', asked.text, re.S)
    assert listing and mine in listing.group(1)
    assert all(j not in listing.group(1) for j in (colleagues, done, theirs))
    assert "4 of the selected jobs are already finished or not ones you may cancel" in asked.text
    assert status_of(world, mine) == "QUEUED"
    # Another member's id reads exactly like a missing one.
    swap = {**form, "job": [mine, theirs]}
    gone = {**form, "job": [mine, "job_missing"]}
    one = alpha.post("/portal/jobs/bulk-cancel", data=swap).text
    other = alpha.post("/portal/jobs/bulk-cancel", data=gone).text
    assert without(one, theirs) == without(other, "job_missing")

    # The confirmation's button: cancels what it listed, back to the same filtered list.
    confirm = re.search(r'name="confirm" value="([0-9a-f]{64})"', asked.text)
    hidden = r'type="hidden" name="(jobs|back|reason)" value="([^"]*)"'
    carried = {k: html.unescape(v) for k, v in re.findall(hidden, asked.text)}
    assert confirm and carried["jobs"] == ",".join(sorted(picked))
    resp = alpha.post(
        "/portal/jobs/bulk-cancel", data={"csrf": token, "confirm": confirm.group(1), **carried}
    )
    assert resp.status_code == 303
    assert resp.headers["location"] == "/portal/jobs?show=all&sort=name"
    after = alpha.get(resp.headers["location"]).text
    said = re.search(r'data-testid="flash">([^<]*)<', after)
    assert said and said.group(1) == (
        "1 job was cancelled; it checkpoints and stops. 4 jobs were left as they were "
        "(already finished, or not a job you may cancel)."
    )
    assert 'data-testid="flash"' not in alpha.get("/portal/jobs").text  # said once
    assert status_of(world, mine) == "CANCELLED"
    assert [status_of(world, j) for j in (colleagues, done, theirs)] == [
        "QUEUED",
        "SUCCEEDED",
        "QUEUED",
    ]
    events = ok(world.client.get(f"/v1/jobs/{mine}/events", headers=world.root))["items"]
    assert any("wrong data" in e["message"] for e in events)

    # A member admin cancels any of the member's jobs; a count nobody signed says nothing.
    admin = signed_in(world, a.admin_token)
    data = {"csrf": csrf(admin), "job": [colleagues]}
    asked = admin.post("/portal/jobs/bulk-cancel", data=data)
    confirm = re.search(r'name="confirm" value="([0-9a-f]{64})"', asked.text)
    assert confirm
    admin.post("/portal/jobs/bulk-cancel", data={**data, "confirm": confirm.group(1)})
    assert status_of(world, colleagues) == "CANCELLED"
    said = re.search(r'data-testid="flash">([^<]*)<', admin.get("/portal/jobs").text)
    assert said and said.group(1) == "1 job was cancelled; it checkpoints and stops."
    admin.cookies.set(notices.FLASH_COOKIE, "jobs_cancelled-99-0." + "0" * 32, path="/portal")
    assert 'data-testid="flash"' not in admin.get("/portal/jobs").text

    # An auditor changes nothing, whatever it posts.
    auditor = signed_in(world, world.auditor_token)
    refused = auditor.post(
        "/portal/jobs/bulk-cancel", data={"csrf": csrf(auditor), "job": [theirs]}
    )
    assert refused.status_code == 403 and status_of(world, theirs) == "QUEUED"


def test_clone_opens_the_submit_form_prefilled_as_a_new_job(sqlite_world: World) -> None:
    world = sqlite_world
    a = world.a
    source = submit(
        world,
        a.user_token,
        "tuned",
        gpus=2,
        inputs=[a.dataset["id"]],
        allowed_pools=["kr-test-h200"],
        config={"steps": 7, "lora_rank": 4},
        max_runtime_s=5400,
    )
    alpha = signed_in(world, a.user_token)
    assert f'href="/portal/jobs/{source}/clone"' in alpha.get(f"/portal/jobs/{source}").text
    assert f'href="/portal/jobs/{source}/clone"' in alpha.get("/portal/jobs").text
    opened = alpha.get(f"/portal/jobs/{source}/clone")
    assert opened.status_code == 303
    where = opened.headers["location"]
    assert re.fullmatch(rf"/portal/jobs/{source}/clone\?form=[0-9a-f]{{32}}", where)
    form = alpha.get(where).text
    assert 'data-testid="cloned"' in form and "setting lora_rank = 4" in form
    for field_id, value in (("name", "tuned"), ("gpus", "2"), ("steps", "7")):
        assert f'id="{field_id}" name="{field_id}" value="{value}"' in form
    assert 'id="max_runtime_h" name="max_runtime_h" value="1.5"' in form
    assert re.search(r'<option value="lora"\s+selected>', form)
    assert f'name="inputs" value="{a.dataset["name"]}" checked' in form
    assert 'name="allowed_pools" value="kr-test-h200" checked' in form
    nonce = where.rsplit("=", 1)[1]
    assert f'name="idempotency_key" value="{nonce}"' in form

    # Sent as it is: a new job (a new key), with the source's request.
    sent = {
        "csrf": csrf(alpha),
        "idempotency_key": nonce,
        "kind": "lora",
        "model": "axk1-tiny",
        "name": "tuned",
        "gpus": "2",
        "steps": "7",
        "max_runtime_h": "1.5",
        "priority_class": "research",
        "preemptible": "default",
        "allowed_pools": "kr-test-h200",
        "inputs": a.dataset["name"],
    }
    made = alpha.post("/portal/jobs/new", data=sent)
    assert made.status_code == 303, made.text
    new_id = made.headers["location"].rsplit("/", 1)[1]
    assert new_id != source
    job = ok(world.client.get(f"/v1/jobs/{new_id}", headers=bearer(a.user_token)))
    assert (job["gpus"], job["config"].get("steps"), job["max_runtime_s"]) == (2, 7, 5400)
    # Back to the same form and sent again: the same job, not a third.
    again = alpha.post("/portal/jobs/new", data=sent)
    assert again.headers["location"] == made.headers["location"]
    assert notices.MESSAGES["job_resent"] in alpha.get(again.headers["location"]).text

    # Another member's job is the same 404 as a missing one; an auditor submits nothing.
    theirs = alpha.get(f"/portal/jobs/{world.b.job['id']}/clone")
    missing = alpha.get("/portal/jobs/job_missing/clone")
    assert theirs.status_code == missing.status_code == 404
    assert without(theirs.text, world.b.job["id"]) == without(missing.text, "job_missing")
    auditor = signed_in(world, world.auditor_token)
    assert "does not submit jobs" in auditor.get(f"/portal/jobs/{source}/clone").text
