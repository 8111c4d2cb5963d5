"""Cursor pagination over time-ordered string ids (newest first)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlmodel import Session, col
from sqlmodel.sql.expression import SelectOfScalar

from controlplane.errors import InvalidRequest

M = TypeVar("M")


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest(
            "malformed cursor", code="invalid_cursor", details={"cursor": cursor}
        ) from None
    if not raw or len(raw) > 64 or not raw.isascii():
        raise InvalidRequest("malformed cursor", code="invalid_cursor", details={"cursor": cursor})
    return raw


def page(
    session: Session, stmt: SelectOfScalar[M], id_column: Any, limit: int, cursor: str | None
) -> tuple[Sequence[M], str | None]:
    """One page of ``stmt`` ordered by id descending, and the cursor of the next page."""
    if cursor:
        stmt = stmt.where(col(id_column) < decode_cursor(cursor))
    rows = session.exec(stmt.order_by(col(id_column).desc()).limit(limit + 1)).all()
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(str(getattr(rows[-1], id_column.key)))
    return rows, None
