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
