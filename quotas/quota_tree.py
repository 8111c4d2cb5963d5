"""Quota arithmetic over the cohort tree (Kueue's hierarchical-cohort model).

For every tree node ``n`` (member or cohort) and pool:

* ``guaranteed(n) = subtree_quota(n) - lending_limit(n)`` when a lending limit is set, else 0:
  the part of ``n``'s quota nobody outside ``n`` may ever use.
* ``subtree_quota(cohort) = own nominal + sum(subtree_quota(c) - guaranteed(c))`` over its
  children: what the cohort's children pool together for sharing.
* ``usage(cohort) = sum(max(0, usage(c) - guaranteed(c)))``: the children's usage that draws
  on the shared part.
* ``available(n) = max(0, guaranteed(n) - usage(n)) + available_from_parent(n)``, where the
  parent part is capped by ``n``'s borrowing limit; at the root it is
  ``subtree_quota - usage``.

So a member can never exceed ``nominal + borrowing_limit``, never takes more of another
member's nominal than that member's lending limit allows, and the cohort never hands out more
than its members' quota.

A member with no quota of its own in a pool whose ``default_borrowing_limit`` is set gets
``Quota(nominal=0, borrowing_limit=default)`` there: it borrows at most that many GPUs (0:
none). Without a default (``None``) it borrows without a limit of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache

from quotas.snapshot import Cohort, Member, Quota

NO_DEFAULTS: Mapping[str, int | None] = {}

QuotaItems = tuple[tuple[str, Quota], ...]
TreeKey = tuple[
    tuple[tuple[str, str | None, QuotaItems], ...],  # cohorts: name, parent, quotas
    tuple[tuple[str, str, QuotaItems], ...],  # members: name, cohort, quotas
    tuple[str, ...],  # pools
]


class _Structure:
    """The usage-independent part of the tree: built once per distinct quota configuration
    (a pure function of it, memoised) and shared read-only by the cycles that use it."""

    def __init__(self, key: TreeKey):
        cohorts, members, pools = key
        self.index: dict[str, int] = {}
        self.parent: list[int] = []
        self.children: list[list[int]] = []
        self.quota: list[dict[str, Quota]] = []
        self.names: list[str] = []
        self.member_index: dict[str, int] = {}
        for name, _, quotas in cohorts:
            self._add("cohort:" + name, name, dict(quotas))
        for name, _, quotas in members:
            self.member_index[name] = self._add("member:" + name, name, dict(quotas))
        for name, parent, _ in cohorts:
            if parent is not None:
                self._link(self.index["cohort:" + name], self.index["cohort:" + parent])
        for name, cohort, _ in members:
            if cohort:
                self._link(self.index["member:" + name], self.index["cohort:" + cohort])
        n = len(self.parent)
        self.subtree: dict[str, list[int]] = {p: [0] * n for p in pools}
        self.guaranteed: dict[str, list[int]] = {p: [0] * n for p in pools}
        order = self._post_order()
        for pool in pools:
            for node in order:
                self._refresh_quota(node, pool)
        # Flat per-pool nominal arrays: the hot path of a cycle reads them for every head.
        self.nominal: dict[str, list[int]] = {
            p: [q[p].nominal if p in q else 0 for q in self.quota] for p in pools
        }

    def _add(self, key: str, name: str, quotas: dict[str, Quota]) -> int:
        idx = len(self.parent)
        self.index[key] = idx
        self.names.append(name)
        self.parent.append(-1)
        self.children.append([])
        self.quota.append(quotas)
        return idx

    def _link(self, child: int, parent: int) -> None:
        self.parent[child] = parent
        self.children[parent].append(child)

    def _post_order(self) -> list[int]:
        order: list[int] = []
        roots = [i for i, p in enumerate(self.parent) if p < 0]
        stack: list[tuple[int, bool]] = [(r, False) for r in reversed(roots)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(self.children[node]))
        return order

    def _refresh_quota(self, node: int, pool: str) -> None:
        quota = self.quota[node].get(pool)
        total = quota.nominal if quota else 0
        for child in self.children[node]:
            total += self.subtree[pool][child] - self.guaranteed[pool][child]
        self.subtree[pool][node] = total
        lending = quota.lending_limit if quota else None
        self.guaranteed[pool][node] = max(0, total - lending) if lending is not None else 0


@lru_cache(maxsize=32)
def _structure(key: TreeKey) -> _Structure:
    return _Structure(key)


def _items(quotas: Mapping[str, Quota]) -> QuotaItems:
    return tuple(sorted(quotas.items()))


def _member_items(quotas: Mapping[str, Quota], defaults: Mapping[str, Quota]) -> QuotaItems:
    """A member's own quotas plus the pool defaults where it has none."""
    if not defaults:
        return _items(quotas)
    return _items({**defaults, **quotas})


