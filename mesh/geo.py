"""Geo math for the whole mesh: distances, coordinate checks and H3 cells (the one h3 import)."""

from __future__ import annotations

import math

import h3

from mesh.errors import Validator

#: The mean radius of the Earth in metres (IUGG), the radius every distance here uses.
EARTH_RADIUS_M = 6_371_008.8

# Grid distance k reaches at least 1.5 * edge * k metres from the centre in a regular hex grid;
# cells shrink and bend away from the origin cell, so the edge is discounted by this much.
_EDGE_SAFETY = 0.8
_BOX_SLACK_RAD = 0.01 / EARTH_RADIUS_M


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """The great-circle distance in metres between two points given in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lng2 - lng1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    # Rounding can push ``a`` a hair past 1 for antipodal points; asin would then fail.
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, max(0.0, a))))


def valid_lat_lng(lat: float, lng: float) -> bool:
    """Whether ``(lat, lng)`` is a finite WGS84 point within the coordinate ranges."""
    return (
        math.isfinite(lat)
        and math.isfinite(lng)
        and -90.0 <= lat <= 90.0
        and -180.0 <= lng <= 180.0
    )


#: Coordinates closer to 0 than this many degrees (0.1 mm on the ground) are 0.
NEAR_ZERO_DEG = 1e-9


def snap_near_zero(degrees: float) -> float:
    """``degrees``, or 0.0 if it is closer to 0 than :data:`NEAR_ZERO_DEG`.

    PostgreSQL refuses float8 arithmetic that underflows ("value out of range: underflow"):
    ``radians(5e-324)``, or ``power(sin(radians(1e-200)), 2)`` in a distance between a point
    so near the equator or the prime meridian and one on it. Two coordinates that are each 0
    or at least this far from it differ by 0 or by enough that no such term underflows.
    """
    return 0.0 if -NEAR_ZERO_DEG < degrees < NEAR_ZERO_DEG else degrees


def cell(lat: float, lng: float, res: int) -> str:
    """The H3 cell of resolution ``res`` that contains the point."""
    return str(h3.latlng_to_cell(lat, lng, res))


def cell_center(cell_id: str) -> tuple[float, float]:
    """The centre of an H3 cell, (lat, lng)."""
    lat, lng = h3.cell_to_latlng(cell_id)
    return float(lat), float(lng)


def cell_boundary(cell_id: str) -> list[tuple[float, float]]:
    """The vertices of an H3 cell, (lat, lng), in order (distortion vertices included)."""
    return [(float(lat), float(lng)) for lat, lng in h3.cell_to_boundary(cell_id)]


def cell_area_m2(cell_id: str) -> float:
    """The area of an H3 cell in square metres."""
    return float(h3.cell_area(cell_id, "m^2"))


def cell_min_edge_m(cell_id: str) -> float:
    """The length of an H3 cell's shortest edge, in metres."""
    return float(min(h3.edge_length(e, "m") for e in h3.origin_to_directed_edges(cell_id)))


def grid_disk(cell_id: str, k: int) -> list[str]:
    """The H3 cells within grid distance ``k`` of ``cell_id`` (itself included)."""
    return [str(c) for c in h3.grid_disk(cell_id, k)]


def disk_cells(lat: float, lng: float, radius_m: float, res: int) -> list[str]:
    """H3 cells of resolution ``res`` that together cover every point within ``radius_m``.

    The disk is deliberately a little larger than needed: a missed cell loses a result, an extra
    one only costs a lookup.
    """
    origin = cell(lat, lng, res)
    edge_m = cell_min_edge_m(origin)
    step_m = 1.5 * edge_m * _EDGE_SAFETY
    # The point may sit anywhere in its cell, and a covered point may sit anywhere in the last
    # ring's cell: two circumradii (one edge each) of slack.
    k = math.ceil((max(0.0, radius_m) + 2 * edge_m) / step_m)
    return grid_disk(origin, k)


def bounding_box(lat: float, lng: float, radius_m: float) -> tuple[float, float, float, float]:
    """``(lat_min, lat_max, lng_min, lng_max)`` enclosing every point within ``radius_m``.

    ``lng_min > lng_max`` means the box crosses the antimeridian (``lng >= lng_min OR lng <=
    lng_max``); a box that reaches a pole spans every longitude.
    """
    # Widened by about a centimetre so float rounding never drops a point on the edge.
    angle = max(0.0, radius_m) / EARTH_RADIUS_M + _BOX_SLACK_RAD
    dlat = math.degrees(angle)
    lat_min, lat_max = lat - dlat, lat + dlat
    if lat_min <= -90.0 or lat_max >= 90.0 or angle >= math.pi / 2:
        return max(lat_min, -90.0), min(lat_max, 90.0), -180.0, 180.0
    # The widest longitude of a spherical cap that stays clear of the poles.
    dlng = math.degrees(math.asin(min(1.0, math.sin(angle) / math.cos(math.radians(lat)))))
    if dlng >= 180.0:
        return lat_min, lat_max, -180.0, 180.0
    lng_min, lng_max = lng - dlng, lng + dlng
    if lng_min < -180.0:
        lng_min += 360.0
    if lng_max > 180.0:
        lng_max -= 360.0
    return lat_min, lat_max, lng_min, lng_max


def validate_location(v: Validator, field: str, lat: float | None, lng: float | None) -> None:
    """Records violations under ``field`` unless the point is valid; ``None`` means missing."""
    if lat is None or lng is None:
        v.add(field, "is required")
        return
    v.check(
        math.isfinite(lat) and -90.0 <= lat <= 90.0,
        f"{field}.latitude",
        "must be a finite latitude in [-90, 90]",
    )
    v.check(
        math.isfinite(lng) and -180.0 <= lng <= 180.0,
        f"{field}.longitude",
        "must be a finite longitude in [-180, 180]",
    )
