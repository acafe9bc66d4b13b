"""Properties of the geo math: distances, boxes and H3 disks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import Validator
from mesh.geo import (
    EARTH_RADIUS_M,
    bounding_box,
    cell,
    disk_cells,
    haversine_m,
    valid_lat_lng,
    validate_location,
)

lats = st.floats(min_value=-90, max_value=90)
lngs = st.floats(min_value=-180, max_value=180)
# H3 cells get odd near the poles and the disk property is what services rely on in cities.
city_lats = st.floats(min_value=-80, max_value=80)
bearings = st.floats(min_value=0, max_value=2 * math.pi)
fractions = st.floats(min_value=0, max_value=1)


def _destination(lat: float, lng: float, distance_m: float, bearing: float) -> tuple[float, float]:
    """The point ``distance_m`` from ``(lat, lng)`` along ``bearing`` (radians) on the sphere."""
    phi1, lmb1, delta = math.radians(lat), math.radians(lng), distance_m / EARTH_RADIUS_M
    phi2 = math.asin(
        math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(bearing)
    )
    lmb2 = lmb1 + math.atan2(
        math.sin(bearing) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * math.sin(phi2),
    )
    lng2 = (math.degrees(lmb2) + 540.0) % 360.0 - 180.0
    return math.degrees(phi2), lng2


@given(lats, lngs, lats, lngs)
def test_haversine_is_symmetric_and_bounded(a: float, b: float, c: float, d: float) -> None:
    there = haversine_m(a, b, c, d)
    assert there == pytest.approx(haversine_m(c, d, a, b), abs=1e-6)
    assert 0.0 <= there <= math.pi * EARTH_RADIUS_M + 1e-6


@given(lats, lngs)
def test_haversine_is_zero_on_identity(lat: float, lng: float) -> None:
    assert haversine_m(lat, lng, lat, lng) == 0.0


@given(lats, lngs, lats, lngs, lats, lngs)
def test_haversine_obeys_the_triangle_inequality(
    a: float, b: float, c: float, d: float, e: float, f: float
) -> None:
    assert haversine_m(a, b, e, f) <= haversine_m(a, b, c, d) + haversine_m(c, d, e, f) + 1e-3


def test_haversine_matches_known_distances() -> None:
    # One degree of latitude on the mean sphere, and Berlin to Paris (about 878 km).
    assert haversine_m(0, 0, 1, 0) == pytest.approx(math.radians(1) * EARTH_RADIUS_M)
    assert haversine_m(52.5200, 13.4050, 48.8566, 2.3522) == pytest.approx(877_500, rel=0.005)
    assert haversine_m(0, 179.9, 0, -179.9) == pytest.approx(haversine_m(0, 0, 0, 0.2))


@given(city_lats, lngs, st.floats(min_value=0, max_value=20_000), bearings, fractions)
def test_the_destination_helper_lands_at_the_distance(
    lat: float, lng: float, radius: float, bearing: float, fraction: float
) -> None:
    far = _destination(lat, lng, radius * fraction, bearing)
    assert haversine_m(lat, lng, *far) == pytest.approx(radius * fraction, abs=1e-3)


@settings(max_examples=300)
@given(
    city_lats,
    lngs,
    st.floats(min_value=0, max_value=20_000),
    st.integers(min_value=5, max_value=9),
    st.lists(st.tuples(bearings, fractions), min_size=1, max_size=10),
)
def test_a_disk_covers_every_point_within_its_radius(
    lat: float, lng: float, radius: float, res: int, samples: list[tuple[float, float]]
) -> None:
    disk = set(disk_cells(lat, lng, radius, res))
    assert cell(lat, lng, res) in disk
    for bearing, fraction in samples:
        # The rim is where a too-small disk fails, so half the samples sit right on it.
        distance = radius if fraction > 0.5 else radius * fraction * 2
        point = _destination(lat, lng, distance, bearing)
        assert cell(*point, res) in disk, (point, distance)


@given(lats, lngs, st.floats(min_value=0, max_value=2_000_000), bearings, fractions)
def test_a_bounding_box_holds_every_point_within_its_radius(
    lat: float, lng: float, radius: float, bearing: float, fraction: float
) -> None:
    lat_min, lat_max, lng_min, lng_max = bounding_box(lat, lng, radius)
    plat, plng = _destination(lat, lng, radius * fraction, bearing)
    assert lat_min <= plat <= lat_max
    if lng_min <= lng_max:
        assert lng_min <= plng <= lng_max
    else:
        assert plng >= lng_min or plng <= lng_max


def test_valid_lat_lng_rejects_out_of_range_and_non_finite() -> None:
    assert valid_lat_lng(90, -180) and valid_lat_lng(-90, 180) and valid_lat_lng(0, 0)
    for lat, lng in ((90.1, 0), (0, 180.5), (math.nan, 0), (0, math.inf)):
        assert not valid_lat_lng(lat, lng)


def test_validate_location_names_the_bad_coordinate() -> None:
    v = Validator()
    validate_location(v, "delivery_location", math.nan, 200.0)
    validate_location(v, "location", None, None)
    validate_location(v, "ok", 1.0, 2.0)
    assert [(x.field, x.description) for x in v.violations] == [
        ("delivery_location.latitude", "must be a finite latitude in [-90, 90]"),
        ("delivery_location.longitude", "must be a finite longitude in [-180, 180]"),
        ("location", "is required"),
    ]
