"""Helsinki's road network: loading, snapping, one-way streets, the fallback and learned speeds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.geo import haversine_m
from tracking_svc.domain.roads import (
    PROFILES,
    RoadNetwork,
    RoadTravelTimes,
    speeds_from_tracks,
)
from tracking_svc.domain.travel import Point, TravelTimes, Vehicle

NETWORK = RoadNetwork.load()
TRAVEL = RoadTravelTimes(NETWORK)
T0 = 1_700_000_000.0  # 22:13 UTC
MIDNIGHT = 1_699_920_000.0  # 00:00 UTC the same day
HOUR = 8


def between(a: Point, b: Point, fraction: float) -> Point:
    return Point(a.lat + (b.lat - a.lat) * fraction, a.lng + (b.lng - a.lng) * fraction)


def long_edges(*, one_way: bool) -> list[tuple[int, int]]:
    """Edges over 60 m, longest first, whose points snap back onto them, one-way or two-way."""
    pairs = {(u, v) for u, v, *_ in NETWORK.edges()}
    found = []
    for u, v, length, *_ in sorted(NETWORK.edges(), key=lambda e: -e[2]):
        if length < 60 or ((v, u) not in pairs) != one_way:
            continue
        a, b = NETWORK.node(u), NETWORK.node(v)
        snaps = [NETWORK.snap(between(a, b, f)) for f in (0.2, 0.8)]
        if all((u, v) in NETWORK.segment_edges(s) and s.offset_m < 1 for s in snaps):
            found.append((u, v))
    return found


def test_the_packaged_network_loads_once_with_helsinkis_streets() -> None:
    assert NETWORK.node_count > 1000
    assert NETWORK.edge_count > 1500
    assert RoadNetwork.load() is NETWORK
    as_protocol: TravelTimes = TRAVEL  # mypy checks that RoadTravelTimes is a TravelTimes
    assert as_protocol is TRAVEL
    names = {e[5] for e in NETWORK.edges()}
    assert {"Mannerheimintie", "Aleksanterinkatu"} <= names
    limits = {e[3] for e in NETWORK.edges()}
    assert {30, 40} <= limits


def test_a_point_beside_a_street_snaps_onto_it() -> None:
    u, v = long_edges(one_way=False)[0]
    a, b = NETWORK.node(u), NETWORK.node(v)
    middle = between(a, b, 0.5)
    # 12 m to the side of the street's middle, square to its direction.
    cos_lat = math.cos(math.radians(a.lat))
    east, north = (b.lng - a.lng) * cos_lat, b.lat - a.lat
    norm = math.hypot(east, north)
    side_m = 12 / 111_195
    aside = Point(middle.lat + side_m * east / norm, middle.lng - side_m * north / norm / cos_lat)
    snap = NETWORK.snap(aside)
    assert (u, v) in NETWORK.segment_edges(snap)
    assert snap.offset_m == pytest.approx(12, abs=1.5)
    onto = NETWORK.snapped_point(snap)
    assert haversine_m(onto.lat, onto.lng, middle.lat, middle.lng) < 2


def test_driving_against_a_one_way_street_takes_longer() -> None:
    u, v = long_edges(one_way=True)[0]
    a, b = NETWORK.node(u), NETWORK.node(v)
    near_start, near_end = between(a, b, 0.2), between(a, b, 0.8)
    with_it = TRAVEL.leg(near_start, near_end, Vehicle.CAR, HOUR)
    against = TRAVEL.leg(near_end, near_start, Vehicle.CAR, HOUR)
    straight = haversine_m(near_start.lat, near_start.lng, near_end.lat, near_end.lng)
    assert with_it.meters == pytest.approx(straight, rel=0.05)
    assert against.meters > 2 * with_it.meters
    assert against.seconds > 2 * with_it.seconds


def test_a_two_way_street_takes_as_long_both_ways() -> None:
    u, v = long_edges(one_way=False)[0]
    a, b = NETWORK.node(u), NETWORK.node(v)
    near_start, near_end = between(a, b, 0.2), between(a, b, 0.8)
    there = TRAVEL.leg(near_start, near_end, Vehicle.CAR, HOUR)
    back = TRAVEL.leg(near_end, near_start, Vehicle.CAR, HOUR)
    assert there.seconds == pytest.approx(back.seconds, rel=0.01)
    assert there.meters == pytest.approx(back.meters, rel=0.01)


def test_points_outside_the_area_use_the_great_circle_fallback() -> None:
    inside = NETWORK.node(long_edges(one_way=False)[0][0])
    espoo = Point(60.2055, 24.6559)
    assert NETWORK.contains(inside)
    assert not NETWORK.contains(espoo)
    for origin, destination in ((inside, espoo), (espoo, inside)):
        leg = TRAVEL.leg(origin, destination, Vehicle.VAN, HOUR)
        meters = haversine_m(origin.lat, origin.lng, destination.lat, destination.lng) * 1.35
        assert leg.meters == pytest.approx(meters)
        assert leg.seconds == pytest.approx(meters / PROFILES[Vehicle.VAN].default_speed_mps)


def test_a_bicycle_is_slower_than_a_car_over_the_network() -> None:
    a, b = Point(60.1640, 24.9380), Point(60.1760, 24.9500)
    assert NETWORK.contains(a) and NETWORK.contains(b)
    bike = TRAVEL.leg(a, b, Vehicle.BICYCLE, HOUR)
    car = TRAVEL.leg(a, b, Vehicle.CAR, HOUR)
    assert bike.seconds > car.seconds
    assert bike.meters == pytest.approx(car.meters, rel=0.3)


def test_learned_speeds_change_the_edges_they_cover_at_their_hour_only() -> None:
    u, v = long_edges(one_way=False)[0]
    a, b = NETWORK.node(u), NETWORK.node(v)
    near_start, near_end = between(a, b, 0.2), between(a, b, 0.8)
    slow = NETWORK.with_speeds({(u, v, HOUR): 1.0})
    assert slow.learned_hours == frozenset({HOUR})
    assert slow.edge_speed((u, v), Vehicle.CAR, HOUR) == 1.0
    assert slow.edge_speed((v, u), Vehicle.CAR, HOUR) == NETWORK.edge_speed(
        (v, u), Vehicle.CAR, HOUR
    )
    slow_travel = RoadTravelTimes(slow)
    before = TRAVEL.leg(near_start, near_end, Vehicle.CAR, HOUR)
    after = slow_travel.leg(near_start, near_end, Vehicle.CAR, HOUR)
    other_hour = slow_travel.leg(near_start, near_end, Vehicle.CAR, HOUR + 1)
    assert after.seconds > before.seconds + 20
    assert other_hour.seconds == pytest.approx(before.seconds)
    # The other direction is untouched.
    back = slow_travel.leg(near_end, near_start, Vehicle.CAR, HOUR)
    assert back.seconds == pytest.approx(
        TRAVEL.leg(near_end, near_start, Vehicle.CAR, HOUR).seconds
    )


def test_learned_speeds_never_exceed_the_vehicles_top_speed() -> None:
    u, v = long_edges(one_way=False)[0]
    fast = NETWORK.with_speeds({(u, v, HOUR): 39.0})
    assert fast.edge_speed((u, v), Vehicle.BICYCLE, HOUR) == PROFILES[Vehicle.BICYCLE].top_speed_mps


def test_speeds_are_learned_from_tracks_along_a_street() -> None:
    u, v = long_edges(one_way=False)[0]
    a, b = NETWORK.node(u), NETWORK.node(v)
    length = next(e[2] for e in NETWORK.edges() if e[:2] == (u, v))
    start = MIDNIGHT + HOUR * 3600
    # Three couriers ride along the street at 5 m/s, one the other way at 3 m/s.
    step = 0.3 * length / 5.0
    tracks = [
        [(*_ll(between(a, b, f)), start + 60 * k + i * step) for i, f in enumerate((0.1, 0.4, 0.7))]
        for k in range(3)
    ]
    back_step = 0.3 * length / 3.0
    tracks.append(
        [(*_ll(between(b, a, f)), start + i * back_step) for i, f in enumerate((0.1, 0.4, 0.7))]
    )
    # A GPS jump: far too fast to be driven.
    tracks.append([(*_ll(a), start), (*_ll(b), start + 1)])
    learned = speeds_from_tracks(NETWORK, tracks)
    assert learned == {(u, v, HOUR): pytest.approx(5.0, rel=0.02)}
    assert speeds_from_tracks(NETWORK, tracks, min_samples=2)[(v, u, HOUR)] == pytest.approx(
        3.0, rel=0.02
    )
    assert NETWORK.with_speeds(learned).edge_speed((u, v), Vehicle.CAR, HOUR) == pytest.approx(5.0)


def turns() -> list[tuple[Point, Point, tuple[int, int], tuple[int, int]]]:
    """A point near the end of a street and one on the next street past the junction."""
    found = []
    edges = list(NETWORK.edges())
    for u, v, first_length, *_ in sorted(edges, key=lambda e: -e[2]):
        for x, y, length, *_ in edges:
            if first_length < 30 or x != v or y == u or length < 20:
                continue
            p = between(NETWORK.node(u), NETWORK.node(v), 0.8)
            q = between(NETWORK.node(v), NETWORK.node(y), 0.5)
            if (u, v) in NETWORK.segment_edges(NETWORK.snap(p)) and (
                v,
                y,
            ) in NETWORK.segment_edges(NETWORK.snap(q)):
                found.append((p, q, (u, v), (v, y)))
    return found


def test_tracks_between_adjacent_streets_count_for_both() -> None:
    p, q, first, second = turns()[0]
    b = NETWORK.node(first[1])
    meters = haversine_m(p.lat, p.lng, b.lat, b.lng) + haversine_m(b.lat, b.lng, q.lat, q.lng)
    tracks = [[(*_ll(p), T0), (*_ll(q), T0 + meters / 6.0)]] * 3
    learned = speeds_from_tracks(NETWORK, tracks)
    hour = int(T0 // 3600) % 24
    assert set(learned) == {(*first, hour), (*second, hour)}
    assert all(s == pytest.approx(6.0, rel=0.05) for s in learned.values())


def _ll(p: Point) -> tuple[float, float]:
    return p.lat, p.lng


_LAT = st.floats(60.1645, 60.1785)
_LNG = st.floats(24.9360, 24.9530)


@settings(max_examples=200, deadline=None)
@given(
    a=st.builds(Point, _LAT, _LNG),
    b=st.builds(Point, _LAT, _LNG),
    vehicle=st.sampled_from(list(Vehicle)),
    hour=st.integers(0, 23),
)
def test_no_trip_beats_the_straight_line_at_top_speed(
    a: Point, b: Point, vehicle: Vehicle, hour: int
) -> None:
    leg = TRAVEL.leg(a, b, vehicle, hour)
    straight = haversine_m(a.lat, a.lng, b.lat, b.lng)
    assert leg.meters >= straight * 0.99
    assert leg.seconds >= straight / PROFILES[vehicle].top_speed_mps * 0.99
    assert math.isfinite(leg.seconds)
