"""The audit log's ``source_ip`` through the real app: the socket's peer, unless the request
comes through a proxy of NURI_TRUSTED_PROXIES (then what its X-Forwarded-For vouches for)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane.api.app import create_app
from controlplane.db.models import AuditEvent
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, KEY_DIR, bearer, ok

PROXIES = "10.0.0.5, 10.1.0.0/16, fd00::/8"
_names = itertools.count()


def make_app(engine: Engine, trusted_proxies: str = "") -> FastAPI:
    settings = Settings(
        bootstrap_admin_token=ADMIN_TOKEN,
        home=KEY_DIR,
        audit_key_path=KEY_DIR / "audit-signing-key.pem",
        trusted_proxies=trusted_proxies,
        warm_planner=False,
    )
    return create_app(settings, engine)


def source_ip(app: FastAPI, peer: str, headers: Any = ()) -> str | None:
    """Make an audited change from ``peer`` with ``headers``; the source its event records."""
    client = TestClient(app, client=(peer, 40000), raise_server_exceptions=False)
    name = f"member-{next(_names)}"
    hdrs = [
        *bearer(ADMIN_TOKEN).items(),
        *(headers.items() if isinstance(headers, dict) else headers),
    ]
    member = ok(
        client.post("/v1/members", headers=hdrs, json={"name": name, "display_name": name}), 201
    )
    with Session(app.state.engine) as s:
        event = s.exec(
            select(AuditEvent).where(
                AuditEvent.action == "member.create", AuditEvent.resource_id == member["id"]
            )
        ).one()
    return event.source_ip


def test_without_trusted_proxies_forwarding_headers_are_ignored(engine: Engine) -> None:
    app = make_app(engine)
    spoof = {"X-Forwarded-For": "198.51.100.7", "Forwarded": "for=198.51.100.7"}
    assert source_ip(app, "10.0.0.5", spoof) == "10.0.0.5"
    assert source_ip(app, "127.0.0.1", spoof) == "127.0.0.1"  # not even from localhost
    assert source_ip(app, "2001:db8::1", spoof) == "2001:db8::1"


def test_spoofed_header_from_an_untrusted_client_is_ignored(engine: Engine) -> None:
    app = make_app(engine, PROXIES)
    spoof = {"X-Forwarded-For": "198.51.100.7, 10.0.0.5", "Forwarded": "for=198.51.100.7"}
    assert source_ip(app, "203.0.113.9", spoof) == "203.0.113.9"
    assert source_ip(app, "2001:db8::1", spoof) == "2001:db8::1"


def test_a_trusted_proxy_names_the_caller(engine: Engine) -> None:
    app = make_app(engine, PROXIES)
    assert source_ip(app, "10.0.0.5", {"X-Forwarded-For": "198.51.100.7"}) == "198.51.100.7"
    # Only what the proxy appended is believed, not what the caller sent it.
    xff = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7"}
    assert source_ip(app, "10.0.0.5", xff) == "198.51.100.7"
    # No header: the proxy itself.
    assert source_ip(app, "10.0.0.5") == "10.0.0.5"
    # RFC 7239 Forwarded is not read, even from a trusted proxy (X-Forwarded-For only).
    assert source_ip(app, "10.0.0.5", {"Forwarded": "for=198.51.100.7"}) == "10.0.0.5"


def test_chains_of_proxies(sqlite_engine: Engine) -> None:
    app = make_app(sqlite_engine, PROXIES)
    # client -> 10.1.0.9 -> 10.1.2.3 -> 10.0.0.5 -> Nuri
    chain = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.1.0.9, 10.1.2.3"}
    assert source_ip(app, "10.0.0.5", chain) == "198.51.100.7"
    # The same chain over several header lines (one per proxy).
    lines = [
        ("X-Forwarded-For", "6.6.6.6, 198.51.100.7"),
        ("X-Forwarded-For", "10.1.0.9"),
        ("X-Forwarded-For", "10.1.2.3"),
    ]
    assert source_ip(app, "10.0.0.5", lines) == "198.51.100.7"
    # An untrusted hop in the middle stops the walk there.
    assert source_ip(app, "10.0.0.5", {"X-Forwarded-For": "198.51.100.7, 203.0.113.50"}) == (
        "203.0.113.50"
    )
    # Everyone trusted: the request began inside; the left-most hop.
    assert source_ip(app, "10.0.0.5", {"X-Forwarded-For": "10.1.0.9, 10.1.2.3"}) == "10.1.0.9"


def test_ipv6(sqlite_engine: Engine) -> None:
    app = make_app(sqlite_engine, PROXIES)
    xff = {"X-Forwarded-For": "2001:DB8:0::7, fd12::3"}
    assert source_ip(app, "fd00::1", xff) == "2001:db8::7"
    assert source_ip(app, "10.0.0.5", {"X-Forwarded-For": "[2001:db8::7]:443"}) == "2001:db8::7"
    assert source_ip(app, "::ffff:10.0.0.5", {"X-Forwarded-For": "198.51.100.7"}) == (
        "198.51.100.7"
    )
    assert source_ip(app, "fd00::1", {"X-Forwarded-For": "198.51.100.7:8080"}) == "198.51.100.7"


@pytest.mark.parametrize(
    "value",
    [
        b"unknown",
        b"",
        b" , ,",
        b"198.51.100.7, not an address",
        b"\xff\xfe\xfd",
        b"[::1",
        b"999.999.999.999",
        b"1.2.3.4:99999999",
        b"a" * 4000,
        b"," * 2000,
        b"fe80::1%" + b"x" * 100,
        b'"[2001:db8::7]"',
    ],
)
def test_garbage_headers_never_cause_a_500(sqlite_engine: Engine, value: bytes) -> None:
    app = make_app(sqlite_engine, PROXIES)
    for peer in ("10.0.0.5", "203.0.113.9"):
        got = source_ip(app, peer, [("X-Forwarded-For", value), ("Forwarded", value)])
        assert got == peer  # nothing believable: the last address vouched for


def test_bad_trusted_proxies_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/40' is not an IP address or CIDR"):
        Settings(trusted_proxies="10.0.0.5, 10.0.0.0/40")
