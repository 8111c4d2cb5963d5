"""Names, not ids (SQLite and PostgreSQL): the audit page's actors, streams and targets are
shown by name with the id on hover, resolved in one query per page and scoped (a member's
user sees its own member's names only); an unmatched ``/portal/...`` route is the portal's
404 page, with the navigation when signed in."""

from __future__ import annotations

import re

from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.conftest import World
from tests.integration.portal.test_portal import browser, signed_in
from tests.integration.portal.test_portal_errors_readable import NAV, SIGN_OUT


def cells(page: str, testid: str) -> list[str]:
    return re.findall(rf'<td data-testid="{testid}">(.*?)</td>', page)


def test_audit_rows_name_actors_streams_and_targets_as_the_viewer_may(world: World) -> None:
    auditor = signed_in(world, world.auditor_token)
    engine: Engine = world.client.app.state.engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def count(_conn: object, _cur: object, sql: str, *_: object) -> None:
        statements.append(sql)

    event.listen(engine, "before_cursor_execute", count)
    try:
        page = auditor.get("/portal/audit").text
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert sum("UNION ALL" in s for s in statements) == 1  # all names in one query
    dataset = world.a.dataset
    target = f'<span title="dataset {dataset["id"]}" data-id="{dataset["id"]}">alpha-corpus</span>'
    assert target in page
    assert f'<span title="member {world.a.member["id"]}"' in page and ">alpha</span>" in page
    actors = cells(page, "audit-actor")
    assert any(f'title="user {world.a.user["id"]}"' in a and ">User<" in a for a in actors)
    # The platform admin created alpha's quota, in alpha's stream: the auditor sees who.
    quota_row = [r for r in page.split("<tr>") if "quota.create" in r]
    assert quota_row and all('title="user ' in r for r in quota_row), quota_row

    alpha = signed_in(world, world.a.admin_token).get("/portal/audit")
    assert alpha.status_code == 200, alpha.text
    mine = alpha.text
    assert target in mine  # its own dataset, by name
    rows = [r for r in mine.split("<tr>") if "quota.create" in r]
    for row in rows:  # the platform admin is not alpha's to name: the id is shown
        actor = re.search(r'<td data-testid="audit-actor">(.*?)</td>', row)
        assert actor and 'title="user ' not in actor.group(1), row
    assert "beta" not in re.sub(r"<[^>]+>", " ", mine.split('data-testid="audit-events"')[1])


def test_an_unmatched_portal_route_is_the_portal_404_page(sqlite_world: World) -> None:
    world = sqlite_world  # no SQL of its own: one backend is enough
    alpha = signed_in(world, world.a.user_token)
    resp = alpha.get("/portal/no-such-page/at/all")
    assert resp.status_code == 404 and 'data-testid="error-code"' in resp.text
    assert NAV in resp.text and SIGN_OUT in resp.text, resp.text
    resp = browser(world).get("/portal/no-such-page")
    assert resp.status_code == 404 and SIGN_OUT not in resp.text
    # A cookie of no live session is not signed in either.
    stale = browser(world)
    stale.cookies.set("nuri_portal", "nps_" + "0" * 40)
    resp = stale.get("/portal/no-such-page")
    assert resp.status_code == 404 and SIGN_OUT not in resp.text
    # The API's 404 stays JSON.
    api = world.client.get("/v1/no-such-thing", headers=world.root)
    assert api.status_code == 404 and set(api.json()) >= {"code", "message", "details"}
