"""Launching several admitted jobs at once on a real multi-node Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray

from controlplane.scheduler import RayExecutor
from controlplane.scheduler.executor import LaunchSpec, PlacementFailed, placement_group_name
from tests.integration.scheduler.conftest import NODES, POOL
from workers.execution import CapacityPlan, ExecutionPlan, JobDirs

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]


def spec(job_id: str, node: str, gpus: int, tmp: str) -> LaunchSpec:
    plan = ExecutionPlan(
        job_id=job_id,
        attempt=1,
        kind="finetune",
        payload="synthetic",
        model=None,
        teacher=None,
        inputs=(),
        capacity=CapacityPlan(gpus, 1, gpus, "bf16", 2, False, False, 1, 1, 128, 141.0, 8),
        knobs={"payload": "synthetic", "steps": 200, "step_seconds": 0.1},
        dirs=JobDirs.under(Path(tmp) / job_id),
    )
    return LaunchSpec(
        job_id=job_id, attempt=1, pool=POOL, assignment=((node, gpus),), plan=plan.to_dict()
    )


def test_jobs_launch_together_and_an_unplaceable_one_fails_alone(
    ray_cluster: Any, tmp_path: Any
) -> None:
    # Long enough for Ray to reserve real groups on a machine loaded by other test runs; the
    # ghost waits it out (twice: once beside the others, once alone), so not minutes.
    executor = RayExecutor(ready_timeout_s=30)
    alive = executor.inventory(set(NODES)).alive
    specs = [
        spec("launch-a", NODES[0], 4, str(tmp_path)),
        spec("launch-b", NODES[1], 8, str(tmp_path)),
        # Ray and the inventory disagree: no Ray node offers this Nuri node.
        spec("launch-ghost", "kr-ray-h200-999", 8, str(tmp_path)),
    ]
    try:
        failed = executor.launch_many(specs, alive)
        assert set(failed) == {"launch-ghost"}
        assert isinstance(failed["launch-ghost"], PlacementFailed)
        with pytest.raises(ValueError):  # its placement group was given up
            ray.util.get_placement_group(placement_group_name("launch-ghost", 1))
        for job_id, node in (("launch-a", NODES[0]), ("launch-b", NODES[1])):
            assert executor.placement(job_id, 1) == [alive[node]]
            assert executor._supervisor(job_id) is not None  # its supervisor was started
        # Launching again (a restarted control plane) finds what exists, creates nothing.
        assert executor.launch_many(specs[:2], alive) == {}
    finally:
        for s in specs:
            executor.teardown(s.job_id, 1)
