"""Where dispatchable couriers are: available ones, and busy ones who may take a stacked order.

Two :class:`~location_svc.store.geo_index.GeoIndex` side by side, one per status, so a plain
search (available couriers only, the hot one) reads exactly what it read before, and a search
that includes busy couriers merges the two answers (each exact, so the merge is too). A
driver's *slot* says where they are filed: ``""`` (nowhere: offline), the shard (available),
or ``"busy:"`` and the shard (busy). Moving between slots removes the driver from the old one
in the same pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from location_svc.domain.presence import DriverStatus
from location_svc.store.geo_index import DEFAULT_STEPS_M, KEY_PREFIX, GeoIndex, IndexEntry, Nearby

#: What starts the slot of a busy driver.
BUSY = "busy:"


def slot_of(shard: str, status: DriverStatus) -> str:
    """Where a driver with ``status`` whose position lies in ``shard`` is filed ("" nowhere)."""
    if status is DriverStatus.AVAILABLE:
        return shard
    if status is DriverStatus.BUSY:
        return BUSY + shard
    return ""


class DriverIndex:
    """Available and busy couriers by position; the API of :class:`GeoIndex` over slots."""

    def __init__(
        self,
        redis: Redis,
        *,
        presence_ttl_s: float = 30.0,
        steps_m: tuple[float, ...] = DEFAULT_STEPS_M,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self.available = GeoIndex(
            redis, presence_ttl_s=presence_ttl_s, steps_m=steps_m, prefix=prefix
        )
        self.busy = GeoIndex(
            redis, presence_ttl_s=presence_ttl_s, steps_m=steps_m, prefix=prefix + "busy"
        )

    @property
    def presence_ttl_s(self) -> float:
        return self.available.presence_ttl_s

    def _split(self, slot: str) -> tuple[GeoIndex, str]:
        if slot.startswith(BUSY):
            return self.busy, slot[len(BUSY) :]
        return self.available, slot

    # --- writes (queued, no awaits) ----------------------------------------------------------

    def queue_upsert(
        self,
        pipe: Any,
        entry: IndexEntry,
        previous_slot: str | None,
        *,
        busy: bool = False,
        previous_vehicle: str | None = None,
    ) -> str:
        """Files the driver at ``entry`` as available (or busy); returns the slot."""
        index = self.busy if busy else self.available
        previous = self._previous_in(pipe, entry.driver_id, index, previous_slot)
        shard = index.queue_upsert(pipe, entry, previous, previous_vehicle=previous_vehicle)
        return BUSY + shard if busy else shard

    def queue_upserts(
        self,
        pipe: Any,
        batch: Sequence[tuple[IndexEntry, str | None]],
        slots: Sequence[str],
    ) -> None:
        """Files many drivers, each in the slot given for it (its shard, or busy and its shard);
        each entry's second item is the slot it was filed in before."""
        groups: dict[bool, tuple[list[tuple[IndexEntry, str | None]], list[str]]] = {}
        for (entry, previous_slot), slot in zip(batch, slots, strict=True):
            busy = slot.startswith(BUSY)
            shard = slot[len(BUSY) :] if busy else slot
            if previous_slot == slot:
                # Nearly every fix: same shard, same status.
                previous: str | None = shard
            else:
                index = self.busy if busy else self.available
                previous = self._previous_in(pipe, entry.driver_id, index, previous_slot)
            entries, shards = groups.setdefault(busy, ([], []))
            entries.append((entry, previous))
            shards.append(shard)
        for busy, (entries, shards) in groups.items():
            (self.busy if busy else self.available).queue_upserts(pipe, entries, shards)

    def queue_remove(self, pipe: Any, driver_id: str, slot: str) -> None:
        """Takes the driver out of ``slot`` (nothing for the empty slot)."""
        if slot:
            index, shard = self._split(slot)
            index.queue_remove(pipe, driver_id, shard)

    def _previous_in(
        self, pipe: Any, driver_id: str, index: GeoIndex, previous_slot: str | None
    ) -> str | None:
        """The previous shard if it was in ``index``; else removes it from the other index."""
        if not previous_slot:
            return None
        other, shard = self._split(previous_slot)
        if other is index:
            return shard
        other.queue_remove(pipe, driver_id, shard)
        return None

    # --- search and presence ------------------------------------------------------------------

    async def find_nearby(
        self,
        lat: float,
        lng: float,
        radius_m: float,
        limit: int,
        vehicle: str | None = None,
        *,
        include_busy: bool = False,
        now_ms: int | None = None,
    ) -> list[Nearby]:
        """The ``limit`` nearest fresh couriers within ``radius_m``, nearest first: available
        ones, and busy ones too with ``include_busy`` (their ``busy`` is True)."""
        if not include_busy:
            return await self.available.find_nearby(
                lat, lng, radius_m, limit, vehicle, now_ms=now_ms
            )
        free, busy = await asyncio.gather(
            self.available.find_nearby(lat, lng, radius_m, limit, vehicle, now_ms=now_ms),
            self.busy.find_nearby(lat, lng, radius_m, limit, vehicle, now_ms=now_ms),
        )
        merged = [*free, *(n._replace(busy=True) for n in busy)]
        # A driver caught in both (a status change racing a fix) counts once: its latest fix,
        # busy on a tie.
        best: dict[str, Nearby] = {}
        for n in merged:
            seen = best.get(n.driver_id)
            if seen is None or (n.fix_time_ms, n.busy) > (seen.fix_time_ms, seen.busy):
                best[n.driver_id] = n
        return sorted(best.values(), key=lambda n: (n.distance_m, n.driver_id))[:limit]

    async def in_box(
        self,
        south: float,
        west: float,
        north: float,
        east: float,
        limit: int,
        *,
        now_ms: int | None = None,
    ) -> tuple[list[Nearby], bool]:
        """Available and busy fresh couriers inside a box, nearest its centre first, at most
        ``limit`` (see :meth:`GeoIndex.in_box`); and whether the box may hold more."""
        (free, free_more), (busy, busy_more) = await asyncio.gather(
            self.available.in_box(south, west, north, east, limit, now_ms=now_ms),
            self.busy.in_box(south, west, north, east, limit, now_ms=now_ms),
        )
        # A driver caught in both (a status change racing a fix) counts once, as find_nearby.
        best: dict[str, Nearby] = {}
        for n in [*free, *(n._replace(busy=True) for n in busy)]:
            seen = best.get(n.driver_id)
            if seen is None or (n.fix_time_ms, n.busy) > (seen.fix_time_ms, seen.busy):
                best[n.driver_id] = n
        found = sorted(best.values(), key=lambda n: (n.distance_m, n.driver_id))
        return found[:limit], free_more or busy_more or len(found) > limit

    async def sweep(self, now_ms: int | None = None) -> int:
        """Takes silent drivers out of both indexes; returns how many."""
        return await self.available.sweep(now_ms) + await self.busy.sweep(now_ms)
