"""Storing what a supervisor reported: metric samples, log lines, checkpoints, staged inputs.

Events are stored exactly once: the write is guarded on the job's attempt and on how many
events were stored before, so a concurrent tick (or a control plane that crashed after
reading them) cannot store the same events twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col

from controlplane.db.models import Job, JobEvent, JobLog, JobMetric
from controlplane.services import datasets


def store(s: Session, job: Job, events: list[dict[str, Any]], now: datetime) -> bool:
    """Add ``events`` in the caller's (fenced) session and commit; False, rolled back, when
    another writer moved the job's counter first."""
    ckpt: dict[str, Any] | None = None
    for ev in events:
        at = datetime.fromtimestamp(float(ev.get("at", now.timestamp())), UTC)
        if ev["type"] == "metric" and ev.get("rank", 0) == 0:  # one curve per job
            s.add(
                JobMetric(
                    job_id=job.id,
                    attempt=job.attempt,
                    at=at,
                    step=int(ev["step"]),
                    values=ev["values"],
                )
            )
        elif ev["type"] == "log":
            line = f"[rank {ev.get('rank', 0)}] {ev['line']}"[:4000]
            s.add(JobLog(job_id=job.id, attempt=job.attempt, at=at, line=line))
        elif ev["type"] == "checkpoint" and ev.get("rank", 0) == 0:
            ckpt = {"uri": ev["uri"], "step": ev["step"], "at": at}
        elif ev["type"] == "staged":
            _staged(s, job, at, ev.get("records", []))
    values: dict[str, Any] = {"observed_events": job.observed_events + len(events)}
    if ckpt is not None:
        values.update(checkpoint_uri=ckpt["uri"], last_checkpoint_at=ckpt["at"])
        s.add(
            JobEvent(
                job_id=job.id,
                at=ckpt["at"],
                type="checkpoint",
                attempt=job.attempt,
                message=f"checkpoint at step {ckpt['step']}",
                details={"uri": ckpt["uri"], "step": ckpt["step"]},
            )
        )
    result = s.execute(
        update(Job)
        .where(
            col(Job.id) == job.id,
            col(Job.attempt) == job.attempt,
            col(Job.observed_events) == job.observed_events,
        )
        .values(**values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        s.rollback()
        return False
    s.commit()
    job.observed_events += len(events)
    if ckpt is not None:
        job.checkpoint_uri, job.last_checkpoint_at = ckpt["uri"], ckpt["at"]
    return True


def _staged(s: Session, job: Job, at: datetime, raw: list[dict[str, Any]]) -> None:
    """What staging read, as a job event; a dataset read for the first time is pinned."""
    # An artifact read as a model lies in the jobs area: named, not located.
    records = [{**r, "uri": "nuri"} if str(r.get("id", "")).startswith("art_") else r for r in raw]
    s.add(
        JobEvent(
            job_id=job.id,
            at=at,
            type="staged",
            attempt=job.attempt,
            message=f"staged {len(records)} input(s), each verified",
            details={"records": records},
        )
    )
    datasets.pin_fingerprints(s, job.member_id, records)
