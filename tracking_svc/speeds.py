"""The fleet is the traffic feed: street speeds per hour learned from couriers' own fixes.

Every so often (and at start) the couriers' recent location history inside the road network's
area is read through location_svc's read function, turned into median speeds per street and
hour of day (:func:`tracking_svc.domain.roads.speeds_from_tracks`), and the travel times switch
to a network that uses them; streets and hours with too few observations keep the posted limit
or the city default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from location_svc.store.history import recent_tracks
from tracking_svc.domain.roads import RoadTravelTimes, speeds_from_tracks

logger = logging.getLogger(__name__)


class SpeedLearner:
    """Relearns the street speeds of ``travel``'s network every ``every_s`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        travel: RoadTravelTimes,
        *,
        every_s: float = 3600.0,
        window: timedelta = timedelta(days=7),
    ) -> None:
        self._pool = pool
        self._travel = travel
        self._base = travel.network
        self._every_s = every_s
        self._window = window
        self._stopping = asyncio.Event()
        #: Street-hours with a learned speed after the last run.
        self.learned = 0

    async def learn(self) -> int:
        """Reads the history and switches to the speeds it shows; returns how many were learned."""
        south, west, north, east = self._base.bounds
        margin = 0.002  # about 200 m: fixes just outside still snap onto the edge streets
        tracks = await recent_tracks(
            self._pool,
            south=south - margin,
            west=west - margin,
            north=north + margin,
            east=east + margin,
            since=datetime.now(UTC) - self._window,
        )
        # Snapping thousands of fixes is CPU work: off the event loop.
        table = await asyncio.to_thread(speeds_from_tracks, self._base, tracks)
        self._travel.network = self._base.with_speeds(table) if table else self._base
        self.learned = len(table)
        return self.learned

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                learned = await self.learn()
                logger.info("street speeds learned from the fleet: %d street-hours", learned)
            except Exception as exc:
                logger.warning("could not learn street speeds: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._every_s)

    def stop(self) -> None:
        self._stopping.set()
