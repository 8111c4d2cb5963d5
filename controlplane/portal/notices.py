"""What the portal says around a change: a confirmation before a dangerous one, a message
after every one, and the submit form's idempotency key.

- **Confirmations** (cancel a job, revoke a token, disable a user, delete an endpoint) need
  no JavaScript: the first POST only shows a confirmation page whose form carries
  ``confirm``, a keyed hash of the session's secret, the action and its target. Only a POST
  carrying that value acts, so a direct POST (a stray button, a replayed form without the
  step) asks first.
- **Messages** after a change travel in a short-lived cookie (``FLASH_COOKIE``) that the next
  page shows once and clears. It holds only a key from ``MESSAGES`` and a keyed hash of it
  with the session's secret: nobody can craft a link or plant a cookie that makes the portal
  say something (an unknown key, a bad signature or another session's value is ignored), and
  the text shown is always one of the fixed sentences here.
- **Submit keys**: the submit form's page carries a random ``form`` nonce in its URL, so going
  back to it finds the same nonce; the idempotency key is a keyed hash of the nonce with the
  session's secret, so a link with a chosen nonce cannot collide with anyone else's job.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from fastapi import Request, Response

FLASH_COOKIE = "nuri_flash"
FLASH_LIFETIME_S = 120
_FLASH_LABEL = b"nuri-portal-flash"
_CONFIRM_LABEL = b"nuri-portal-confirm"
_SUBMIT_LABEL = b"nuri-portal-submit"
_NONCE = re.compile(r"[0-9a-f]{32}")

# Every message the portal may show after a change: the only texts a flash can carry.
MESSAGES = {
    "job_submitted": "The job was submitted.",
    "job_resent": "This form was sent before: this is the job it submitted, not a new one.",
    "job_cancelled": "The job was cancelled; it checkpoints and stops.",
    "token_revoked": "The token was revoked: it no longer works anywhere.",
    "user_added": "The user was added.",
    "endpoint_deleted": "The endpoint was deleted: its replicas stop and its GPUs are freed.",
    "user_disabled": "The user was disabled: their portal sessions ended and their API tokens "
    "are suspended.",
    "user_enabled": "The user was enabled: their API tokens work again.",
    "member_added": "The member was added.",
    "quota_saved": "The quota was saved.",
    "budget_saved": "The budget was saved.",
    "pool_saved": "The setting for members without a quota in the pool was saved.",
}


def _mac(secret: str, label: bytes, *parts: str) -> str:
    message = label + b"\0" + "\0".join(parts).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


# -- confirmations ---------------------------------------------------------------------------


def confirm_token(secret: str, action: str, target: str) -> str:
    """The value a confirmation page's form carries for ``action`` on ``target``."""
    return _mac(secret, _CONFIRM_LABEL, action, target)


def confirmed(secret: str, action: str, target: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(
        confirm_token(secret, action, target), presented or ""
    )


# -- messages after a change -----------------------------------------------------------------


def flash(response: Response, secret: str, key: str) -> Response:
    """Have the next page say ``MESSAGES[key]`` (once)."""
    if key not in MESSAGES:  # an invariant: handlers name fixed keys only
        raise ValueError(f"unknown portal message {key!r}")
    response.set_cookie(
        FLASH_COOKIE,
        f"{key}.{_mac(secret, _FLASH_LABEL, key)[:32]}",
        max_age=FLASH_LIFETIME_S,
        path="/portal",
        httponly=True,
        samesite="strict",
    )
    return response


def message_of(request: Request, secret: str) -> str | None:
    """The message a change left for this page, when genuine (else None)."""
    value = request.cookies.get(FLASH_COOKIE)
    if not value or value.count(".") != 1:
        return None
    key, mac = value.split(".")
    if key not in MESSAGES or not hmac.compare_digest(_mac(secret, _FLASH_LABEL, key)[:32], mac):
        return None
    return MESSAGES[key]


def clear_flash(response: Response) -> None:
    response.delete_cookie(FLASH_COOKIE, path="/portal", httponly=True, samesite="strict")


# -- the submit form's key -------------------------------------------------------------------


def new_nonce() -> str:
    return secrets.token_hex(16)


def valid_nonce(nonce: str | None) -> bool:
    return nonce is not None and _NONCE.fullmatch(nonce) is not None


def submit_key(secret: str, nonce: str) -> str:
    """The job's idempotency key for the submit form with ``nonce``, in this session."""
    return "portal-" + _mac(secret, _SUBMIT_LABEL, nonce)[:40]
