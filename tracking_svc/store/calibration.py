"""The errors of past first estimates, kept in Redis, from which the ETA band is calibrated.

When an order is placed its first estimate is remembered beside its tracking log; when it is
delivered, the error of that estimate (as a share of the time it had to run, see
:func:`tracking_svc.domain.eta.residual`) joins a capped list that every instance reads to
size the band so that about 80% of deliveries land inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from mesh.events import as_text
from tracking_svc.domain.eta import Band, residual
from tracking_svc.store.log import state_key

logger = logging.getLogger(__name__)

#: The list of residuals, newest first.
RESIDUALS_KEY = "trk:eta:residuals"


class EtaCalibration:
    """Records first estimates and their errors, and holds the band they give."""

    def __init__(
        self, redis: Redis, *, keep: int = 2000, refresh_s: float = 60.0, coverage: float = 0.8
    ) -> None:
        self._redis = redis
        self._keep = keep
        self._refresh_s = refresh_s
        self._coverage = coverage
        self._band = Band()
        self._stopping = asyncio.Event()

    def band(self) -> Band:
        """The band in use now."""
        return self._band

    async def first_estimate(self, order_id: str, delivery: float, made_at: float) -> None:
        """Remembers an order's first estimate (kept if one is there already)."""
        await self._redis.hsetnx(state_key(order_id), "e0", f"{delivery:.3f} {made_at:.3f}")

    async def delivered(self, order_id: str, at: float) -> float | None:
        """Records the error of the order's first estimate; returns it (``None`` if unknown)."""
        raw = await self._redis.hget(state_key(order_id), "e0")
        if raw is None:
            return None
        estimated, made_at = (float(v) for v in as_text(raw).split())
        error = residual(estimated, at, made_at)
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(RESIDUALS_KEY, f"{error:.5f}")
        pipe.ltrim(RESIDUALS_KEY, 0, self._keep - 1)
        pipe.hdel(state_key(order_id), "e0")
        await pipe.execute()
        return error

    async def refresh(self) -> Band:
        """Reads the residuals again and recalibrates the band."""
        raw = await self._redis.lrange(RESIDUALS_KEY, 0, self._keep - 1)
        values = []
        for item in raw:
            with contextlib.suppress(ValueError):
                values.append(float(as_text(item)))
        self._band = Band.calibrated(values, coverage=self._coverage)
        return self._band

    async def run(self) -> None:
        """Recalibrates every ``refresh_s`` until :meth:`stop`."""
        while not self._stopping.is_set():
            try:
                await self.refresh()
            except Exception as exc:
                logger.warning("could not read the ETA residuals: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._refresh_s)

    def stop(self) -> None:
        self._stopping.set()
