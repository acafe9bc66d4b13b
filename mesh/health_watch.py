"""Watches the stores a service was started with and reports whether they answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mesh.stores import Stores

logger = logging.getLogger(__name__)

#: Failed checks in a row before a store counts as unreachable: a single check can miss its
#: timeout on a busy machine (an event loop held up for a moment) with the store quite well.
FAILURES_TO_TRIP = 2


@dataclass(frozen=True, slots=True)
class Probe:
    """One store's check: ``check()`` returns when the store answered, raises otherwise."""

    #: The store's name in logs (``postgresql``, ``redis``).
    name: str
    #: Asks the store something trivial.
    check: Callable[[], Awaitable[object]]


def store_probes(stores: Stores, timeout_s: float) -> list[Probe]:
    """The checks of the stores in ``stores``, each through the service's own pool or client.

    Through the service's own connections on purpose: what matters is whether its calls can
    reach the store, pool and all, not whether some other connection could.
    """
    probes = []
    pool, redis = stores.pool, stores.redis
    if pool is not None:

        async def postgresql() -> object:
            async with pool.acquire(timeout=timeout_s) as conn:
                return await conn.fetchval("SELECT 1", timeout=timeout_s)

        probes.append(Probe("postgresql", postgresql))
    if redis is not None:

        async def ping() -> object:
            return await redis.ping()

        probes.append(Probe("redis", ping))
    return probes


class StoreWatch:
    """Checks every store every ``every_s`` seconds, each check bounded by ``timeout_s``.

    A store is unreachable after :data:`FAILURES_TO_TRIP` failed checks in a row and reachable
    again after one that succeeds; each change is logged once and handed to ``on_change``
    (True when every store answers). The stores are checked side by side, so a frozen one
    does not delay the verdict on the other.
    """

    def __init__(self, probes: list[Probe], *, every_s: float, timeout_s: float) -> None:
        self._probes = probes
        self._every_s = every_s
        self._timeout_s = timeout_s
        self._failures = {p.name: 0 for p in probes}
        #: Stores that count as unreachable now.
        self.down: set[str] = set()
        self._stopping = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """Whether every watched store answers."""
        return not self.down

    async def run(self, on_change: Callable[[bool], Awaitable[None]]) -> None:
        """Checks until :meth:`stop`, calling ``on_change`` whenever :attr:`healthy` flips."""
        self._stopping.clear()
        while not self._stopping.is_set():
            was_healthy = self.healthy
            await asyncio.gather(*(self._check(p) for p in self._probes))
            if self.healthy != was_healthy:
                await on_change(self.healthy)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._every_s)

    def stop(self) -> None:
        """Asks :meth:`run` to return after the current round."""
        self._stopping.set()

    async def _check(self, probe: Probe) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await probe.check()
        except Exception as exc:
            self._failures[probe.name] += 1
            if self._failures[probe.name] >= FAILURES_TO_TRIP and probe.name not in self.down:
                self.down.add(probe.name)
                logger.error(
                    "%s is unreachable (%d checks failed in a row, the last with %r)",
                    probe.name,
                    self._failures[probe.name],
                    exc,
                    extra={"store": probe.name},
                )
            return
        self._failures[probe.name] = 0
        if probe.name in self.down:
            self.down.discard(probe.name)
            logger.info("%s answers again", probe.name, extra={"store": probe.name})
