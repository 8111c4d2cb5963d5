"""Names shared by the scheduler, the replicas and the gateway (server-made ids only)."""

from __future__ import annotations

SERVE_KIND = "serve"  # Job.kind of an endpoint's replica


def replica_app_name(job_id: str, attempt: int) -> str:
    """The Ray Serve application of one attempt of a replica job."""
    return f"nuri-{job_id}-a{attempt}"


def replica_deployment_name(job_id: str) -> str:
    """The deployment inside :func:`replica_app_name` (one replica, pinned)."""
    return f"replica-{job_id}"
