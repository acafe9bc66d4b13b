"""The circuit breaker's rules, on a hand-driven clock (no sleeping, no network)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mesh.breaker import (
    BreakerOpen,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    counts_as_failure,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "details")


def breaker(clock: Clock, **settings: float) -> CircuitBreaker:
    return CircuitBreaker(
        "location_svc",
        BreakerSettings(**settings),  # type: ignore[arg-type]
        clock=clock,
        wall_clock=lambda: clock.now + 1_000_000,
    )


async def ok() -> str:
    return "ok"


async def down() -> str:
    raise rpc_error(grpc.StatusCode.UNAVAILABLE)


async def outcome(b: CircuitBreaker, fn) -> str:  # type: ignore[no-untyped-def]
    try:
        return await b.call(fn)
    except BreakerOpen:
        return "refused"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name


async def test_it_opens_at_half_failures_over_three_calls_and_not_before() -> None:
    clock = Clock()
    b = breaker(clock)
    assert [await outcome(b, down), await outcome(b, down)] == ["UNAVAILABLE"] * 2
    assert b.state is BreakerState.CLOSED  # two calls: below the volume threshold
    assert await outcome(b, ok) == "ok"
    # 2 of 3 failed, but the latest call succeeded: a breaker opens on a failure, as opossum.
    assert b.state is BreakerState.CLOSED
    assert await outcome(b, down) == "UNAVAILABLE"  # 3 failed of 4: opens
    assert b.state is BreakerState.OPEN
    snap = b.snapshot()
    assert (snap.failures, snap.calls) == (3, 4)
    assert snap.open_until == pytest.approx(clock.now + 1_000_000 + 30.0)


async def test_a_minority_of_failures_keeps_it_closed() -> None:
    clock = Clock()
    b = breaker(clock)
    for fn in (ok, down, ok, ok, down, ok):
        await outcome(b, fn)
    assert b.state is BreakerState.CLOSED
    assert (b.snapshot().failures, b.snapshot().calls) == (2, 6)


async def test_open_refuses_without_calling_then_one_trial_decides() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        await outcome(b, down)
    called = 0

    async def counted() -> str:
        nonlocal called
        called += 1
        return "ok"

    assert await outcome(b, counted) == "refused"
    assert called == 0
    clock.now += 29.9
    assert await outcome(b, counted) == "refused"
    clock.now += 0.2
    assert b.state is BreakerState.HALF_OPEN
    # One trial at a time: a second caller is refused while it runs.
    release = asyncio.Event()

    async def slow_ok() -> str:
        await release.wait()
        return "ok"

    trial = asyncio.create_task(outcome(b, slow_ok))
    await asyncio.sleep(0)
    assert await outcome(b, counted) == "refused"
    release.set()
    assert await trial == "ok"
    assert b.state is BreakerState.CLOSED
    assert (b.snapshot().failures, b.snapshot().calls) == (0, 0)  # a fresh window
    assert await outcome(b, counted) == "ok" and called == 1


async def test_a_failed_trial_opens_it_for_another_spell() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        await outcome(b, down)
    clock.now += 30.0
    assert await outcome(b, down) == "UNAVAILABLE"
    assert b.state is BreakerState.OPEN
    clock.now += 29.0
    assert await outcome(b, ok) == "refused"
    clock.now += 1.0
    assert await outcome(b, ok) == "ok"
    assert b.state is BreakerState.CLOSED


async def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    b = breaker(clock, window_s=10.0)
    await outcome(b, down)
    await outcome(b, down)
    clock.now += 10.5
    await outcome(b, down)  # the first two are gone: one call in the window
    assert b.state is BreakerState.CLOSED
    assert (b.snapshot().failures, b.snapshot().calls) == (1, 1)


async def test_refusals_by_the_dependency_count_as_health_and_pass_through() -> None:
    clock = Clock()
    b = breaker(clock)

    async def not_found() -> str:
        raise rpc_error(grpc.StatusCode.NOT_FOUND)

    for _ in range(5):
        assert await outcome(b, not_found) == "NOT_FOUND"
    assert b.state is BreakerState.CLOSED
    assert (b.snapshot().failures, b.snapshot().calls) == (0, 5)


async def test_a_call_that_outlives_its_timeout_counts_as_a_failure() -> None:
    clock = Clock()
    b = breaker(clock, call_timeout_s=0.01)

    async def hangs() -> str:
        await asyncio.Event().wait()
        return "never"

    for _ in range(3):
        with pytest.raises(TimeoutError):
            await b.call(hangs)
    assert b.state is BreakerState.OPEN


def test_what_counts_as_a_failure() -> None:
    assert counts_as_failure(rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert counts_as_failure(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert counts_as_failure(ConnectionRefusedError())
    assert counts_as_failure(TimeoutError())
    assert not counts_as_failure(rpc_error(grpc.StatusCode.INVALID_ARGUMENT))
    assert not counts_as_failure(rpc_error(grpc.StatusCode.FAILED_PRECONDITION))
    assert not counts_as_failure(ValueError("a bug of ours, not the dependency's"))


def test_settings_are_checked() -> None:
    for bad in ({"failure_ratio": 0}, {"min_calls": 0}, {"open_s": 0}, {"call_timeout_s": -1}):
        with pytest.raises(ValueError):
            BreakerSettings(**bad)  # type: ignore[arg-type]
