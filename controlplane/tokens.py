"""API token format: ``nuri_`` + 32 random base62 characters + a 6-character checksum.

The prefix makes a leaked token recognisable to secret scanners; the checksum lets us reject
a mistyped or truncated token without a database lookup. Only SHA-256 of the whole token is
stored: tokens carry ~190 bits of entropy, so a fast hash is sufficient (as GitHub does).
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

PREFIX = "nuri_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 32
_CHECK_LEN = 6


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def generate() -> str:
    """A new random token (shown to its owner once, never stored)."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LEN))
    return f"{PREFIX}{body}{_checksum(body)}"


def well_formed(token: str) -> bool:
    """True when the token has Nuri's shape and a valid checksum."""
    if not token.startswith(PREFIX) or len(token) != len(PREFIX) + _BODY_LEN + _CHECK_LEN:
        return False
    rest = token[len(PREFIX) :]
    body, check = rest[:_BODY_LEN], rest[_BODY_LEN:]
    if any(c not in _ALPHABET for c in rest):
        return False
    return secrets.compare_digest(_checksum(body), check)


def digest(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    return token[:12]


# Secrets an operator chooses (NURI_BOOTSTRAP_ADMIN_TOKEN) other than Nuri tokens: at least
# this long, and only characters that survive an Authorization header unchanged.
MIN_SECRET_LEN = 32
_VISIBLE_ASCII = frozenset(chr(c) for c in range(0x21, 0x7F))
MAKE_ONE = "make one with `nuri token new`"


def bootstrap_problem(secret: str) -> str | None:
    """Why ``secret`` cannot be the platform admin's bootstrap token; None when it can.

    Accepted: a well-formed Nuri token, or any other secret of at least ``MIN_SECRET_LEN``
    visible ASCII characters that does not start with ``nuri_``. Everything refused here
    would be stored and then answer 401 forever (a ``nuri_`` secret with a bad checksum is
    refused before the lookup; whitespace around a header's value is trimmed, and non-ASCII
    reaches the server mangled, if at all; whitespace inside is refused too, for one simple
    rule) or is too short to be a secret.
    """
    name = "NURI_BOOTSTRAP_ADMIN_TOKEN"
    if any(c not in _VISIBLE_ASCII for c in secret):
        return (
            f"{name} contains whitespace (a trailing newline?) or characters outside visible"
            f" ASCII, which an Authorization header does not carry unchanged; {MAKE_ONE}"
        )
    if secret.startswith(PREFIX):
        if well_formed(secret):
            return None
        return (
            f"{name} starts with {PREFIX!r} but is not a well-formed Nuri token (its length or"
            f" checksum is wrong), so it could never sign in; {MAKE_ONE}"
        )
    if len(secret) < MIN_SECRET_LEN:
        return (
            f"{name} must be a Nuri token or another secret of at least {MIN_SECRET_LEN}"
            f" characters; {MAKE_ONE}"
        )
    return None
