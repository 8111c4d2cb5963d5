"""What submission validation reads on every request, cached briefly per engine.

Pools, their node counts and the priority classes change a few times a day, while jobs are
submitted hundreds of times a second. Each process keeps them for ``TTL_S`` seconds and drops
them at once when it changes the inventory itself; another replica sees a change within
``TTL_S``. Staleness only affects the *early* capacity check at submission: admission always
works from a fresh snapshot.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controlplane import residency
from controlplane.db.models import Node, NodeStatus, Pool, PriorityClass
from policies import PoolFacts

TTL_S = 2.0


@dataclass(frozen=True, slots=True)
class PoolShape:
    """What a pool can ever hold: per-node GPUs, usable nodes, nodes in its largest domain."""

    name: str
    gpus_per_node: int
    nodes: int
    largest_domain_nodes: int
    gpu_memory_gib: float = 0.0


@dataclass(frozen=True, slots=True)
class Catalog:
    shapes: dict[str, PoolShape]
    # priority class name -> preemptible
    priority_classes: dict[str, bool]
    # pool name -> admin-asserted residency facts
    pool_facts: dict[str, PoolFacts]


_lock = threading.Lock()
_cache: weakref.WeakKeyDictionary[Engine, tuple[float, Catalog]] = weakref.WeakKeyDictionary()


def load(session: Session) -> Catalog:
    """Read the catalog from the database (uncached); also refreshes the active policy set."""
    residency.sync(session)
    pools = {p.id: p for p in session.exec(select(Pool)).all()}
    counts = session.exec(
        select(Node.pool_id, Node.domain, func.count(col(Node.id)))
        .where(Node.status != NodeStatus.DOWN.value)
        .group_by(col(Node.pool_id), col(Node.domain))
    ).all()
    per_pool: dict[str, list[int]] = {pid: [] for pid in pools}
    for pool_id, _domain, n in counts:
        per_pool.setdefault(pool_id, []).append(int(n))
    shapes = {
        p.name: PoolShape(
            p.name,
            p.gpus_per_node,
            sum(per_pool[pid]),
            max(per_pool[pid] or [0]),
            float(p.gpu_memory_gib),
        )
        for pid, p in pools.items()
    }
    classes = {pc.name: pc.preemptible for pc in session.exec(select(PriorityClass)).all()}
    facts = {f.name: f for f in residency.pool_facts(pools.values())}
    return Catalog(shapes=shapes, priority_classes=classes, pool_facts=facts)


def get(session: Session) -> Catalog:
    """The catalog, from the per-engine cache when it is younger than ``TTL_S``."""
    engine = session.get_bind()
    if not isinstance(engine, Engine):
        return load(session)
    now = time.monotonic()
    with _lock:
        hit = _cache.get(engine)
    if hit is not None and hit[0] > now:
        return hit[1]
    fresh = load(session)
    with _lock:
        _cache[engine] = (now + TTL_S, fresh)
    return fresh


def invalidate(session: Session) -> None:
    """Forget the cached catalog of this session's engine (after an inventory change)."""
    engine = session.get_bind()
    with _lock:
        if isinstance(engine, Engine):
            _cache.pop(engine, None)
