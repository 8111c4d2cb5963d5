"""Multi-rank jobs on Ray: one actor per rank, one torch.distributed group across them.

:func:`run_on_ray` starts ``world_size`` :class:`RankActor` s — in the bundles of a placement
group when the scheduler pinned one (bundle i holds rank i), otherwise wherever Ray puts them —
asks rank 0 for its node address and a free port, and has every actor run
:func:`workers.runtime.run_job` with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
set, exactly as torchrun would. gloo on CPU, NCCL on GPU (chosen inside ``run_job``).

Actors are named ``job-<id>-rank-<r>`` so a retried supervisor finds the ones a crashed
attempt left instead of starting duplicates (it kills them first).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from workers.runtime import JobResult
from workers.spec import JobSpec

# Environment every rank needs whatever the host's defaults are.
_RANK_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _actor_class() -> Any:
    import ray

    @ray.remote
    class RankActor:
        """Runs one rank of a job in its own process."""

        def address(self) -> tuple[str, int]:
            from workers.runtime import free_port

            util: Any = ray.util  # untyped
            return util.get_node_ip_address(), free_port()

        def run(
            self, spec_dict: dict[str, Any], rank: int, world: int, master: tuple[str, int]
        ) -> dict[str, Any]:
            from workers.runtime import run_rank

            return run_rank(JobSpec.from_dict(spec_dict), rank, world, master).to_dict()

    return RankActor


def run_on_ray(
    spec: JobSpec,
    world_size: int,
    placement_group: Any = None,
    num_cpus_per_rank: float = 1.0,
    num_gpus_per_rank: float = 0.0,
    address: str | None = None,
    timeout_s: float | None = None,
) -> list[JobResult]:
    """Run ``spec`` on ``world_size`` Ray actors and return each rank's :class:`JobResult`."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not ray.is_initialized():
        # "local" (a new Ray of its own), never ray.init's guess: the machine's last
        # `ray start`, which may be anyone's.
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=False)
    env = {**_RANK_ENV}
    for key in ("DS_ACCELERATOR", "NURI_JOB_TOKEN"):
        if key in os.environ:
            env[key] = os.environ[key]
    actor_cls = _actor_class()
    actors = []
    for rank in range(world_size):
        name = f"job-{spec.job_id}-rank-{rank}"
        with contextlib.suppress(ValueError):  # no actor left by a crashed attempt
            ray.kill(ray.get_actor(name))
        options: dict[str, Any] = {
            "name": name,
            "num_cpus": num_cpus_per_rank,
            "num_gpus": num_gpus_per_rank,
            "runtime_env": {"env_vars": env},
            "max_restarts": 0,
        }
        if placement_group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=placement_group, placement_group_bundle_index=rank
            )
        actors.append(actor_cls.options(**options).remote())
    try:
        master = ray.get(actors[0].address.remote(), timeout=timeout_s)
        spec_dict = spec.to_dict()
        futures = [a.run.remote(spec_dict, r, world_size, master) for r, a in enumerate(actors)]
        raw = ray.get(futures, timeout=timeout_s)
    finally:
        for actor in actors:
            ray.kill(actor)
    return [JobResult(**r) for r in raw]
