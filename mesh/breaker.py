"""A circuit breaker for calls to another service, with the seed's semantics.

Closed, calls pass and their outcomes are counted over a rolling window. Once the window holds
at least ``min_calls`` outcomes of which at least ``failure_ratio`` failed, the breaker opens:
calls fail at once with :class:`BreakerOpen` (the caller queues its work for later) for
``open_s`` seconds. Then it is half-open: one trial call at a time goes through; a success closes
the breaker with a fresh window, a failure opens it again for another ``open_s``.

What counts as a failure is a question of the dependency's health, not of the call's outcome: a
NOT_FOUND or INVALID_ARGUMENT answer proves the dependency up and counts as a success, while
UNAVAILABLE, DEADLINE_EXCEEDED, a timeout or a broken connection count against it.

The libraries that fit asyncio (purgatory, aiobreaker) open after so many consecutive
failures; the seed asks for a failure ratio over a minimum volume (as opossum, Hystrix and
resilience4j do), which this small class provides.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

T = TypeVar("T")

#: gRPC codes that say the dependency is unwell (rather than that the request was refused).
UNHEALTHY_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.CANCELLED,
    }
)


def counts_as_failure(exc: BaseException) -> bool:
    """The default judgement: gRPC errors by code, timeouts and connection errors always."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in UNHEALTHY_CODES
    return isinstance(exc, TimeoutError | OSError | ConnectionError)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """The seed's numbers by default: 50% failures over at least 3 calls, 30 s open."""

    #: The share of failed calls in the window that opens the breaker.
    failure_ratio: float = 0.5
    #: How many calls the window must hold before the ratio counts.
    min_calls: int = 3
    #: How far back outcomes count, in seconds.
    window_s: float = 10.0
    #: How long the breaker stays open before a trial call, in seconds.
    open_s: float = 30.0
    #: A call that takes longer fails (and counts as a failure); None: no limit here.
    call_timeout_s: float | None = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.min_calls < 1:
            raise ValueError("min_calls must be at least 1")
        if self.window_s <= 0 or self.open_s <= 0:
            raise ValueError("window_s and open_s must be positive")
        if self.call_timeout_s is not None and self.call_timeout_s <= 0:
            raise ValueError("call_timeout_s must be positive")


class BreakerOpen(Exception):
    """The breaker refused a call without making it; retry after ``retry_after_s``."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open; retry in {retry_after_s:.1f} s")
        self.name = name
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What an operator sees of a breaker."""

    name: str
    state: BreakerState
    #: Failed and all calls in the current window.
    failures: int
    calls: int
    #: When an open breaker lets a trial call through (seconds since the epoch), else None.
    open_until: float | None


class CircuitBreaker:
    """Guards calls to one dependency; share one instance per dependency per process."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        is_failure: Callable[[BaseException], bool] = counts_as_failure,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self._is_failure = is_failure
        self._clock = clock
        self._wall_clock = wall_clock
        # (when, failed) of each finished call in the window, oldest first.
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.settings.open_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Runs ``fn()`` through the breaker; raises :class:`BreakerOpen` if it may not run."""
        trial = self._admit()
        try:
            if self.settings.call_timeout_s is None:
                result = await fn()
            else:
                result = await asyncio.wait_for(fn(), self.settings.call_timeout_s)
        except asyncio.CancelledError:
            # The caller gave up: says nothing about the dependency.
            if trial:
                self._trial_running = False
            raise
        except BaseException as exc:
            self._record(failed=self._is_failure(exc), trial=trial)
            raise
        self._record(failed=False, trial=trial)
        return result

    def snapshot(self) -> BreakerSnapshot:
        """The breaker's state and window, for GetDispatchStatus and metrics."""
        self._prune()
        state = self.state
        open_until = None
        if state is BreakerState.OPEN and self._opened_at is not None:
            remaining = self.settings.open_s - (self._clock() - self._opened_at)
            open_until = self._wall_clock() + remaining
        return BreakerSnapshot(self.name, state, self._failures, len(self._outcomes), open_until)

    # --- internals -----------------------------------------------------------------------------

    def _admit(self) -> bool:
        """Whether the call is the half-open trial; raises BreakerOpen when it may not run."""
        state = self.state
        if state is BreakerState.CLOSED:
            return False
        assert self._opened_at is not None
        if state is BreakerState.OPEN:
            remaining = self.settings.open_s - (self._clock() - self._opened_at)
            raise BreakerOpen(self.name, remaining)
        if self._trial_running:
            # One trial at a time; the others wait for its verdict (briefly: a call's timeout).
            raise BreakerOpen(self.name, self.settings.call_timeout_s or 1.0)
        self._trial_running = True
        return True

    def _record(self, *, failed: bool, trial: bool) -> None:
        now = self._clock()
        if trial:
            self._trial_running = False
            self._outcomes.clear()
            self._failures = 0
            # A failed trial opens the breaker for another spell; a good one closes it afresh.
            self._opened_at = now if failed else None
            return
        if self._opened_at is not None:
            # A call admitted before the breaker opened, finishing late: the verdict stands.
            return
        self._outcomes.append((now, failed))
        self._failures += failed
        self._prune()
        calls = len(self._outcomes)
        if (
            failed
            and calls >= self.settings.min_calls
            and self._failures >= self.settings.failure_ratio * calls
        ):
            # The window that tripped it stays visible (snapshot) while it is open.
            self._opened_at = now

    def _prune(self) -> None:
        horizon = self._clock() - self.settings.window_s
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] <= horizon:
            _, failed = outcomes.popleft()
            self._failures -= failed
