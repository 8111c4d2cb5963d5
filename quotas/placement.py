"""Gang and topology fit of one job onto one pool's nodes.

Rules (ARCHITECTURE section 4, issue 3 semantics 1):

* a job gets all its GPUs at once or none (a placement is computed before anything is taken);
* never more GPUs on a node than it has free;
* multi-node jobs take whole nodes, inside one interconnect domain when ``same_domain`` is
  asked, otherwise in as few domains as possible;
* single-node jobs best-fit (the node with the fewest free GPUs that still fit) so whole nodes
  stay free for gang jobs, and multi-node jobs best-fit the domain with the fewest whole
  free nodes that still suffice, so large islands stay intact.

Speed: nodes sit in buckets by free-GPU count and whole free nodes in per-domain lists, so a
fit costs O(GPUs per node + domains), not O(nodes). Within a cycle free capacity only
shrinks, so once a size failed every larger one fails too: :class:`PoolIndex` remembers the
smallest failing size and rejects in O(1).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from typing import NamedTuple

from quotas.snapshot import Node, PendingWorkload, Pool

Placement = list[tuple[int, int]]  # (node index in the pool, GPUs)


class Shape(NamedTuple):
    """How a job lands on a pool: ``nodes`` x ``gpus_per_node`` (= ``gpus``); ``whole`` =
    exclusive nodes. A named tuple because the cycle hashes shapes in its memos."""

    nodes: int
    gpus_per_node: int
    gpus: int
    whole: bool
    same_domain: bool


def _shape(nodes: int, per_node: int, whole: bool, same_domain: bool) -> Shape:
    return Shape(nodes, per_node, nodes * per_node, whole, same_domain)


def shape_for(job: PendingWorkload, pool: Pool) -> Shape | None:
    """The job's shape in ``pool``, or None when the request cannot map onto its nodes."""
    per_node = pool.gpus_per_node
    if job.gpus <= 0:
        return None
    if job.nodes is None or job.nodes == 1:
        if job.gpus <= per_node:
            return _shape(1, job.gpus, job.gpus == per_node, False)
        if job.nodes == 1 or job.gpus % per_node:
            return None
        return _shape(job.gpus // per_node, per_node, True, job.same_domain)
    if job.nodes < 1 or job.gpus != job.nodes * per_node:
        return None
    return _shape(job.nodes, per_node, True, job.same_domain)


def describe_shape(shape: Shape, pool: Pool) -> str:
    """Human description, e.g. ``16 x H200 (2 whole nodes) in one NVLink domain``."""
    text = f"{shape.gpus} x {pool.gpu_model}"
    if shape.nodes > 1:
        text += f" ({shape.nodes} whole nodes)"
        if shape.same_domain:
            text += f" in one {pool.domain_label}"
    else:
        text += " on one node"
    return text


class PoolIndex:
    """Free-GPU index of one pool's live nodes, mutated as the cycle places jobs."""

    def __init__(self, pool: Pool, nodes: Iterable[Node]):
        live = sorted((n for n in nodes if n.alive), key=lambda n: (n.domain, n.name))
        self.pool = pool
        self.names = [n.name for n in live]
        self.position = {name: i for i, name in enumerate(self.names)}
        self.domains = sorted({n.domain for n in live})
        domain_pos = {d: i for i, d in enumerate(self.domains)}
        self.domain_of = [domain_pos[n.domain] for n in live]
        self.total = [n.total_gpus for n in live]
        self.free = [n.free_gpus for n in live]
        self.max_total = max(self.total, default=0)
        self.capacity = sum(self.total)
        self.buckets: list[list[int]] = [[] for _ in range(self.max_total + 1)]
        self.whole: list[list[int]] = [[] for _ in self.domains]
        self.whole_count = 0
        self.free_total = 0
        for i, free in enumerate(self.free):
            self.buckets[free].append(i)
            if self._is_whole(i):
                self.whole[self.domain_of[i]].append(i)
                self.whole_count += 1
            self.free_total += free
        # Nodes that could ever be whole for a gang job, per domain (for "can never fit").
        capable = [0] * len(self.domains)
        for i, total in enumerate(self.total):
            if total == pool.gpus_per_node:
                capable[self.domain_of[i]] += 1
        self._capable_max = max(capable, default=0)
        self._capable_total = sum(capable)
        # Smallest single-node size / node count known not to fit (free only shrinks).
        self._fail_single = self.max_total + 1
        self._fail_multi = [1 << 30, 1 << 30]  # index: same_domain

    def _is_whole(self, i: int) -> bool:
        return self.free[i] == self.total[i] == self.pool.gpus_per_node

    def take(self, i: int, gpus: int) -> None:
        """Take ``gpus`` free GPUs of node ``i``."""
        if gpus <= 0:
            return
        free = self.free[i]
        if gpus > free:
            raise ValueError(f"node {self.names[i]}: taking {gpus} of {free} free GPUs")
        bucket = self.buckets[free]
        del bucket[bisect_left(bucket, i)]
        if self._is_whole(i):
            lst = self.whole[self.domain_of[i]]
            del lst[bisect_left(lst, i)]
            self.whole_count -= 1
        self.free[i] = free - gpus
        insort(self.buckets[free - gpus], i)
        self.free_total -= gpus

    def give(self, i: int, gpus: int) -> None:
        """Return ``gpus`` to node ``i`` (roll back a take); clears the failure memo."""
        if gpus <= 0:
            return
        free = self.free[i]
        bucket = self.buckets[free]
        del bucket[bisect_left(bucket, i)]
        self.free[i] = free + gpus
        insort(self.buckets[free + gpus], i)
        if self._is_whole(i):
            insort(self.whole[self.domain_of[i]], i)
            self.whole_count += 1
        self.free_total += gpus
        self._fail_single = self.max_total + 1
        self._fail_multi = [1 << 30, 1 << 30]

    def apply(self, placement: Placement) -> None:
        """Take every (node, GPUs) of a placement."""
        for i, gpus in placement:
            self.take(i, gpus)

    def can_ever_fit(self, shape: Shape) -> bool:
        """Whether the shape fits this pool when every live node is empty."""
        if shape.nodes == 1:
            return shape.gpus_per_node <= self.max_total
        limit = self._capable_max if shape.same_domain else self._capable_total
        return shape.nodes <= limit

    def free_nodes(self) -> int:
        """Nodes with at least one free GPU."""
        return len(self.free) - len(self.buckets[0])

    # -- fitting ---------------------------------------------------------------------------

    def place(self, shape: Shape) -> Placement | None:
        """Best placement on currently free GPUs, or None. Takes nothing."""
        if shape.nodes == 1:
            g = shape.gpus_per_node
            if g >= self._fail_single:
                return None
            for free in range(g, self.max_total + 1):
                if self.buckets[free]:
                    return [(self.buckets[free][0], g)]
            self._fail_single = g
            return None
        k = shape.nodes
        flag = int(shape.same_domain)
        if k >= self._fail_multi[flag]:
            return None
        found = self._place_whole(k, shape.same_domain, [len(lst) for lst in self.whole], None)
        if found is None:
            self._fail_multi[flag] = k
        return found

    def place_with_extra(self, shape: Shape, extra: dict[int, int]) -> Placement | None:
        """Best placement if the GPUs in ``extra`` (node -> GPUs) were also free. Takes nothing.

        Used to test a preemption plan (victims' GPUs) or a short backfill job (reserved
        GPUs) without touching the index.
        """
        if shape.nodes == 1:
            g = shape.gpus_per_node
            best: tuple[int, int] | None = None
            for free in range(g, self.max_total + 1):
                if self.buckets[free]:
                    best = (free, self.buckets[free][0])
                    break
            for i, more in extra.items():
                eff = self.free[i] + more
                if eff >= g and (best is None or (eff, i) < best):
                    best = (eff, i)
            return None if best is None else [(best[1], g)]
        counts = [len(lst) for lst in self.whole]
        promoted: list[int] = []
        per_node = self.pool.gpus_per_node
        for i, more in extra.items():
            if more > 0 and self.free[i] < self.total[i] == per_node == self.free[i] + more:
                counts[self.domain_of[i]] += 1
                promoted.append(i)
        return self._place_whole(shape.nodes, shape.same_domain, counts, promoted)

    def _place_whole(
        self, k: int, same_domain: bool, counts: list[int], promoted: list[int] | None
    ) -> Placement | None:
        per_node = self.pool.gpus_per_node
        # Best fit: the domain with the fewest whole free nodes that still holds the job.
        best = -1
        for d, count in enumerate(counts):
            if count >= k and (best < 0 or count < counts[best]):
                best = d
        if best >= 0:
            chosen = self._whole_nodes_in(best, k, promoted)
            return [(i, per_node) for i in chosen]
        if same_domain or sum(counts) < k:
            return None
        # Spread over as few domains as possible: largest islands first.
        picked: list[int] = []
        for d in sorted(range(len(counts)), key=lambda d: (-counts[d], d)):
            if counts[d]:
                picked.extend(self._whole_nodes_in(d, min(counts[d], k - len(picked)), promoted))
            if len(picked) == k:
                break
        return [(i, per_node) for i in picked]

    def _whole_nodes_in(self, domain: int, k: int, promoted: list[int] | None) -> list[int]:
        nodes = self.whole[domain]
        if promoted:
            nodes = sorted(nodes + [i for i in promoted if self.domain_of[i] == domain])
        return nodes[:k]

    def names_of(self, placement: Placement) -> tuple[tuple[str, int], ...]:
        """The placement with node names, in node order."""
        return tuple((self.names[i], g) for i, g in sorted(placement))
