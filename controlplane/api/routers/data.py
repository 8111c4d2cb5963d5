"""/v1/datasets."""

from __future__ import annotations

from fastapi import APIRouter, status

from controlplane.api import schemas
from controlplane.api.deps import CallerDep, PageDep, SessionDep, SettingsDep
from controlplane.db.types import utcnow
from controlplane.services import datasets

router = APIRouter(prefix="/v1")


@router.post(
    "/datasets",
    status_code=status.HTTP_201_CREATED,
    operation_id="createDataset",
    tags=["datasets"],
)
def create_dataset(
    body: schemas.DatasetCreate, session: SessionDep, caller: CallerDep, settings: SettingsDep
) -> schemas.DatasetPublic:
    return schemas.DatasetPublic.model_validate(
        datasets.create_dataset(session, caller, body, settings.resolved_data_dir)
    )


@router.get("/datasets", operation_id="listDatasets", tags=["datasets"])
def list_datasets(
    session: SessionDep, caller: CallerDep, page: PageDep, member: str | None = None
) -> schemas.Page[schemas.DatasetPublic]:
    rows, nxt = datasets.list_datasets(session, caller, page.limit, page.cursor, member)
    return schemas.Page(
        items=[schemas.DatasetPublic.model_validate(r) for r in rows], next_cursor=nxt
    )


@router.get("/datasets/{ref}", operation_id="getDataset", tags=["datasets"])
def get_dataset(ref: str, session: SessionDep, caller: CallerDep) -> schemas.DatasetPublic:
    return schemas.DatasetPublic.model_validate(datasets.visible(session, caller, ref))


@router.patch("/datasets/{ref}", operation_id="updateDataset", tags=["datasets"])
def update_dataset(
    ref: str,
    body: schemas.DatasetUpdate,
    session: SessionDep,
    caller: CallerDep,
    settings: SettingsDep,
) -> schemas.DatasetPublic:
    return schemas.DatasetPublic.model_validate(
        datasets.update_dataset(session, caller, ref, body, utcnow(), settings.resolved_data_dir)
    )
