"""/v1/pools, /v1/nodes, /v1/priority-classes, /v1/quotas, /v1/budgets, /v1/usage."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status

from controlplane.api import schemas
from controlplane.api.deps import CallerDep, PageDep, SessionDep
from controlplane.db.types import utcnow
from controlplane.services import inventory, lookup, reports

router = APIRouter(prefix="/v1")


@router.post(
    "/pools", status_code=status.HTTP_201_CREATED, operation_id="createPool", tags=["pools"]
)
def create_pool(
    body: schemas.PoolCreate, session: SessionDep, caller: CallerDep
) -> schemas.PoolPublic:
    return inventory.pool_public(session, inventory.create_pool(session, caller, body))


@router.get("/pools", operation_id="listPools", tags=["pools"])
def list_pools(session: SessionDep, _caller: CallerDep) -> schemas.Page[schemas.PoolPublic]:
    return schemas.Page(
        items=[inventory.pool_public(session, p) for p in inventory.list_pools(session)]
    )


@router.get("/pools/{ref}", operation_id="getPool", tags=["pools"])
def get_pool(ref: str, session: SessionDep, _caller: CallerDep) -> schemas.PoolPublic:
    return inventory.pool_public(session, lookup.pool(session, ref))


@router.patch("/pools/{ref}", operation_id="updatePool", tags=["pools"])
def update_pool(
    ref: str, body: schemas.PoolUpdate, session: SessionDep, caller: CallerDep
) -> schemas.PoolPublic:
    return inventory.pool_public(session, inventory.update_pool(session, caller, ref, body))


@router.post(
    "/nodes", status_code=status.HTTP_201_CREATED, operation_id="createNode", tags=["nodes"]
)
def create_node(
    body: schemas.NodeCreate, session: SessionDep, caller: CallerDep
) -> schemas.NodePublic:
    return schemas.NodePublic.model_validate(inventory.create_node(session, caller, body))


@router.get("/nodes", operation_id="listNodes", tags=["nodes"])
def list_nodes(
    session: SessionDep, _caller: CallerDep, page: PageDep, pool: str | None = None
) -> schemas.Page[schemas.NodePublic]:
    rows, nxt = inventory.list_nodes(session, page.limit, page.cursor, pool)
    return schemas.Page(items=[schemas.NodePublic.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/nodes/{ref}", operation_id="getNode", tags=["nodes"])
def get_node(ref: str, session: SessionDep, _caller: CallerDep) -> schemas.NodePublic:
    return schemas.NodePublic.model_validate(inventory.get_node(session, ref))


@router.patch("/nodes/{ref}", operation_id="updateNode", tags=["nodes"])
def update_node(
    ref: str, body: schemas.NodeUpdate, session: SessionDep, caller: CallerDep
) -> schemas.NodePublic:
    return schemas.NodePublic.model_validate(inventory.update_node(session, caller, ref, body))


@router.get("/priority-classes", operation_id="listPriorityClasses", tags=["pools"])
def list_priority_classes(
    session: SessionDep, _caller: CallerDep
) -> schemas.Page[schemas.PriorityClassPublic]:
    return schemas.Page(
        items=[
            schemas.PriorityClassPublic.model_validate(p)
            for p in inventory.list_priority_classes(session)
        ]
    )


@router.post(
    "/quotas", status_code=status.HTTP_201_CREATED, operation_id="createQuota", tags=["quotas"]
)
def create_quota(
    body: schemas.QuotaCreate, session: SessionDep, caller: CallerDep
) -> schemas.QuotaPublic:
    return schemas.QuotaPublic.model_validate(inventory.create_quota(session, caller, body))


@router.get("/quotas", operation_id="listQuotas", tags=["quotas"])
def list_quotas(
    session: SessionDep,
    caller: CallerDep,
    page: PageDep,
    member: str | None = None,
    pool: str | None = None,
) -> schemas.Page[schemas.QuotaPublic]:
    rows, nxt = inventory.list_quotas(session, caller, page.limit, page.cursor, member, pool)
    return schemas.Page(
        items=[schemas.QuotaPublic.model_validate(r) for r in rows], next_cursor=nxt
    )


@router.get("/quotas/{quota_id}", operation_id="getQuota", tags=["quotas"])
def get_quota(quota_id: str, session: SessionDep, caller: CallerDep) -> schemas.QuotaPublic:
    return schemas.QuotaPublic.model_validate(inventory.get_quota(session, caller, quota_id))


@router.patch("/quotas/{quota_id}", operation_id="updateQuota", tags=["quotas"])
def update_quota(
    quota_id: str, body: schemas.QuotaUpdate, session: SessionDep, caller: CallerDep
) -> schemas.QuotaPublic:
    return schemas.QuotaPublic.model_validate(
        inventory.update_quota(session, caller, quota_id, body, utcnow())
    )


@router.post(
    "/budgets", status_code=status.HTTP_201_CREATED, operation_id="createBudget", tags=["budgets"]
)
def create_budget(
    body: schemas.BudgetCreate, session: SessionDep, caller: CallerDep
) -> schemas.BudgetPublic:
    return inventory.budget_public(session, inventory.create_budget(session, caller, body))


@router.get("/budgets", operation_id="listBudgets", tags=["budgets"])
def list_budgets(
    session: SessionDep, caller: CallerDep, page: PageDep, member: str | None = None
) -> schemas.Page[schemas.BudgetPublic]:
    rows, nxt = inventory.list_budgets(session, caller, page.limit, page.cursor, member)
    return schemas.Page(items=[inventory.budget_public(session, r) for r in rows], next_cursor=nxt)


@router.get("/budgets/{budget_id}", operation_id="getBudget", tags=["budgets"])
def get_budget(budget_id: str, session: SessionDep, caller: CallerDep) -> schemas.BudgetPublic:
    return inventory.budget_public(session, inventory.get_budget(session, caller, budget_id))


@router.patch("/budgets/{budget_id}", operation_id="updateBudget", tags=["budgets"])
def update_budget(
    budget_id: str, body: schemas.BudgetUpdate, session: SessionDep, caller: CallerDep
) -> schemas.BudgetPublic:
    return inventory.budget_public(
        session, inventory.update_budget(session, caller, budget_id, body, utcnow())
    )


@router.get(
    "/usage",
    operation_id="getUsageReport",
    tags=["usage"],
    responses={
        200: {
            "description": "The report (JSON), or with format=csv a CSV file",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
def usage_report(
    session: SessionDep,
    caller: CallerDep,
    period: Annotated[str, Query(description="2026-Q4, 2026-H1 or 2026-11", max_length=20)],
    member: Annotated[str | None, Query(max_length=100)] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    """GPU-hours per member and pool in the period (your member's, or every member's for
    platform admins and auditors); ``format=csv`` downloads it as a CSV file."""
    report = reports.usage_report(session, caller, period, utcnow(), member)
    if format == "csv":
        return csv_download(report)
    return report.to_dict()


def csv_download(report: reports.UsageReport) -> Response:
    """The report as a CSV file download (the API's ``format=csv`` and the portal's link)."""
    return Response(
        report.to_csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{report.filename}"'},
    )