class QuotaTree:
    """Mutable per-cycle quota state; usage changes as the cycle admits and preempts.

    ``defaults`` maps a pool to its ``default_borrowing_limit`` (see :class:`Pool
    <quotas.snapshot.Pool>`); pools left out, or mapped to None, have none.
    """

    def __init__(
        self,
        cohorts: Iterable[Cohort],
        members: Iterable[Member],
        pools: list[str],
        defaults: Mapping[str, int | None] = NO_DEFAULTS,
    ):
        implied = {
            pool: Quota(nominal=0, borrowing_limit=limit)
            for pool, limit in defaults.items()
            if limit is not None and pool in pools
        }
        key: TreeKey = (
            tuple(sorted((c.name, c.parent, _items(c.quotas)) for c in cohorts)),
            tuple(sorted((m.name, m.cohort, _member_items(m.quotas, implied)) for m in members)),
            tuple(pools),
        )
        shape = _structure(key)
        self.pools = pools
        self.member_index = shape.member_index
        self._parent = shape.parent
        self._quota = shape.quota
        self._names = shape.names
        self._subtree = shape.subtree
        self._guaranteed = shape.guaranteed
        self._nominal = shape.nominal
        n = len(self._parent)
        self._usage: dict[str, list[int]] = {p: [0] * n for p in pools}
        self.version = 0  # bumped by every usage change, for callers' caches

    # -- queries -------------------------------------------------------------------------

    def nominal(self, member: str, pool: str) -> int:
        """The member's nominal (guaranteed) GPUs in the pool."""
        return self._nominal[pool][self.member_index[member]]

    def borrowing_limit(self, member: str, pool: str) -> int | None:
        """The member's borrowing limit in the pool (None = unlimited); without a quota of
        its own, the pool's default borrowing limit."""
        quota = self._quota[self.member_index[member]].get(pool)
        return quota.borrowing_limit if quota else None

    def usage(self, member: str, pool: str) -> int:
        """GPUs the member holds in the pool (running + admitted this cycle)."""
        return self._usage[pool][self.member_index[member]]

    def unused_nominal(self, member: str, pool: str) -> int:
        """Nominal GPUs the member does not use right now."""
        i = self.member_index[member]
        return max(0, self._nominal[pool][i] - self._usage[pool][i])

    def borrowed(self, member: str, pool: str) -> int:
        """GPUs the member uses above its nominal quota."""
        return max(0, self.usage(member, pool) - self.nominal(member, pool))

    def available(self, member: str, pool: str) -> int:
        """GPUs the member may still take in the pool under every limit up the tree."""
        return max(0, self._available(self.member_index[member], pool))

    def _available(self, node: int, pool: str) -> int:
        sub, guar, use = self._subtree[pool], self._guaranteed[pool], self._usage[pool]
        parent = self._parent[node]
        if parent < 0:
            return sub[node] - use[node]
        local = max(0, guar[node] - use[node])
        from_parent = self._available(parent, pool)
        quota = self._quota[node].get(pool)
        limit = quota.borrowing_limit if quota else None
        if limit is not None:
            stored = sub[node] - guar[node]
            used = max(0, use[node] - guar[node])
            from_parent = min(from_parent, stored - used + limit)
        return local + from_parent

    # -- updates -------------------------------------------------------------------------

    def add_usage(self, member: str, pool: str, gpus: int) -> None:
        """Add (or, with negative ``gpus``, remove) usage and propagate it up the tree."""
        if pool not in self._usage:
            return
        self.version += 1
        node = self.member_index[member]
        use, guar = self._usage[pool], self._guaranteed[pool]
        delta = gpus
        while node >= 0 and delta != 0:
            before = max(0, use[node] - guar[node])
            use[node] += delta
            after = max(0, use[node] - guar[node])
            delta = after - before  # what the parent sees changes only above guaranteed
            node = self._parent[node]

    def cohort_of(self, member: str) -> str:
        """Name of the member's parent cohort ('' for a member without one)."""
        parent = self._parent[self.member_index[member]]
        return self._names[parent] if parent >= 0 else ""

    def quota(self, member: str, pool: str) -> Quota | None:
        """The quota the tree applies to the member in the pool (its own, or the pool's
        default), None when it has neither."""
        return self._quota[self.member_index[member]].get(pool)
