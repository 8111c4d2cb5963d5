"""The decision cache: bounded LRU, keyed by policy-set hash and facts, shared safely."""

from __future__ import annotations

import threading

import pytest
from policy_builders import fresh_engine, labels, pool

from policies import Decision, DecisionCache
from policies.decision import Verdict, combine

ALLOW = Verdict(allowed=True, fired=("policy0",), permitted=True)
DENY = Verdict(allowed=False, fired=("policy1",))


def test_lru_evicts_the_least_recently_used() -> None:
    cache = DecisionCache(maxsize=2)
    cache.put("a", ALLOW)
    cache.put("b", DENY)
    assert cache.get("a") == ALLOW  # a is now the most recent
    cache.put("c", ALLOW)
    assert cache.get("b") is None
    assert cache.get("a") == ALLOW
    assert cache.get("c") == ALLOW
    assert len(cache) == 2
    assert (cache.hits, cache.misses) == (3, 1)
    cache.clear()
    assert len(cache) == 0
    assert cache.hits == 0


def test_a_zero_size_cache_caches_nothing() -> None:
    cache = DecisionCache(maxsize=0)
    cache.put("a", ALLOW)
    assert cache.get("a") is None
    with pytest.raises(ValueError):
        DecisionCache(maxsize=-1)


def test_engine_cache_is_keyed_by_facts_not_names() -> None:
    engine = fresh_engine()
    engine.allowed_pools([labels()], [pool("p1"), pool("p2")])  # same site: one verdict
    assert len(engine.cache) == 1
    engine.allowed_pools([labels()], [pool("p3"), pool("busan", "kr-busan")])
    assert len(engine.cache) == 2
    assert engine.cache.hits >= 1


def test_cache_stays_bounded_under_load() -> None:
    engine = fresh_engine(cache_size=8)
    for clearance in ("open", "sensitive", "classified"):
        for region in ("kr-seoul", "kr-daejeon", "kr-busan", "jp-tokyo"):
            engine.placement([labels()], pool(region=region, max_classification=clearance))
    assert len(engine.cache) == 8


def test_concurrent_use_gives_the_same_decisions() -> None:
    engine = fresh_engine(cache_size=4)
    pools = [pool(f"p{i}", region) for i, region in enumerate(("kr-seoul", "kr-busan"))]
    expected = fresh_engine(cache_size=0).allowed_pools([labels()], pools)
    results: list[dict[str, Decision]] = []

    def work() -> None:
        for _ in range(20):
            results.append(engine.allowed_pools([labels()], pools))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result == expected for result in results)


def test_combine_keeps_only_the_denying_parts() -> None:
    allow = Decision(True, ("p.permit",), ("ok",))
    deny = Decision(False, ("f.region",), ("no",), ("boom",))
    assert combine([allow, allow], "h") == Decision(True, ("p.permit",), ("ok",), (), "h")
    assert combine([allow, deny, deny], "h") == Decision(
        False, ("f.region",), ("no",), ("boom",), "h"
    )
    assert combine([], "h").allowed
