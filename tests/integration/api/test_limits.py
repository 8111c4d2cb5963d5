"""Request limits (issue 12, item 5): a body limit with 413 on the API and the portal, the
caller authenticated before any body is read, and per-token rate limits with 429."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi.testclient import TestClient

from controlplane.api.limits import RateLimiter
from tests.conftest import World, bearer
from tests.integration.portal.test_portal import csrf, signed_in

LIMIT = 1 << 20  # the default NURI_MAX_REQUEST_BYTES
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def error_body(resp: object, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    body: dict[str, object] = resp.json()  # type: ignore[attr-defined]
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code
    return body


def api_write_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every API route that may take a body (from the OpenAPI), path parameters filled in."""
    out = []
    for path, ops in client.get("/openapi.json").json()["paths"].items():
        filled = re.sub(r"\{n\}", "1", re.sub(r"\{(?!n\})[^}]+\}", "x", path))
        out += [(m.upper(), filled) for m in ops if m.upper() in WRITE_METHODS]
    return out


# The portal's forms (every POST under /portal but sign-in and sign-out).
PORTAL_FORMS = (
    "/portal/jobs/new",
    "/portal/jobs/x/cancel",
    "/portal/artifacts/x/download",
    "/portal/audit/verify",
    "/portal/tokens",
    "/portal/tokens/x/revoke",
    "/portal/users",
    "/portal/users/x/disable",
    "/portal/admin/members",
    "/portal/admin/quotas",
    "/portal/admin/budgets",
    "/portal/endpoints/new",
    "/portal/endpoints/x/delete",
    "/portal/endpoints/x/playground",
)


def test_an_oversized_body_is_413_before_it_is_read(world: World) -> None:
    body = b'{"name": "' + b"a" * LIMIT + b'"}'
    resp = world.client.post(
        "/v1/datasets",
        headers={**bearer(world.a.user_token), "Content-Type": "application/json"},
        content=body,
    )
    out = error_body(resp, 413, "payload_too_large")
    assert out["details"] == {"max_bytes": LIMIT, "content_length": len(body)}
    # Nothing was written.
    names = [
        d["name"]
        for d in world.client.get("/v1/datasets", headers=bearer(world.a.user_token)).json()[
            "items"
        ]
    ]
    assert names == ["alpha-corpus"]


