"""Weighted dominant-resource fair share with decayed historical usage.

Each pool is a resource. A member's *current* share is its dominant share
``max over pools of usage / capacity`` divided by its weight; its *historical* share is its
decayed GPU-seconds divided by what the whole cluster could have delivered over the same
decay window (``capacity * half_life / ln 2``), divided by its weight. The fair-share score
mixes both: ``(1 - history_weight) * current + history_weight * historical``. Lower score
goes first when members compete for borrowable capacity, so a member that used a lot last
week yields to one that did not, and the effect fades with the half-life.

Weights: ``Member.weight`` when set, otherwise the member's share of all nominal quota
(its entitlement), with a small floor so members without quota still get a turn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from quotas.snapshot import Member

MIN_WEIGHT = 1e-3


def decay_usage(previous: float, elapsed: float, gpus: float, half_life: float) -> float:
    """Decayed GPU-seconds after ``elapsed`` seconds of using ``gpus`` GPUs.

    Exact for constant use during the interval: old usage halves every ``half_life`` and the
    new usage is integrated with the same decay. The control plane and the simulator call
    this to keep ``Member.decayed_usage_gpu_seconds`` current.
    """
    if elapsed <= 0:
        return previous
    factor = math.exp(-math.log(2) * elapsed / half_life)
    return previous * factor + gpus * (half_life / math.log(2)) * (1.0 - factor)


def entitlement_weights(members: Iterable[Member]) -> dict[str, float]:
    """Fair-share weight of each member (explicit weight or share of all nominal quota)."""
    members = list(members)
    nominal = {m.name: sum(q.nominal for q in m.quotas.values()) for m in members}
    total = sum(nominal.values())
    weights: dict[str, float] = {}
    for member in members:
        if member.weight is not None:
            weights[member.name] = max(MIN_WEIGHT, member.weight)
        elif total > 0:
            weights[member.name] = max(MIN_WEIGHT, nominal[member.name] / total)
        else:
            weights[member.name] = 1.0 / max(1, len(members))
    return weights


class FairShare:
    """Fair-share scores, updated as the cycle admits work."""

    def __init__(
        self,
        members: Iterable[Member],
        capacity: Mapping[str, int],
        history_weight: float,
        half_life: float,
        use_history: bool = True,
    ):
        members = list(members)
        self.weights = entitlement_weights(members)
        self.capacity = {p: c for p, c in capacity.items() if c > 0}
        self.usage: dict[str, dict[str, int]] = {m.name: {} for m in members}
        alpha = min(1.0, max(0.0, history_weight)) if use_history else 0.0
        self.alpha = alpha
        window = sum(self.capacity.values()) * half_life / math.log(2)
        self.history = {
            m.name: (m.decayed_usage_gpu_seconds / window / self.weights[m.name])
            if window > 0
            else 0.0
            for m in members
        }
        self._dominant: dict[str, float] = {m.name: 0.0 for m in members}

    def add(self, member: str, pool: str, gpus: int) -> None:
        """Record ``gpus`` more (or fewer) GPUs in use by the member in the pool."""
        if member not in self.usage:
            return
        per_pool = self.usage[member]
        per_pool[pool] = per_pool.get(pool, 0) + gpus
        self._dominant[member] = (
            max(
                (used / self.capacity[p] for p, used in per_pool.items() if p in self.capacity),
                default=0.0,
            )
            / self.weights[member]
        )

    def dominant_share(self, member: str) -> float:
        """Current weighted dominant share."""
        return self._dominant.get(member, 0.0)

    def score(self, member: str) -> float:
        """Fair-share score: lower is served first."""
        return (1.0 - self.alpha) * self._dominant.get(member, 0.0) + self.alpha * self.history.get(
            member, 0.0
        )
