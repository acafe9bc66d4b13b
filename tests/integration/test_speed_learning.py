"""Street speeds learned from the couriers' own location history in PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from location_svc.store.history import _COLUMNS
from mesh.stores import Stores
from tracking_svc.domain.roads import RoadNetwork, RoadTravelTimes
from tracking_svc.domain.travel import Point, Vehicle
from tracking_svc.speeds import SpeedLearner


async def test_slow_couriers_on_a_street_slow_that_street_down_at_that_hour(stores: Stores) -> None:
    assert stores.pool is not None
    travel = RoadTravelTimes(RoadNetwork.load())
    network = travel.network
    # A long street, ridden by five couriers at 2 m/s an hour ago.
    u, v, length, *_ = max(network.edges(), key=lambda e: e[2])
    a, b = network.node(u), network.node(v)
    when = datetime.now(UTC) - timedelta(hours=1)
    hour = when.hour
    before = network.edge_speed((u, v), Vehicle.CAR, hour)
    rows = []
    for _ in range(5):
        driver = uuid.uuid4()
        for i in range(1, 9):
            f = i / 10
            at = when + timedelta(seconds=f * length / 2.0)
            lat, lng = a.lat + (b.lat - a.lat) * f, a.lng + (b.lng - a.lng) * f
            rows.append((driver, at, at, lat, lng, 5.0, 0.0, 2.0, False))
    await _insert(stores.pool, rows)
    learner = SpeedLearner(stores.pool, travel, window=timedelta(hours=2))
    assert await learner.learn() > 0
    after = travel.network.edge_speed((u, v), Vehicle.CAR, hour)
    assert before > 4.0
    assert abs(after - 2.0) < 0.3
    # Other hours keep what they had.
    other = (hour + 12) % 24
    assert travel.network.edge_speed((u, v), Vehicle.CAR, other) == before or other in (
        travel.network.learned_hours
    )
    start, end = Point(a.lat, a.lng), Point(b.lat, b.lng)
    slow = travel.leg(start, end, Vehicle.CAR, hour).seconds
    assert slow > RoadTravelTimes(network).leg(start, end, Vehicle.CAR, hour).seconds


async def _insert(pool: asyncpg.Pool, rows: list[tuple[object, ...]]) -> None:
    await pool.copy_records_to_table(
        "driver_location_history",
        records=rows,
        columns=list(_COLUMNS),
    )
