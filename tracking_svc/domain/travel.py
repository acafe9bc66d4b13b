"""How long a courier takes between two points: the interface the ETA and the planner share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from mesh.geo import EARTH_RADIUS_M
from order_svc.domain.accounts import VehicleType

#: The courier's vehicle: the accounts' own enum (the strings stored in PostgreSQL).
Vehicle = VehicleType


@dataclass(frozen=True, slots=True)
class Point:
    """A WGS84 position in degrees."""

    lat: float
    lng: float


@dataclass(frozen=True, slots=True)
class Leg:
    """One trip between two points."""

    #: Travel time in seconds.
    seconds: float
    #: Travel distance in meters.
    meters: float


class TravelTimes(Protocol):
    """Travel time and distance between points for a vehicle at an hour of the day (UTC, 0-23).

    Implementations are synchronous and cheap enough to call per courier fix (a table lookup or
    a few arithmetic operations), since the ETA is recomputed on every movement.
    """

    def leg(self, origin: Point, destination: Point, vehicle: Vehicle, hour: int) -> Leg: ...


#: Typical speeds in a city, in m/s, where nothing better is known.
DEFAULT_SPEED_MPS: dict[Vehicle, float] = {
    Vehicle.BICYCLE: 4.5,
    Vehicle.MOTORCYCLE: 7.5,
    Vehicle.CAR: 7.0,
    Vehicle.VAN: 6.5,
}


def great_circle_m(a: Point, b: Point) -> float:
    """The great-circle distance between two points, in meters."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlng = math.radians(b.lng - a.lng)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlng / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class CrowFlies:
    """Travel where no road network is loaded: distance times a circuity factor over a speed."""

    #: How much longer than the straight line a trip through streets is.
    circuity: float = 1.35

    def leg(self, origin: Point, destination: Point, vehicle: Vehicle, hour: int) -> Leg:
        meters = great_circle_m(origin, destination) * self.circuity
        return Leg(meters / DEFAULT_SPEED_MPS[vehicle], meters)
