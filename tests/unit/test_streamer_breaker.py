"""The circuit breaker: opens after N failures in a row, probes once after the cool-down."""

from __future__ import annotations

from services.streamer.breaker import BreakerState, CircuitBreaker


def test_breaker_opens_after_consecutive_failures() -> None:
    b = CircuitBreaker(failure_threshold=3, cooldown_s=5)
    for _ in range(2):
        b.failure(0.0)
    assert b.allow(0.0)
    b.failure(0.0)
    assert b.state is BreakerState.OPEN
    assert not b.allow(4.9)


def test_a_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failure_threshold=2, cooldown_s=5)
    b.failure(0.0)
    b.success()
    b.failure(0.0)
    assert b.state is BreakerState.CLOSED


def test_after_the_cooldown_one_probe_goes_through() -> None:
    b = CircuitBreaker(failure_threshold=1, cooldown_s=5)
    b.failure(0.0)
    assert b.allow(5.0)
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow(5.1)


def test_a_successful_probe_closes_and_a_failed_one_reopens() -> None:
    b = CircuitBreaker(failure_threshold=1, cooldown_s=5)
    b.failure(0.0)
    assert b.allow(5.0)
    b.failure(5.0)
    assert b.state is BreakerState.OPEN
    assert not b.allow(9.0)
    assert b.allow(10.0)
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.allow(10.0)
