"""Entry point: ``python -m workers.run --spec spec.json [--ray-world-size N]``.

Without ``--ray-world-size`` the process runs one rank of the job, taking its rank from the
torch.distributed environment (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``, as set
by torchrun, DeepSpeed's launcher or the supervisor) or running alone. With it, the process
starts N Ray actors (joining ``RAY_ADDRESS`` or a local Ray) and waits for them. The exit
code is 0 when the job succeeded, 3 when it stopped for preemption (checkpoint kept), 1 when
it failed and 2 for an invalid spec.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from workers.spec import JobSpec, SpecError

EXIT_CODES = {"succeeded": 0, "failed": 1, "preempted": 3}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the job, print its result as JSON, return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m workers.run", description=__doc__)
    parser.add_argument("--spec", required=True, help="job spec (.json, .yaml or .yml)")
    parser.add_argument(
        "--ray-world-size", type=int, default=0, help="run N ranks as Ray actors (0: this process)"
    )
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        spec = JobSpec.from_file(args.spec)
    except (SpecError, OSError, ValueError) as exc:
        print(f"invalid spec: {exc}", file=sys.stderr)
        return 2
    if args.ray_world_size > 0:
        from workers.distributed import run_on_ray

        results = run_on_ray(spec, args.ray_world_size, address=args.ray_address)
        status = results[0].status
        print(json.dumps([r.to_dict() for r in results], default=str))
    else:
        from workers.runtime import run_job

        result = run_job(spec)
        status = result.status
        print(json.dumps(result.to_dict(), default=str))
    return EXIT_CODES.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
