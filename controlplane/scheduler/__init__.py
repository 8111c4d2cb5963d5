"""The scheduler service: reconciles the database, the admission engine and a real Ray.

``SchedulerService.tick`` is one cycle (see ``service`` for its phases); ``RayExecutor`` is
the only code that talks to Ray; ``lease`` elects one leader among replicas and fences a stale
leader's writes; ``usage`` keeps GPU-seconds exact. The supervisor actor in ``supervisor``
runs on the cluster and never touches the database.
"""

from controlplane.scheduler.executor import RayExecutor
from controlplane.scheduler.service import CycleReport, SchedulerConfig, SchedulerService

__all__ = ["CycleReport", "RayExecutor", "SchedulerConfig", "SchedulerService"]
