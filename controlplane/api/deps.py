"""FastAPI dependencies: the session, the settings, the authenticated caller, paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from controlplane.auth import Principal, authenticate
from controlplane.db.types import utcnow
from controlplane.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    engine: Engine = request.app.state.engine
    with Session(engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_principal(
    session: SessionDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    return authenticate(session, authorization, utcnow(), settings.token_touch_interval_s)


CallerDep = Annotated[Principal, Depends(get_principal)]


class PageParams:
    def __init__(
        self,
        settings: SettingsDep,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 50,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> None:
        self.limit = min(limit, settings.max_page_size)
        self.cursor = cursor


PageDep = Annotated[PageParams, Depends()]
