"""/v1/members, /v1/users, /v1/tokens."""

from __future__ import annotations

from fastapi import APIRouter, status

from controlplane.api import schemas
from controlplane.api.deps import CallerDep, PageDep, SessionDep
from controlplane.db.types import utcnow
from controlplane.services import tenancy

router = APIRouter(prefix="/v1")


@router.post(
    "/members", status_code=status.HTTP_201_CREATED, operation_id="createMember", tags=["members"]
)
def create_member(
    body: schemas.MemberCreate, session: SessionDep, caller: CallerDep
) -> schemas.MemberPublic:
    return schemas.MemberPublic.model_validate(tenancy.create_member(session, caller, body))


@router.get("/members", operation_id="listMembers", tags=["members"])
def list_members(
    session: SessionDep, caller: CallerDep, page: PageDep
) -> schemas.Page[schemas.MemberPublic]:
    rows, nxt = tenancy.list_members(session, caller, page.limit, page.cursor)
    return schemas.Page(
        items=[schemas.MemberPublic.model_validate(r) for r in rows], next_cursor=nxt
    )


@router.get("/members/{ref}", operation_id="getMember", tags=["members"])
def get_member(ref: str, session: SessionDep, caller: CallerDep) -> schemas.MemberPublic:
    return schemas.MemberPublic.model_validate(tenancy.get_member(session, caller, ref))


@router.patch("/members/{ref}", operation_id="updateMember", tags=["members"])
def update_member(
    ref: str, body: schemas.MemberUpdate, session: SessionDep, caller: CallerDep
) -> schemas.MemberPublic:
    return schemas.MemberPublic.model_validate(tenancy.update_member(session, caller, ref, body))


@router.post(
    "/users", status_code=status.HTTP_201_CREATED, operation_id="createUser", tags=["users"]
)
def create_user(
    body: schemas.UserCreate, session: SessionDep, caller: CallerDep
) -> schemas.UserPublic:
    return schemas.UserPublic.model_validate(tenancy.create_user(session, caller, body))


@router.get("/users", operation_id="listUsers", tags=["users"])
def list_users(
    session: SessionDep, caller: CallerDep, page: PageDep, member: str | None = None
) -> schemas.Page[schemas.UserPublic]:
    rows, nxt = tenancy.list_users(session, caller, page.limit, page.cursor, member)
    return schemas.Page(items=[schemas.UserPublic.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/users/me", operation_id="whoAmI", tags=["users"])
def who_am_i(session: SessionDep, caller: CallerDep) -> schemas.UserPublic:
    return schemas.UserPublic.model_validate(tenancy.get_user(session, caller, caller.user_id))


@router.get("/users/{user_id}", operation_id="getUser", tags=["users"])
def get_user(user_id: str, session: SessionDep, caller: CallerDep) -> schemas.UserPublic:
    return schemas.UserPublic.model_validate(tenancy.get_user(session, caller, user_id))


@router.patch("/users/{user_id}", operation_id="updateUser", tags=["users"])
def update_user(
    user_id: str, body: schemas.UserUpdate, session: SessionDep, caller: CallerDep
) -> schemas.UserPublic:
    return schemas.UserPublic.model_validate(tenancy.update_user(session, caller, user_id, body))


@router.post(
    "/tokens", status_code=status.HTTP_201_CREATED, operation_id="createToken", tags=["tokens"]
)
def create_token(
    body: schemas.TokenCreate, session: SessionDep, caller: CallerDep
) -> schemas.TokenCreated:
    row, secret = tenancy.create_token(session, caller, body, utcnow())
    return schemas.TokenCreated(
        **schemas.TokenPublic.model_validate(row).model_dump(), token=secret
    )


@router.get("/tokens", operation_id="listTokens", tags=["tokens"])
def list_tokens(
    session: SessionDep, caller: CallerDep, page: PageDep
) -> schemas.Page[schemas.TokenPublic]:
    rows, nxt = tenancy.list_tokens(session, caller, page.limit, page.cursor)
    return schemas.Page(
        items=[schemas.TokenPublic.model_validate(r) for r in rows], next_cursor=nxt
    )


@router.get("/tokens/{token_id}", operation_id="getToken", tags=["tokens"])
def get_token(token_id: str, session: SessionDep, caller: CallerDep) -> schemas.TokenPublic:
    return schemas.TokenPublic.model_validate(tenancy.get_token(session, caller, token_id))


@router.delete("/tokens/{token_id}", operation_id="revokeToken", tags=["tokens"])
def revoke_token(token_id: str, session: SessionDep, caller: CallerDep) -> schemas.TokenPublic:
    return schemas.TokenPublic.model_validate(
        tenancy.revoke_token(session, caller, token_id, utcnow())
    )
