"""The portal in Korean and English, times in the viewer's zone (issue 16 item 8), over the
real app and SQLite: the language follows ``?lang=`` (kept in a cookie), else the browser's
Accept-Language, else English; times are shown in KST for Korean (or a valid ``?tz=``) with
UTC on hover; the Korean catalog and the templates agree both ways."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controlplane.db.models import Job, JobMetric
from controlplane.portal import i18n, notices, views
from quotas.decisions import REASON_RANK
from tests.conftest import World
from tests.integration.portal.test_portal import (
    browser,
    confirmed,
    csrf,
    engine_session,
    signed_in,
)

KOREAN = {"Accept-Language": "ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7"}
TEMPLATES = Path(views.WEB_DIR) / "templates"
PORTAL_CODE = Path(i18n.__file__).parent
# Every template of the portal is translated (the chart texts built in Python stay English).
TRANSLATED = [
    "base.html",
    "login.html",
    "error.html",
    "_flash.html",
    "_forms.html",
    "_refusal.html",
    "confirm.html",
    "tokens.html",
    "token_created.html",
    "datasets.html",
    "artifacts.html",
    "endpoints.html",
    "endpoint.html",
    "endpoint_new.html",
    "users.html",
    "submit.html",
    "admin.html",
    "jobs.html",
    "_jobs_table.html",
    "jobs_confirm.html",
    "usage.html",
    "job.html",
    "_job_activity.html",
    "_job_fragment.html",
    "_job_live.html",
    "audit.html",
    "overview.html",
    "_chart.html",
    "_budget.html",
]
TIME = re.compile(
    r'<time datetime="(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)" title="([^"]+) UTC">([^<]+)</time>'
)


def html_lang(text: str) -> str:
    found = re.search(r'<html lang="([a-z]+)">', text)
    assert found, text[:300]
    return found.group(1)


def first_time(text: str) -> tuple[datetime, str, str]:
    """The first ``<time>`` of a page: its UTC moment, its hover title, its shown text."""
    found = TIME.search(text)
    assert found, text
    moment = datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return moment, found.group(2), found.group(3)


def test_accept_language_chooses_korean_and_unknown_languages_get_english(
    sqlite_world: World,
) -> None:
    korean = signed_in(sqlite_world, sqlite_world.a.user_token)
    page = korean.get("/portal/datasets", headers=KOREAN)
    assert page.status_code == 200
    assert html_lang(page.text) == "ko"
    for word in ("데이터셋", "작업", "사용량", "로그아웃", "본문으로 건너뛰기"):
        assert word in page.text
    assert ">Sign out<" not in page.text and ">Datasets</h1>" not in page.text
    # The member's own data is still there, untranslated.
    assert sqlite_world.a.dataset["name"] in page.text

    # q-values: English preferred over Korean here; French alone is not offered: English.
    for header in ("ko;q=0.4, en;q=0.8", "fr-FR,fr;q=0.9", "ko;q=0, de", "", "*;q=x,,"):
        other = korean.get("/portal/datasets", headers={"Accept-Language": header})
        assert html_lang(other.text) == "en", header
        assert ">Sign out<" in other.text and "로그아웃" not in other.text

    # Pages without a session and error pages follow the same choice.
    login = browser(sqlite_world).get("/portal/login", headers=KOREAN)
    assert html_lang(login.text) == "ko" and "<h1>로그인</h1>" in login.text
    missing = korean.get("/portal/jobs/job-does-not-exist", headers=KOREAN)
    assert missing.status_code == 404 and "찾을 수 없습니다" in missing.text


def test_every_translated_page_renders_in_korean(sqlite_world: World) -> None:
    """Each page whose template is translated, for the roles that open it: no missing
    placeholder or untranslated heading (a failing render would be a 500)."""
    root_token = sqlite_world.root["Authorization"].removeprefix("Bearer ")
    pages = {
        sqlite_world.a.user_token: {
            "/portal/jobs/new?form=" + "0" * 32: "작업 제출",
            "/portal/endpoints/new": "엔드포인트 만들기",
            "/portal/endpoints": "엔드포인트",
            "/portal/artifacts": "산출물",
            "/portal/datasets": "데이터셋",
            "/portal/tokens": "API 토큰",
        },
        sqlite_world.a.admin_token: {"/portal/users": "사용자"},
        root_token: {"/portal/admin": "클러스터", "/portal/users": "사용자"},
    }
    for token, headings in pages.items():
        client = signed_in(sqlite_world, token)
        for path, heading in headings.items():
            page = client.get(path, headers=KOREAN)
            assert page.status_code == 200, (path, page.text)
            assert f"<h1>{heading}</h1>" in page.text, path
    artifact = sqlite_world.a.artifact["id"]
    client = signed_in(sqlite_world, sqlite_world.a.user_token)
    fetched = client.post(
        f"/portal/artifacts/{artifact}/download",
        data={"csrf": csrf(client, "/portal/artifacts")},
        headers=KOREAN,
    )
    assert fetched.status_code == 200 and "가져오기" in fetched.text, fetched.text
    assert first_time(fetched.text)[2].endswith(" KST")


def test_the_switch_sets_a_cookie_that_overrides_the_browser(sqlite_world: World) -> None:
    client = signed_in(sqlite_world, sqlite_world.a.user_token)
    korean = client.get("/portal/tokens", headers=KOREAN)
    # The footer links to both languages, on the same page.
    assert 'href="/portal/tokens?lang=en"' in korean.text
    assert 'href="/portal/tokens?lang=ko"' in korean.text

    switched = client.get("/portal/tokens?lang=en", headers=KOREAN)
    assert html_lang(switched.text) == "en"
    cookie = switched.headers["set-cookie"]
    assert "nuri_lang=en" in cookie and "samesite=lax" in cookie.lower()
    assert "Path=/portal" in cookie
    # Later pages, still with a Korean browser, stay English (the cookie is in the jar).
    assert html_lang(client.get("/portal/datasets", headers=KOREAN).text) == "en"
    # And back to Korean from an English browser.
    client.get("/portal/datasets?lang=ko", headers={"Accept-Language": "en"})
    later = client.get("/portal/usage", headers={"Accept-Language": "en"})
    assert html_lang(later.text) == "ko" and "사용량" in later.text
    # An unknown language in the switch or the cookie is ignored and nothing is stored.
    odd = client.get("/portal/datasets?lang=xx", headers={"Accept-Language": "en"})
    assert html_lang(odd.text) == "ko" and "nuri_lang" not in odd.headers.get("set-cookie", "")
    client.cookies.set("nuri_lang", "../../etc", path="/portal")
    assert html_lang(client.get("/portal/datasets", headers=KOREAN).text) == "ko"


def test_times_are_in_kst_for_korean_with_utc_on_hover(sqlite_world: World) -> None:
    client = signed_in(sqlite_world, sqlite_world.a.user_token)
    korean = client.get("/portal/tokens", headers=KOREAN).text
    moment, title, shown = first_time(korean)
    assert title == moment.strftime("%Y-%m-%d %H:%M:%S")
    assert shown == (moment + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S KST")
    assert "Asia/Seoul" in korean  # the footer names the zone

    english = client.get("/portal/tokens", headers={"Accept-Language": "en"}).text
    moment, _, shown = first_time(english)
    assert shown == moment.strftime("%Y-%m-%d %H:%M:%S UTC")

    # A zone named in ?tz= is used and kept; a bad one is ignored (the language's default).
    berlin = client.get("/portal/tokens?tz=Europe/Berlin", headers=KOREAN)
    moment, _, shown = first_time(berlin.text)
    expected = moment.astimezone(ZoneInfo("Europe/Berlin")).strftime("%Y-%m-%d %H:%M:%S %Z")
    assert shown == expected and shown.endswith(("CET", "CEST"))
    # (The value is quoted in the header: "/" is not a cookie token character.)
    assert re.search(r'nuri_tz="?Europe/Berlin"?;', berlin.headers["set-cookie"])
    assert first_time(client.get("/portal/tokens", headers=KOREAN).text)[2] == shown
    client.cookies.delete("nuri_tz", path="/portal")
    for bad in ("Mars/Olympus_Mons", "../../../etc/passwd", "Asia/Seoul%00", "x" * 100):
        page = client.get("/portal/tokens", params={"tz": bad}, headers=KOREAN)
        assert page.status_code == 200, bad
        assert first_time(page.text)[2].endswith(" KST"), bad
        assert "nuri_tz" not in page.headers.get("set-cookie", ""), bad


def test_messages_after_a_change_and_state_words_are_translated(sqlite_world: World) -> None:
    client = signed_in(sqlite_world, sqlite_world.a.user_token)
    client.get("/portal/tokens?lang=ko")
    # A spare token of the same user (revoking the session's own token would end it).
    spare = sqlite_world.client.post(
        "/v1/tokens",
        headers=sqlite_world.root,
        json={"name": "spare", "user_id": sqlite_world.a.user["id"]},
    )
    assert spare.status_code == 201, spare.text
    token_id = spare.json()["id"]
    revoked = confirmed(client, f"/portal/tokens/{token_id}/revoke", {"csrf": csrf(client)})
    assert revoked.status_code == 303
    after = client.get(revoked.headers["location"])
    flash = re.search(r'data-testid="flash">([^<]+)<', after.text)
    assert flash and flash.group(1) == "토큰이 폐기되었습니다. 이제 어디에서도 쓸 수 없습니다."
    row = re.search(rf'<tr data-token="{token_id}">(.*?)</tr>', after.text, re.S)
    assert row and "<td>폐기됨</td>" in row.group(1)


def test_localtime_filter_converts_a_known_moment() -> None:
    template = views.templates.env.from_string("{{ t|localtime }}|{{ none|localtime }}")
    korean = i18n.Choice("ko", "Asia/Seoul", i18n.CATALOGS["ko"], ())
    moment = datetime(2026, 12, 6, 18, 4, 5, tzinfo=UTC)
    assert template.render(t=moment, ui=korean) == (
        '<time datetime="2026-12-06T18:04:05Z" title="2026-12-06 18:04:05 UTC">'
        "2026-12-07 03:04:05 KST</time>|-"
    )
    # A naive value is UTC (as the database stores it); English shows UTC.
    naive = template.render(t=moment.replace(tzinfo=None))
    assert ">2026-12-06 18:04:05 UTC</time>" in naive


def test_accept_language_ranking() -> None:
    assert i18n.accepted_language("en-US,en;q=0.9,ko;q=0.8") == "en"
    assert i18n.accepted_language("fr;q=1, ko-KR;q=0.5, en;q=0.4") == "ko"
    assert i18n.accepted_language("KO") == "ko"
    assert i18n.accepted_language("ko;q=0") is None
    assert i18n.accepted_language("ko;q=2") is None  # out of range: ignored
    assert i18n.accepted_language(None) is None


def test_po_parser_reads_multiline_escapes_and_skips_fuzzy() -> None:
    text = "\n".join(
        [
            'msgid ""',
            'msgstr ""',
            '"Language: ko\\n"',
            "",
            "#: base.html",
            'msgid "Say \\"hi\\""',
            'msgstr "\\"안녕\\"이라고 "',
            '"말하기"',
            "",
            "#, fuzzy",
            'msgid "Unsure"',
            'msgstr "불확실"',
            "",
            'msgid "Empty"',
            'msgstr ""',
            'msgid "Last"',
            'msgstr "마지막"',
        ]
    )
    assert i18n.parse_po(text) == {'Say "hi"': '"안녕"이라고 말하기', "Last": "마지막"}
    with pytest.raises(ValueError):
        i18n.parse_po('msgid "a"\nmsgstr "b"\nnonsense\n')


def template_messages(names: list[str]) -> dict[str, set[str]]:
    """msgid → the templates that pass it to ``_``/``gettext`` (Jinja's own extractor)."""
    env = views.templates.env
    found: dict[str, set[str]] = {}
    for name in names:
        source = (TEMPLATES / name).read_text(encoding="utf-8")
        for _, _, message in env.extract_translations(source):  # type: ignore[attr-defined]
            msgid = message[0] if isinstance(message, tuple) else message
            if isinstance(msgid, str):
                found.setdefault(msgid, set()).add(name)
    return found


def code_strings() -> tuple[set[str], set[str]]:
    """The portal code's string literals (adjacent literals joined, as Python joins them), and
    those among them passed first to a ``gettext``/``ngettext`` call (or to ``said``/``say``,
    the handlers' and the charts' names for the viewer's gettext): the sentences the code
    translates."""
    literals: set[str] = set()
    translated: set[str] = set()
    for path in PORTAL_CODE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
            elif isinstance(node, ast.Call) and node.args:
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                first = node.args[0]
                if name in ("said", "say", "gettext", "ngettext") and isinstance(
                    first, ast.Constant
                ):
                    translated.add(str(first.value))
    return literals, translated


def test_the_korean_catalog_is_complete_and_has_nothing_unused() -> None:
    catalog = i18n.CATALOGS["ko"].messages
    used = template_messages(TRANSLATED)
    assert len(used) > 300
    literals, translated_in_code = code_strings()
    assert len(translated_in_code) > 15
    missing = sorted(m for m in set(used) | translated_in_code if m not in catalog)
    assert not missing, f"msgids without a Korean entry: {missing}"

    # Unused: not in any template, not a flash message, not a word the portal code passes to
    # a template (such as a token's state or a sort's label) as a string literal.
    everywhere = set(template_messages([p.name for p in TEMPLATES.glob("*.html")]))
    unused = sorted(
        m
        for m in catalog
        if m not in everywhere and m not in notices.MESSAGES.values() and m not in literals
    )
    assert not unused, f"catalog entries nothing uses: {unused}"

    # Every placeholder survives translation (a missing one would raise while rendering).
    for msgid, msgstr in catalog.items():
        names = sorted(re.findall(r"%\((\w+)\)s", msgid))
        assert sorted(re.findall(r"%\((\w+)\)s", msgstr)) == names, msgid
        assert msgstr.count("<code>") == msgid.count("<code>"), msgid
    assert set(notices.MESSAGES.values()) <= set(catalog)
    # Every reason code of the engine has a title, and every title a Korean entry.
    assert set(views.REASON_TITLES) == set(REASON_RANK)
    assert set(views.REASON_TITLES.values()) <= set(catalog)


def test_why_a_job_waits_is_titled_in_the_viewers_language(sqlite_world: World) -> None:
    """The engine's reasons get a translated title; the engine's own message (with its
    numbers) is shown under it as written."""
    job = sqlite_world.a.job
    reasons = [
        {"code": "quota_exceeded", "message": "needs 8 GPUs; 4 of 16 nominal left in kr-test"},
        {"code": "queue_position", "message": "position 2 in kr-test"},
    ]
    with engine_session(sqlite_world) as s:
        row = s.get(Job, job["id"])
        assert row is not None and row.status == "QUEUED"
        row.reasons = reasons
        s.add(row)
        s.commit()
    client = signed_in(sqlite_world, sqlite_world.a.user_token)
    korean = client.get(f"/portal/live/jobs/{job['id']}", headers=KOREAN).text
    listed = re.search(r'data-testid="reasons">(.*?)</ol>', korean, re.S)
    assert listed, korean
    items = re.findall(r"<li>(.*?)</li>", listed.group(1), re.S)
    assert items == [
        "<strong>회원사 할당량 초과</strong> <code>quota_exceeded</code><br>"
        "needs 8 GPUs; 4 of 16 nominal left in kr-test",
        "<strong>차례를 기다리는 중</strong> <code>queue_position</code><br>position 2 in kr-test",
    ]
    english = client.get(f"/portal/jobs/{job['id']}?lang=en").text
    assert "<strong>Over its member&#39;s quota</strong> <code>quota_exceeded</code>" in english


def no_english(text: str, *phrases: str) -> None:
    for phrase in phrases:
        assert phrase not in text, phrase


def test_the_jobs_pages_render_in_korean_with_times_in_kst(sqlite_world: World) -> None:
    """The jobs list (filters, sort labels, tabs), a job's page and its live fragment, in
    Korean: headings and labels translated, the job's own name and id kept, times in KST."""
    client = signed_in(sqlite_world, sqlite_world.a.user_token)
    job = sqlite_world.a.job
    listed = client.get("/portal/jobs?show=all&kind=lora&sort=name&order=asc", headers=KOREAN)
    assert listed.status_code == 200, listed.text
    text = listed.text
    assert html_lang(text) == "ko" and "<h1>작업</h1>" in text
    for words in (
        "이름 또는 ID 검색",
        "필터 지우기",
        "정렬 기준",
        "진행 중",
        "전체 작업",
        "소요 시간",
    ):
        assert words in text, words
    assert '<option value="asc" selected>오름차순</option>' in text
    assert f'<tr data-job="{job["id"]}">' in text and job["name"] in text
    assert first_time(text)[2].endswith(" KST")  # the submitted time
    no_english(text, "Search name or id", "Clear filters", ">Submitted<", ">ascending<")
    nothing = client.get("/portal/jobs?show=all&q=no-such-job-anywhere", headers=KOREAN)
    assert "이 필터에 맞는 작업이 없습니다." in nothing.text
    # The table's live refresh keeps the language.
    fragment = client.get("/portal/live/jobs?show=all", headers=KOREAN)
    assert fragment.status_code == 200 and "제출 시각" in fragment.text

    # A loss curve: the words the chart adds are Korean too; the metric's values are data.
    with engine_session(sqlite_world) as s:
        for step, loss in enumerate([2.5, 1.7, 1.2], start=1):
            at = datetime.now(UTC)
            s.add(JobMetric(job_id=job["id"], attempt=1, at=at, step=step, values={"loss": loss}))
        s.commit()
    page = client.get(f"/portal/jobs/{job['id']}", headers=KOREAN)
    assert page.status_code == 200, page.text
    assert '<h2 id="chart-heading">손실</h2>' in page.text
    assert "표본 3개 · 처음 2.5 · 마지막 1.2 · 최소 1.2 · 최대 2.5" in page.text
    assert ">단계</text>" in page.text and "<title>loss · 3단계: 1.2</title>" in page.text
    for words in ("요청", "이벤트", "로그", "실행", "최대 실행 시간", "전체 로그 다운로드"):
        assert words in page.text, words
    assert job["name"] in page.text and job["id"] in page.text
    moment, _, shown = first_time(page.text)
    assert shown == (moment + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S KST")
    no_english(page.text, ">Request<", ">Events<", "Download the whole log", " UTC</td>")
    live = client.get(f"/portal/live/jobs/{job['id']}", headers=KOREAN)
    assert live.status_code == 200 and "이벤트" in live.text and "체크포인트" in live.text

    # Clone: the submit form's note about the copy in Korean, the job's name as typed.
    clone = client.get(f"/portal/jobs/{job['id']}/clone", headers=KOREAN)
    assert clone.status_code == 303, clone.text
    form = client.get(clone.headers["location"], headers=KOREAN)
    assert form.status_code == 200, form.text
    assert f"{job['name']}</a> ({job['id']})의 사본입니다" in form.text

    # The same pages in English are as before.
    english = client.get(f"/portal/jobs/{job['id']}?lang=en").text
    assert ">Request</h2>" in english and "Download the whole log" in english
    assert "3 samples · first 2.5 · last 1.2" in english and ">step</text>" in english
    assert first_time(english)[2].endswith(" UTC")


def test_cancel_confirmations_and_the_bulk_count_are_translated(sqlite_world: World) -> None:
    """Sentences the code builds around a change are in the viewer's language; the job's
    name (user text) is shown as typed."""
    client = signed_in(sqlite_world, sqlite_world.a.user_token)
    client.get("/portal/jobs?lang=ko")
    job = sqlite_world.a.job
    asked = client.post(
        f"/portal/jobs/{job['id']}/cancel", data={"csrf": csrf(client), "reason": ""}
    )
    assert asked.status_code == 200, asked.text
    assert f"<h1>작업 {job['id']} ({job['name']})을 취소할까요?</h1>" in asked.text
    assert "예, 작업 취소" in asked.text and "Yes, cancel" not in asked.text

    form = {"csrf": csrf(client), "job": job["id"], "back": "show=all"}
    bulk = client.post("/portal/jobs/bulk-cancel", data=form)
    assert bulk.status_code == 200 and "<h1>작업 1개를 취소할까요?</h1>" in bulk.text, bulk.text
    assert "예, 작업 1개 취소" in bulk.text
    done = confirmed(client, "/portal/jobs/bulk-cancel", form)
    assert done.status_code == 303
    after = client.get(done.headers["location"])
    flash = re.search(r'data-testid="flash">([^<]+)<', after.text)
    assert flash and flash.group(1) == "작업 1개를 취소했습니다. 체크포인트를 저장하고 멈춥니다."


def test_usage_audit_overview_and_admin_render_in_korean(sqlite_world: World) -> None:
    user = signed_in(sqlite_world, sqlite_world.a.user_token)
    usage = user.get("/portal/usage?window=week", headers=KOREAN)
    assert usage.status_code == 200, usage.text
    for words in (
        "<h1>쿼터와 예산 대비 사용량</h1>",
        "GPU 쿼터",
        "최근 1주 동안 사용 중인 GPU",
        "내 멤버의 사용 기록 기준: 점 하나는 6시간 동안의 평균입니다",
        "GPU-시간 예산",
        "이번 기간 남은 GPU-h",
    ):
        assert words in usage.text, words
    no_english(usage.text, "GPU quotas", "Usage report", "The numbers", ">Last week<")
    # The charts' own words (titles, axes, units) too; names stay as they are.
    charts = ("풀별 사용 중인 GPU, 최근 1주", ": 사용한 GPU 시간", "GPU 시간 (누적)", "균등 소진")
    for words in charts:
        assert words in usage.text, words
    no_english(usage.text, "GPUs in use per pool", "GPU-hours (cumulative)", "even pace")

    auditor = signed_in(sqlite_world, sqlite_world.auditor_token)
    audit = auditor.get("/portal/audit", headers=KOREAN)
    assert audit.status_code == 200 and "<h1>감사 로그</h1>" in audit.text
    assert "행위자" in audit.text and "체인 검증" in audit.text
    moment, _, shown = first_time(audit.text)
    assert shown == (moment + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S KST")
    verified = auditor.post(
        "/portal/audit/verify", data={"csrf": csrf(auditor, "/portal/audit")}, headers=KOREAN
    )
    assert verified.status_code == 200 and "검증:" in verified.text
    assert re.search(r'data-testid="verify-result">(온전함|손상됨)<', verified.text)
    overview = auditor.get("/portal/overview", headers=KOREAN)
    assert overview.status_code == 200 and "<h1>클러스터 개요</h1>" in overview.text

    root = signed_in(sqlite_world, sqlite_world.root["Authorization"].removeprefix("Bearer "))
    overview = root.get("/portal/overview?window=day", headers=KOREAN)
    assert overview.status_code == 200, overview.text
    for words in ("<h1>클러스터 개요</h1>", "현재 GPU", "최근 1일 동안", "대기열에서 작업"):
        assert words in overview.text, words
    no_english(overview.text, "Cluster overview", "GPUs in all", "Pools now")
    for words in ("대기열의 작업 수, 최근 1일", "승인 대기 시간, 최근 1일", "대기 중인 작업"):
        assert words in overview.text, words
    no_english(overview.text, "Jobs waiting in the queue", "Admission wait", "jobs waiting")
    pool = sqlite_world.pool["name"]
    admin = root.get(f"/portal/admin?defaults={pool}", headers=KOREAN)
    assert admin.status_code == 200, admin.text
    assert "유휴 GPU를 제한 없이 빌림" in admin.text and "아무것도 못 함: " in admin.text
    assert f"<strong>{pool}</strong>에서 쿼터가 없는 멤버는" in admin.text
    cell = re.search(r'data-testid="pool-default">([^<]+)<', admin.text)
    assert cell and re.fullmatch(r"제한 없이 빌림|아무것도 못 함|GPU \d+개까지 빌림", cell.group(1))
