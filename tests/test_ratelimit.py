"""The operator's client-side rate limit (token bucket), on a fake clock."""

from __future__ import annotations

import threading

import pytest

from aistack.kube import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_requests_are_spaced_by_the_rate() -> None:
    clock = Clock()
    limit = RateLimit(qps=10, burst=3, clock=clock)
    assert [limit.delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.delay() == pytest.approx(0.1)
    assert limit.delay() == pytest.approx(0.2)  # queued behind the one before
    clock.now += 1.0  # a second later the bucket has refilled (minus the debt)
    assert limit.delay() == 0.0


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    clock = Clock()
    limit = RateLimit(qps=10, burst=2, clock=clock)
    clock.now += 3600
    assert [limit.delay() for _ in range(2)] == [0.0, 0.0]
    assert limit.delay() > 0


def test_no_limit_when_qps_is_zero() -> None:
    limit = RateLimit(qps=0, burst=1)
    assert all(limit.delay() == 0.0 for _ in range(1000))


def test_threads_share_one_bucket() -> None:
    clock = Clock()
    limit = RateLimit(qps=100, burst=50, clock=clock)
    delays: list[float] = []

    def take() -> None:
        for _ in range(25):
            delays.append(limit.delay())

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for d in delays if d == 0.0) == 50
    assert max(delays) == pytest.approx(0.5)  # the 100th request waits 50 tokens at 100/s
