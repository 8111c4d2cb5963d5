"""Whose address an audit event records: X-Forwarded-For only through trusted proxies."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.auth import client_address
from controlplane.settings import proxy_networks

TRUSTED = proxy_networks("10.0.0.5, 10.1.0.0/16, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # Not a trusted proxy: the header is ignored, whatever it says.
        ("203.0.113.9", ["1.1.1.1"], "203.0.113.9"),
        ("203.0.113.9", ["1.1.1.1, 10.0.0.5"], "203.0.113.9"),
        ("testclient", ["1.1.1.1"], "testclient"),
        # A trusted proxy vouches for its peer: the right-most entry.
        ("10.0.0.5", ["198.51.100.7"], "198.51.100.7"),
        ("10.0.0.5", [], "10.0.0.5"),
        ("10.0.0.5", [""], "10.0.0.5"),
        # What the caller put in front of it is not believed.
        ("10.0.0.5", ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),
        # Several proxies: skip every trusted hop, stop at the first that is not.
        ("10.0.0.5", ["6.6.6.6, 198.51.100.7, 10.1.2.3"], "198.51.100.7"),
        ("10.1.0.1", ["6.6.6.6", "198.51.100.7", "10.0.0.5"], "198.51.100.7"),  # header lines
        # All trusted: the request began inside; the left-most is the farthest known.
        ("10.0.0.5", ["10.1.0.9, 10.1.2.3"], "10.1.0.9"),
        # Garbage goes no further than the last proxy believed.
        ("10.0.0.5", ["unknown"], "10.0.0.5"),
        ("10.0.0.5", ["198.51.100.7, bogus"], "10.0.0.5"),
        ("10.0.0.5", ["bogus, 10.1.2.3"], "10.1.2.3"),
        ("10.0.0.5", ["198.51.100.7,, "], "198.51.100.7"),  # empty entries say nothing
        ("10.0.0.5", ["1.2.3.4:5:6"], "10.0.0.5"),
        ("10.0.0.5", ["999.1.1.1"], "10.0.0.5"),
        ("10.0.0.5", ["[::1"], "10.0.0.5"),
        ("10.0.0.5", ["1.2.3.4:http"], "10.0.0.5"),
        # Ports and brackets.
        ("10.0.0.5", ["198.51.100.7:4711"], "198.51.100.7"),
        ("10.0.0.5", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("10.0.0.5", ["[2001:db8::7]"], "2001:db8::7"),
        # IPv6, normalised; an IPv4-mapped peer is its IPv4 address.
        ("10.0.0.5", ["2001:DB8:0:0::7"], "2001:db8::7"),
        ("fd00::1", ["2001:db8::7, fd12::3"], "2001:db8::7"),
        ("::ffff:10.0.0.5", ["198.51.100.7"], "198.51.100.7"),
        ("10.0.0.5", ["::ffff:198.51.100.7"], "198.51.100.7"),
        ("2001:db8::99", ["198.51.100.7"], "2001:db8::99"),
        (None, ["198.51.100.7"], None),
    ],
)
def test_client_address(peer: str | None, xff: list[str], expected: str | None) -> None:
    assert client_address(peer, xff, TRUSTED) == expected


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_address("127.0.0.1", ["198.51.100.7"], ()) == "127.0.0.1"
    assert client_address("10.0.0.5", ["198.51.100.7"], proxy_networks("")) == "10.0.0.5"


def test_trust_everyone_is_possible_but_explicit() -> None:
    everyone = proxy_networks("0.0.0.0/0, ::/0")
    assert client_address("203.0.113.9", ["6.6.6.6"], everyone) == "6.6.6.6"


@given(
    peer=st.sampled_from(["10.0.0.5", "fd00::1", "203.0.113.9", "testclient", ""]),
    headers=st.lists(st.text(max_size=200), max_size=4)
    | st.lists(
        st.lists(
            st.sampled_from(["1.2.3.4", "10.0.0.5", "[::1]:80", "fd00::2", "x", " ", ":", "[", "]"])
            | st.text(alphabet="0123456789abcdef.:[]% ", max_size=20),
            max_size=6,
        ).map(",".join),
        max_size=3,
    ),
)
def test_never_raises_and_answers_the_peer_or_an_address(peer: str, headers: list[str]) -> None:
    got = client_address(peer, headers, TRUSTED)
    assert got is not None
    if got != peer:
        ip_address(got.split("%")[0])  # a real address: safe for the audit log
        assert len(got) <= 64
    if peer in ("203.0.113.9", "testclient", ""):
        assert got == peer  # untrusted peers are never overridden


@pytest.mark.parametrize("bad", ["10.0.0.300", "proxy.internal", "10.0.0.0/33", "*"])
def test_bad_trusted_proxy_entries_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="NURI_TRUSTED_PROXIES"):
        proxy_networks(f"10.0.0.5, {bad}")
