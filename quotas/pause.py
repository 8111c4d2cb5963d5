"""Placement paused: a cycle's decisions when the cluster cannot take new work.

When the Ray cluster that runs the work is not ready (KubeRay reports its head pod down), the
control plane still runs the admission engine, so every waiting job keeps its own reasons, and
then passes the decisions through :func:`pause`: nothing is admitted, nobody is preempted to
make room that could not be used, no reservation is held, and every job that would have
started or keeps waiting says first that placement is paused, and why. Pure, like the engine.
"""

from __future__ import annotations

from quotas.decisions import PLACEMENT_PAUSED, REASON_RANK, Decisions, Pending, Reason


def pause(decisions: Decisions, message: str) -> Decisions:
    """``decisions`` with placement paused for ``message`` (see the module docstring).

    The jobs the engine would have admitted come first in the queue, in admission order, then
    the jobs that were already waiting in their order; no ETA is given while paused.
    """
    paused = Reason(PLACEMENT_PAUSED, f"placement is paused: {message}")
    pending = [Pending(a.job_id, (paused,), 0, None) for a in decisions.admitted]
    for p in sorted(decisions.pending, key=lambda p: p.position):
        reasons = tuple(
            sorted(
                (paused, *(r for r in p.reasons if r.code != PLACEMENT_PAUSED)),
                key=lambda r: REASON_RANK.get(r.code, len(REASON_RANK)),
            )
        )
        pending.append(Pending(p.job_id, reasons, 0, None))
    return Decisions(
        pending=tuple(Pending(p.job_id, p.reasons, i, None) for i, p in enumerate(pending, start=1))
    )
