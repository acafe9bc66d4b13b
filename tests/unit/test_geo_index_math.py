"""The pure parts of the geo index: shard selection, keys and their hash slots."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from location_svc.store.drivers import driver_key
from location_svc.store.geo_index import (
    GEO_SETS,
    SHARD_RES,
    VEHICLES,
    _edge_distance_m,
    _unit,
    cell_geometry,
    geo_key,
    parse_presence,
    polar_key,
    presence_score,
    room_in_shard_m,
    seen_key,
    shard_of,
    shards_for_circle,
)
from mesh.geo import EARTH_RADIUS_M, cell, haversine_m


def destination(lat: float, lng: float, distance_m: float, bearing: float) -> tuple[float, float]:
    """The point ``distance_m`` from ``(lat, lng)`` along ``bearing`` (radians) on the sphere."""
    phi1, lmb1, delta = math.radians(lat), math.radians(lng), distance_m / EARTH_RADIUS_M
    phi2 = math.asin(
        max(
            -1.0,
            min(
                1.0,
                math.sin(phi1) * math.cos(delta)
                + math.cos(phi1) * math.sin(delta) * math.cos(bearing),
            ),
        )
    )
    lmb2 = lmb1 + math.atan2(
        math.sin(bearing) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * math.sin(phi2),
    )
    return math.degrees(phi2), (math.degrees(lmb2) + 540.0) % 360.0 - 180.0


def sample_disk(
    rnd: random.Random, lat: float, lng: float, radius_m: float, n: int
) -> list[tuple[float, float]]:
    """Points of the disk: random inside, evenly on the rim (where misses would hide)."""
    points = [(lat, lng)]
    for i in range(n):
        points.append(destination(lat, lng, radius_m, 2 * math.pi * i / n))
        distance = radius_m * math.sqrt(rnd.random())
        points.append(destination(lat, lng, distance, rnd.uniform(0, 2 * math.pi)))
    return [(a, b) for a, b in points if haversine_m(lat, lng, a, b) <= radius_m]


def assert_covers(lat: float, lng: float, radius_m: float, seed: int = 0, n: int = 360) -> None:
    chosen = set(shards_for_circle(lat, lng, radius_m))
    rnd = random.Random(seed)
    for point in sample_disk(rnd, lat, lng, radius_m, n):
        assert shard_of(*point) in chosen, (lat, lng, radius_m, point)


def edge_point(rnd: random.Random, lat: float, lng: float) -> tuple[float, float]:
    """A point within a millimetre of a shard boundary near ``(lat, lng)``, found by bisection."""
    a = (lat, lng)
    while True:
        b = destination(lat, lng, rnd.uniform(5_000, 20_000), rnd.uniform(0, 2 * math.pi))
        if shard_of(*b) != shard_of(*a):
            break
    for _ in range(60):
        mid_lat = (a[0] + b[0]) / 2
        # Bisect along the short way round, across the antimeridian too.
        dlng = (b[1] - a[1] + 540.0) % 360.0 - 180.0
        mid = (mid_lat, (a[1] + dlng / 2 + 540.0) % 360.0 - 180.0)
        if shard_of(*mid) == shard_of(*a):
            a = mid
        else:
            b = mid
    return a


def test_shard_of_is_the_h3_cell_at_shard_resolution() -> None:
    assert shard_of(52.52, 13.405) == cell(52.52, 13.405, SHARD_RES)


def test_every_key_of_a_shard_shares_one_cluster_slot() -> None:
    shard = shard_of(52.52, 13.405)
    keys = [seen_key(shard)]
    keys += [geo_key(shard, v) for v in GEO_SETS] + [polar_key(shard, v) for v in VEHICLES]
    assert {key_slot(k.encode()) for k in keys} == {key_slot(shard.encode())}
    assert all(f"{{{shard}}}" in k for k in keys)
    # Drivers spread over the cluster by their own tag.
    assert driver_key("d-1") == "drv:{d-1}"


def test_a_prefix_keeps_the_hash_tag() -> None:
    shard = shard_of(-33.86, 151.2)
    assert geo_key(shard, "car", "t123") == f"t123:{{{shard}}}:car"
    assert key_slot(geo_key(shard, "car", "t123").encode()) == key_slot(shard.encode())


def test_a_small_circle_deep_inside_a_cell_is_one_shard() -> None:
    shard = shard_of(52.52, 13.405)
    # The cell's own centre: 300 m from it is far from any edge of a ~10 km cell.
    centre = cell_geometry(shard)
    assert shards_for_circle(centre.lat, centre.lng, 300) == [shard]


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=-90, max_value=90),
    st.floats(min_value=-180, max_value=180),
    st.floats(min_value=0, max_value=60_000),
    st.integers(min_value=0, max_value=2**32),
)
def test_shard_selection_never_misses_a_touched_shard(
    lat: float, lng: float, radius_m: float, seed: int
) -> None:
    assert_covers(lat, lng, radius_m, seed, n=120)


@pytest.mark.parametrize("lat", [90.0, -90.0, 89.999, -89.95, 88.0, 85.06, -85.06, 85.0])
@pytest.mark.parametrize("radius_m", [0.0, 40.0, 3_000.0, 25_000.0])
def test_shard_selection_near_the_poles(lat: float, radius_m: float) -> None:
    for lng in (-180.0, -97.3, 0.0, 45.0, 179.9999):
        assert_covers(lat, lng, radius_m)


@pytest.mark.parametrize("lng", [180.0, -180.0, 179.9999, -179.9995, 179.95])
@pytest.mark.parametrize("lat", [0.0, -16.5, 52.0, 65.9, -71.0])
def test_shard_selection_across_the_antimeridian(lat: float, lng: float) -> None:
    for radius_m in (10.0, 800.0, 12_000.0):
        assert_covers(lat, lng, radius_m)


def test_shard_selection_on_cell_edges_and_corners() -> None:
    rnd = random.Random(7)
    for _ in range(150):
        lat, lng = rnd.uniform(-84, 84), rnd.uniform(-180, 180)
        point = edge_point(rnd, lat, lng)
        for radius_m in (0.0, 1.0, 30.0, 500.0):
            chosen = shards_for_circle(*point, radius_m)
            # A millimetre away lies the neighbouring shard: it must be searched.
            assert_covers(*point, radius_m, seed=rnd.randrange(1 << 30), n=72)
            if radius_m >= 1.0:
                assert len(chosen) >= 2


def test_shard_selection_stays_small() -> None:
    rnd = random.Random(3)
    for _ in range(300):
        lat, lng = rnd.uniform(-70, 70), rnd.uniform(-180, 180)
        # A few hundred metres touch at most the three cells that meet at a corner (plus a
        # rare extra one from the slack); five km a handful.
        assert len(shards_for_circle(lat, lng, 300)) <= 4
        assert len(shards_for_circle(lat, lng, 5_000)) <= 9


@given(
    fix_ms=st.integers(min_value=0, max_value=2**47),
    vehicle=st.integers(min_value=0, max_value=len(VEHICLES) - 1),
    cutoff_delta=st.integers(min_value=-3, max_value=3),
)
def test_presence_score_keeps_fix_time_and_vehicle(
    fix_ms: int, vehicle: int, cutoff_delta: int
) -> None:
    score = presence_score(fix_ms, vehicle)
    # As Redis stores and prints it (a double, %.17g), and as Python formats it to send.
    for raw in (repr(score).encode(), b"%.17g" % score):
        assert parse_presence(raw) == (fix_ms, vehicle)
    # A whole-millisecond cutoff sees the fix time alone: the vehicle never makes a fix fresher.
    cutoff = fix_ms + cutoff_delta
    assert (score >= cutoff) == (fix_ms >= cutoff)
    assert (score < cutoff) == (fix_ms < cutoff)


@settings(max_examples=300, deadline=None)
@given(
    lat=st.floats(min_value=-89.0, max_value=89.0),
    lng=st.floats(min_value=-180.0, max_value=180.0),
)
def test_room_in_shard_is_a_safe_lower_bound(lat: float, lng: float) -> None:
    shard, room = room_in_shard_m(lat, lng)
    assert shard == shard_of(lat, lng)
    p = _unit(lat, lng)
    exact = min(_edge_distance_m(p, e) for e in cell_geometry(shard).edges)
    assert 0.0 <= room <= exact + 1e-6
    # A circle that stays within the room (less shard selection's 5 m of slack) touches no
    # other shard.
    if room > 6.0:
        assert shards_for_circle(lat, lng, room - 6.0) == [shard]
