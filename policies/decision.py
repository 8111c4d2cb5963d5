"""Decisions, the per-request verdicts they are made of, and the bounded decision cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one policy question, with the rules that decided it.

    - ``allowed``: True only when a permit matched, no forbid fired and nothing failed;
    - ``policy_ids``: the ``@id``s that decided it — for a denial the forbid rules that fired,
      the rules that failed to evaluate, or (when no permit matched) the permits that could
      have allowed it; for an allow the permits that matched;
    - ``reasons``: one human-readable line per deciding rule (and per failure);
    - ``errors``: evaluation errors, verbatim but with rule ids; any error is a denial;
    - ``policy_set_hash``: which policy set decided it (for the audit record).
    """

    allowed: bool
    policy_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    errors: tuple[str, ...] = ()
    policy_set_hash: str = ""

    @property
    def denied(self) -> bool:
        """The opposite of ``allowed``."""
        return not self.allowed

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{allowed, policy_ids, reasons, errors, policy_set_hash}``."""
        return {
            "allowed": self.allowed,
            "policy_ids": list(self.policy_ids),
            "reasons": list(self.reasons),
            "errors": list(self.errors),
            "policy_set_hash": self.policy_set_hash,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """What Cedar said about one request, independent of the names shown to people.

    ``fired``: Cedar ids of the determining policies (the forbids that fired for a denial,
    the permits that matched for an allow); ``failed``: Cedar ids of policies that raised an
    error; ``errors``: the error messages; ``permitted``: Cedar's own answer was Allow. Any
    error makes the verdict a denial, whatever Cedar answered.
    """

    allowed: bool
    fired: tuple[str, ...]
    failed: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    permitted: bool = False


def combine(decisions: Iterable[Decision], policy_set_hash: str) -> Decision:
    """All of ``decisions`` must allow; ids, reasons and errors are merged in order, once each.

    No decisions at all is an allow (nothing was asked).
    """
    parts = decisions if isinstance(decisions, list | tuple) else tuple(decisions)
    allowed = all(part.allowed for part in parts)
    # An allow's permits explain nothing about a denial: keep only the denying parts.
    keep = parts if allowed else [part for part in parts if not part.allowed]
    if len(keep) == 1:
        only = keep[0]
        return Decision(allowed, only.policy_ids, only.reasons, only.errors, policy_set_hash)
    return Decision(
        allowed,
        tuple(dict.fromkeys(i for part in keep for i in part.policy_ids)),
        tuple(dict.fromkeys(r for part in keep for r in part.reasons)),
        tuple(dict.fromkeys(e for part in keep for e in part.errors)),
        policy_set_hash,
    )


class DecisionCache:
    """A bounded, thread-safe LRU map from request facts to verdicts.

    Keys are ``(policy-set hash, kind, facts)`` where the facts are the frozen dataclasses the
    Cedar entities were built from: equal facts mean equal entities (an entity digest without
    the hashing), and the hash keeps policy versions apart, so one cache may serve several
    policy sets. A ``maxsize`` of 0 disables caching.
    """

    def __init__(self, maxsize: int = 65_536) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Verdict | None:
        """The cached verdict for ``key``, or None (and counts the hit or miss)."""
        if self.maxsize == 0:
            return None
        with self._lock:
            verdict = self._entries.get(key)
            if verdict is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return verdict

    def put(self, key: Hashable, verdict: Verdict) -> None:
        """Remember ``verdict``; the least recently used entry goes when full."""
        if self.maxsize == 0:
            return
        with self._lock:
            self._entries[key] = verdict
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (statistics included)."""
        with self._lock:
            self._entries.clear()
            self.hits = 0
            self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)
