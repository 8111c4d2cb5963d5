"""/v1/plan: the capacity planner (GPUs, nodes, ZeRO stage, memory per GPU)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from controlplane import planning
from controlplane.api.deps import CallerDep, SessionDep
from controlplane.errors import InvalidRequest
from controlplane.services import lookup

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post("/plan", operation_id="planJob")
def plan(
    session: SessionDep,
    _caller: CallerDep,
    body: dict[str, Any] = Body(
        ...,
        examples=[{"model": "axk1", "kind": "lora", "precision": "bf16", "pool": "kr-seoul-h200"}],
    ),
) -> dict[str, Any]:
    """Plan a job: ``{model, kind, precision?, seq_len?, micro_batch?, teacher?, lora_rank?}``
    and either ``pool`` (a registered pool's GPUs) or ``gpu_memory_gib`` + ``gpus_per_node``."""
    fields = dict(body)
    pool_ref = fields.pop("pool", None)
    pool = None
    if pool_ref is not None:
        if not isinstance(pool_ref, str):
            raise InvalidRequest("pool must be a pool name", details={"field": "pool"})
        row = lookup.pool(session, pool_ref)
        pool = (float(row.gpu_memory_gib), row.gpus_per_node)
    return planning.plan_request(fields, pool)
