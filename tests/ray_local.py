"""A local Ray for tests that start their own (``ray.init(address="local")``).

Ray waits a fixed 30 s for a new node's raylet to register with its GCS and then gives up
("The current node timed out during startup"); on a loaded machine that wait is too short
now and then. :func:`init_local_ray` tries again, after a shutdown, a bounded number of times.
"""

from __future__ import annotations

from typing import Any

import ray

STARTUP_TIMED_OUT = "timed out during startup"


def init_local_ray(attempts: int = 3, **options: Any) -> Any:
    """``ray.init(address="local", **options)``, retried when the node's start timed out."""
    for attempt in range(1, attempts + 1):
        try:
            return ray.init(address="local", **options)
        except Exception as exc:
            if STARTUP_TIMED_OUT not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
    raise AssertionError("unreachable")
