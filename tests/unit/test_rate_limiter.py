"""Properties of the per-token rate limiter (controlplane.api.limits.RateLimiter)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.api.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


rates = st.floats(min_value=0.01, max_value=1000, allow_nan=False, allow_infinity=False)
bursts = st.integers(min_value=1, max_value=50)
gaps = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(rates, bursts, gaps)
def test_no_window_admits_more_than_burst_plus_rate_times_its_length(
    rate: float, burst: int, steps: list[float]
) -> None:
    clock = Clock()
    limiter = RateLimiter(rate, burst, clock)
    allowed: list[float] = []
    for step in steps:
        clock.now += step
        if limiter.take("t") == 0.0:
            allowed.append(clock.now)
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            # requests admitted in [start, allowed[j]]: j - i + 1
            assert j - i + 1 <= burst + rate * (allowed[j] - start) + 1e-6


@settings(max_examples=300, deadline=None)
@given(rates, bursts, gaps)
def test_a_refusal_says_truly_when_the_next_request_is_admitted(
    rate: float, burst: int, steps: list[float]
) -> None:
    clock = Clock()
    limiter = RateLimiter(rate, burst, clock)
    for step in steps:
        clock.now += step
        wait = limiter.take("t")
        if wait > 0:
            assert wait <= 1 / rate + 1e-9
            clock.now += wait * (1 + 1e-9) + 1e-12
            assert limiter.take("t") == 0.0


@settings(max_examples=100, deadline=None)
@given(rates, bursts, st.integers(min_value=1, max_value=30))
def test_tokens_have_their_own_buckets_and_a_burst_is_served_at_once(
    rate: float, burst: int, others: int
) -> None:
    clock = Clock()
    limiter = RateLimiter(rate, burst, clock)
    for n in range(others):
        for _ in range(burst):
            assert limiter.take(f"other-{n}") == 0.0
    assert [limiter.take("t") for _ in range(burst)] == [0.0] * burst
    assert limiter.take("t") > 0


def test_zero_rate_is_off() -> None:
    limiter = RateLimiter(0.0, 1)
    assert not limiter.enabled
    assert all(limiter.take("t") == 0.0 for _ in range(1000))


def test_memory_stays_bounded_by_active_tokens() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 5, clock)
    limiter._PRUNE_AT = 100
    for n in range(1000):
        clock.now += 1.0  # each earlier token's bucket has refilled by now
        limiter.take(f"tok-{n}")
    assert len(limiter._buckets) <= 101
