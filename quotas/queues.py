"""Phase 1 of a cycle: pending jobs become queue heads, resolved against the snapshot.

A head carries the job's priority value, whether it may be preempted, and its shape in every
allowed pool (``None`` where the request cannot map onto the pool's nodes). Jobs asking for
the same thing share one shapes tuple, which keeps the engine's memos cheap to hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from quotas import decisions as codes
from quotas.decisions import Reason
from quotas.explain import PendingRecord
from quotas.placement import Shape, shape_for
from quotas.snapshot import PendingWorkload, Pool, Snapshot


@dataclass(slots=True)
class Head:
    """A queued job with what phase 1 resolved: priority and its shape in each known pool."""

    job: PendingWorkload
    priority: int
    preemptible: bool
    shapes: tuple[tuple[str, Shape | None], ...]
    # (member, priority, preemptible, id of the shapes tuple): what makes two heads fail
    # alike, hashed once per lookup without re-hashing the shapes (see ``_Cycle._signature``).
    key: tuple[str, int, bool, int]
    # Order inside the member's queue: higher priority first, then FIFO, then job id.
    order: tuple[int, float, str]


def queue_heads(snapshot: Snapshot) -> tuple[list[Head], list[PendingRecord]]:
    """Phase 1: every pending job as a queue head with its shape per pool, or as an invalid
    request (unknown member or class, no GPUs, no known pool) with its reason."""
    pools = {p.name: p for p in snapshot.pools}
    classes = {c.name: c for c in snapshot.priority_classes}
    members = {m.name for m in snapshot.members}
    heads: list[Head] = []
    invalid: list[PendingRecord] = []
    shape_cache: dict[tuple[str, int, int | None, bool], tuple[str, Shape | None]] = {}
    # Jobs asking the same thing share one shapes tuple (cheaper to hash in the memos).
    shapes_of: dict[
        tuple[tuple[str, ...], int, int | None, bool],
        tuple[tuple[tuple[str, Shape | None], ...], int],
    ] = {}
    shape_ids: dict[tuple[tuple[str, Shape | None], ...], int] = {}
    # No sort needed: member queues sort on a total order ending in the job id.
    for job in snapshot.pending:
        pclass = classes.get(job.priority_class)
        if pclass is None or job.member not in members or job.gpus <= 0 or job.max_runtime <= 0:
            if job.member not in members:
                problem = f"unknown member {job.member}"
            elif pclass is None:
                problem = f"unknown priority class {job.priority_class}"
            else:
                problem = "a job needs at least one GPU and a positive max runtime"
            reason = Reason(codes.INVALID_REQUEST, problem)
            invalid.append(PendingRecord(job, [reason], None, None, True))
            continue
        request = (job.allowed_pools, job.gpus, job.nodes, job.same_domain)
        found = shapes_of.get(request)
        if found is None:
            shapes = tuple(
                _shape(shape_cache, job, pools[p]) for p in job.allowed_pools if p in pools
            )
            # Equal shapes tuples (e.g. nodes None or 1) share one id.
            found = shapes_of[request] = (shapes, shape_ids.setdefault(shapes, len(shape_ids)))
        shapes, shapes_id = found
        if not shapes:
            reason = Reason(
                codes.NO_ALLOWED_POOL,
                "no pool may run this job (residency of its data or unknown pools)",
            )
            invalid.append(PendingRecord(job, [reason], None, None, True))
            continue
        value, preemptible = pclass.value, pclass.preemptible
        heads.append(
            Head(
                job,
                value,
                preemptible,
                shapes,
                (job.member, value, preemptible, shapes_id),
                (-value, job.submitted_at, job.job_id),
            )
        )
    return heads, invalid


def _shape(
    cache: dict[tuple[str, int, int | None, bool], tuple[str, Shape | None]],
    job: PendingWorkload,
    pool: Pool,
) -> tuple[str, Shape | None]:
    key = (pool.name, job.gpus, job.nodes, job.same_domain)
    found = cache.get(key)
    if found is None:
        found = cache[key] = (pool.name, shape_for(job, pool))
    return found