def test_a_chunked_body_past_the_limit_is_413(world: World) -> None:
    """No Content-Length: the bytes are counted as they arrive."""

    def chunks() -> Iterator[bytes]:
        yield b'{"kind": "lora", "model": "axk1-tiny", "gpus": 1, "inputs": [], "config": {"x": "'
        for _ in range(LIMIT // 65536 + 1):
            yield b"b" * 65536
        yield b'"}}'

    resp = world.client.post(
        "/v1/jobs",
        headers={**bearer(world.a.user_token), "Content-Type": "application/json"},
        content=chunks(),
    )
    error_body(resp, 413, "payload_too_large")
    jobs = world.client.get("/v1/jobs", headers=bearer(world.a.user_token)).json()["items"]
    assert [j["id"] for j in jobs] == [world.a.job["id"]]


def test_a_body_just_under_the_limit_is_parsed(world: World) -> None:
    """The limit is not a lower one in disguise: a large but allowed body reaches validation."""
    body = b'{"name": "' + b"a" * (LIMIT - 100) + b'"}'
    resp = world.client.post(
        "/v1/datasets",
        headers={**bearer(world.a.user_token), "Content-Type": "application/json"},
        content=body,
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == "validation_error"


def test_every_write_route_authenticates_before_it_parses_a_body(world: World) -> None:
    """Invalid JSON without a token: 401 on every route that takes a body, never the 422 a
    parsed body would give (the body is not read at all: see the socket test below)."""
    routes = api_write_routes(world.client)
    assert len(routes) >= 25
    for method, path in routes:
        for headers in ({}, bearer("nuri_" + "0" * 43), {"Authorization": "Basic x"}):
            resp = world.client.request(
                method,
                path,
                headers={**headers, "Content-Type": "application/json"},
                content=b'{"not": json',
            )
            error_body(resp, 401, "unauthenticated")


def test_a_disabled_users_token_is_refused_before_the_body(world: World) -> None:
    resp = world.client.patch(
        f"/v1/users/{world.a.user['id']}",
        headers=bearer(world.a.admin_token),
        json={"disabled": True},
    )
    assert resp.status_code == 200, resp.text
    resp = world.client.post(
        "/v1/jobs",
        headers={**bearer(world.a.user_token), "Content-Type": "application/json"},
        content=b"[not json",
    )
    error_body(resp, 401, "unauthenticated")


@contextmanager
def served(client: TestClient) -> Iterator[int]:
    """The test's app behind a real uvicorn on a free port (a socket can hold back a body)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)  # poll interval
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def raw_request(port: int, head: str) -> bytes:
    """Send only the request head, never the body it announces, and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _answer_length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _answer_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length: *(\d+)", head)
    return len(head) + 4 + (int(found.group(1)) if found else 0)


def test_an_unauthenticated_20_mb_submission_is_answered_without_its_body(
    sqlite_world: World,
) -> None:
    """A socket that announces a body and never sends it: the answer comes anyway, so the
    server neither waited for the body nor parsed it."""
    with served(sqlite_world.client) as port:
        for length, auth, status in (
            (20 << 20, "", b"413"),
            (500_000, "", b"401"),
            (500_000, "Authorization: Bearer nuri_" + "0" * 43 + "\r\n", b"401"),
            (20 << 20, f"Authorization: Bearer {sqlite_world.a.user_token}\r\n", b"413"),
        ):
            answer = raw_request(
                port,
                "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n{auth}\r\n",
            )
            assert answer.split(b" ", 2)[:2] == [b"HTTP/1.1", status], answer
            assert b'"code":"' in answer, answer  # the error body


def test_the_portal_answers_an_oversized_form_with_a_413_page(world: World) -> None:
    browser = signed_in(world, world.a.user_token)
    token = csrf(browser)
    resp = browser.post(
        "/portal/jobs/new",
        content=f"csrf={token}&name=".encode() + b"x" * LIMIT,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 413
    assert "text/html" in resp.headers["content-type"]
    assert "larger than" in resp.text
    # The sign-in form too, before anyone is signed in.
    anonymous = TestClient(world.client.app)
    resp = anonymous.post(
        "/portal/login",
        content=b"token=" + b"x" * (LIMIT + 1),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 413


def test_portal_forms_need_a_session_before_the_form_is_read(world: World) -> None:
    """Without a session, a form post goes to sign-in whatever its body (never a form error)."""
    anonymous = TestClient(world.client.app, follow_redirects=False)
    for path in PORTAL_FORMS:
        resp = anonymous.post(
            path,
            content=b"%%%garbage",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status_code in (303, 401), (path, resp.status_code, resp.text[:200])
        if resp.status_code == 303:
            assert resp.headers["location"].startswith("/portal/login")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_over_its_rate_gets_429_with_retry_after(world: World) -> None:
    clock = FakeClock()
    world.client.app.state.rate_limiter = RateLimiter(rate=0.5, burst=3, clock=clock)  # type: ignore[attr-defined]
    user = bearer(world.a.user_token)
    for _ in range(3):
        assert world.client.get("/v1/jobs", headers=user).status_code == 200
    resp = world.client.get("/v1/jobs", headers=user)
    out = error_body(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"] == "2"  # one request refills in 1 / 0.5 s
    assert out["details"] == {"retry_after_s": 2, "rate_per_s": 0.5, "burst": 3}
    # Writes too, answered before the body is parsed.
    resp = world.client.post(
        "/v1/jobs", headers={**user, "Content-Type": "application/json"}, content=b"{bad"
    )
    error_body(resp, 429, "rate_limited")
    # Another token of the same member has its own bucket; so has the platform admin.
    assert world.client.get("/v1/jobs", headers=bearer(world.a.admin_token)).status_code == 200
    assert world.client.get("/v1/members", headers=world.root).status_code == 200
    # Once the bucket refills the token is served again.
    clock.now += 2.0
    assert world.client.get("/v1/jobs", headers=user).status_code == 200
    assert world.client.get("/v1/jobs", headers=user).status_code == 429


def test_a_submission_counts_once_against_the_rate(world: World) -> None:
    """POST /v1/jobs authenticates in its own session; the guard's authentication before the
    body is reused, not repeated, and so counted once."""
    clock = FakeClock()
    world.client.app.state.rate_limiter = RateLimiter(rate=1.0, burst=2, clock=clock)  # type: ignore[attr-defined]
    user = bearer(world.a.user_token)
    body = {"kind": "lora", "model": "axk1-tiny", "gpus": 1, "inputs": [world.a.dataset["id"]]}
    for n in range(2):
        resp = world.client.post(
            "/v1/jobs", headers={**user, "Idempotency-Key": f"k{n}"}, json=body
        )
        assert resp.status_code == 201, resp.text
    error_body(world.client.post("/v1/jobs", headers=user, json=body), 429, "rate_limited")


def test_rate_limits_are_off_at_zero(world: World) -> None:
    world.client.app.state.rate_limiter = RateLimiter(rate=0.0, burst=1)  # type: ignore[attr-defined]
    for _ in range(20):
        assert (
            world.client.get("/v1/users/me", headers=bearer(world.a.user_token)).status_code == 200
        )


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_nonsense_rate_setting_is_refused(value: str) -> None:
    from pydantic import ValidationError

    from controlplane.settings import Settings

    with pytest.raises(ValidationError):
        Settings(rate_limit_per_s=value)  # type: ignore[arg-type]
