"""Arrival detection: geofences with a dwell around each active order's merchant and customer.

A courier has arrived when their positions stay inside a circle around the point for a while,
not when one fix lands inside it: GPS jitters by tens of metres, couriers drive past merchants on
the way elsewhere, and phones report every few seconds or, idle or in a tunnel, much less often.
So each fence is judged on the path between consecutive live fixes, not on the fixes alone: the
straight segment from the previous fix to this one is intersected with the circle, the entry and
exit times are interpolated along it, and a stay counts once it has lasted ``dwell_s`` by the
phone's clock. A fix at 2 km followed a minute later by one at 30 m crossed the approach band and
entered the customer fence in between, although no fix landed in the band.

Distances come from an equirectangular projection about the fence's centre, in which a segment
stays straight and its crossing with a circle is a quadratic: within the few kilometres that
matter here it agrees with the haversine distance to well under a metre. Fences near the poles
or segments spanning hundreds of kilometres are outside what it is meant for (such a segment is
cut by ``max_gap_s`` anyway, or lies far outside every fence).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from location_svc.domain.fixes import Fix
from mesh.geo import EARTH_RADIUS_M


class ArrivalKind(StrEnum):
    """What a courier's positions showed (ArrivalEventType in the API, lowercased)."""

    ARRIVED_AT_MERCHANT = "arrived_at_merchant"
    ARRIVED_AT_CUSTOMER = "arrived_at_customer"
    APPROACHING_CUSTOMER = "approaching_customer"


class Leg(StrEnum):
    """Where the courier is headed on an order."""

    TO_MERCHANT = "to_merchant"
    TO_CUSTOMER = "to_customer"


@dataclass(frozen=True)
class GeofenceRules:
    """The sizes of the fences and how long a stay must last."""

    #: Radius of the fence around the merchant's pickup point, in metres.
    merchant_radius_m: float = 75.0
    #: Radius of the fence around the delivery location, in metres.
    customer_radius_m: float = 75.0
    #: A courier inside a fence leaves it only beyond radius + this (hysteresis against jitter).
    exit_margin_m: float = 25.0
    #: Seconds a courier must stay inside a fence (device time) for an arrival; 0 = on entry.
    dwell_s: float = 20.0
    #: Within this many metres of the customer the courier is approaching (0 turns it off).
    approach_m: float = 500.0
    #: Within this many seconds of the customer at the current speed: approaching (0 = off).
    approach_s: float = 60.0
    #: The speed the time estimate assumes at least, in m/s (a courier at a light is not 0 m/s).
    min_speed_mps: float = 3.0
    #: Fixes further apart than this (seconds) are not joined by a segment: the path is unknown.
    max_gap_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("merchant_radius_m", "customer_radius_m", "min_speed_mps", "max_gap_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("exit_margin_m", "dwell_s", "approach_m", "approach_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")

    def approach_radius_m(self, speed_mps: float) -> float:
        """How close to the customer counts as approaching at ``speed_mps``.

        Never less than the customer fence, so a courier always approaches before (or as) they
        arrive.
        """
        by_time = max(speed_mps, self.min_speed_mps) * self.approach_s
        return max(self.customer_radius_m, self.approach_m, by_time)


@dataclass(frozen=True, slots=True)
class OrderFence:
    """One active order of a courier: its two points and which one the courier is headed to."""

    order_id: str
    merchant_lat: float
    merchant_lng: float
    customer_lat: float
    customer_lng: float
    leg: Leg = Leg.TO_MERCHANT
    #: The order's version this view was taken at (newer order events replace older ones).
    version: int = 0

    def same_points(self, other: OrderFence) -> bool:
        """Whether ``other`` has the same merchant and customer points."""
        return (
            self.merchant_lat == other.merchant_lat
            and self.merchant_lng == other.merchant_lng
            and self.customer_lat == other.customer_lat
            and self.customer_lng == other.customer_lng
        )


@dataclass(frozen=True, slots=True)
class Arrival:
    """An event a courier's positions triggered."""

    order_id: str
    kind: ArrivalKind
    #: Position of the fix that triggered the event.
    lat: float
    lng: float
    #: Device time of the fix that triggered the event, in ms since the epoch.
    time_ms: int
    #: When the courier crossed into the fence or band, interpolated along the path, in ms.
    since_ms: int


def _local_xy(lat0: float, lng0: float, lat: float, lng: float) -> tuple[float, float]:
    """Metres east and north of ``(lat0, lng0)`` in a projection centred there."""
    dlng = (lng - lng0 + 540.0) % 360.0 - 180.0  # the short way across the antimeridian
    x = math.radians(dlng) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
    y = math.radians(lat - lat0) * EARTH_RADIUS_M
    return x, y


def inside_span(
    x0: float, y0: float, x1: float, y1: float, radius: float
) -> tuple[float, float] | None:
    """The part ``(a, b)``, as fractions of the way, of segment p0→p1 within ``radius`` of 0.

    A line meets a disc in one interval, so the part inside is one span (or none).
    """
    dx, dy = x1 - x0, y1 - y0
    qa = dx * dx + dy * dy
    qc = x0 * x0 + y0 * y0 - radius * radius
    if qa == 0.0:
        return (0.0, 1.0) if qc <= 0.0 else None
    qb = 2.0 * (x0 * dx + y0 * dy)
    disc = qb * qb - 4.0 * qa * qc
    if disc < 0.0:
        return None
    root = math.sqrt(disc)
    a = max(0.0, (-qb - root) / (2.0 * qa))
    b = min(1.0, (-qb + root) / (2.0 * qa))
    if qc <= 0.0:
        a = 0.0  # p0 is inside: rounding must not move the entry past it
    return (a, b) if a <= b else None


class GeofenceTracker:
    """The state machine of one courier on one order, fed with the courier's live fixes in order.

    Each event fires at most once; arrived-at-customer and approaching only after the pickup
    (``leg`` TO_CUSTOMER); approaching never after arrived-at-customer. Fixes that are not newer
    than the last one are ignored.
    """

    __slots__ = ("_entered_ms", "_last", "fence", "fired", "rules")

    def __init__(
        self, fence: OrderFence, rules: GeofenceRules, fired: Iterable[ArrivalKind] = ()
    ) -> None:
        self.fence = fence
        self.rules = rules
        #: Events already fired for this courier and order (here or, restored, elsewhere).
        self.fired: set[ArrivalKind] = set(fired)
        self._last: Fix | None = None
        # When the courier entered the fence of the current leg and has not left since.
        self._entered_ms: int | None = None

    def update(self, fence: OrderFence) -> None:
        """Takes a newer view of the order: the courier picked it up, or a point moved."""
        if fence.leg != self.fence.leg or not fence.same_points(self.fence):
            # A stay at the merchant says nothing about the customer; the path so far still
            # counts (the segment from the last fix may cross the approach band).
            self._entered_ms = None
        self.fence = fence

    def forget(self, kind: ArrivalKind) -> None:
        """Un-fires ``kind`` (its event could not be published): the next fix may fire it again."""
        self.fired.discard(kind)

    def observe(self, fix: Fix) -> list[Arrival]:
        """Advances the machine by ``fix``; the events it fired, in the order they happened."""
        prev = self._last
        if prev is not None and fix.device_time_ms <= prev.device_time_ms:
            return []
        if (
            prev is not None
            and fix.device_time_ms - prev.device_time_ms > self.rules.max_gap_s * 1000
        ):
            # Where the courier went during a long gap is unknown: neither a stay nor a crossing
            # can be inferred across it.
            prev = None
            self._entered_ms = None
        self._last = fix
        fence, rules, fired = self.fence, self.rules, self.fired
        out: list[Arrival] = []
        if fence.leg is Leg.TO_MERCHANT:
            if ArrivalKind.ARRIVED_AT_MERCHANT not in fired:
                since = self._dwell(
                    prev, fix, fence.merchant_lat, fence.merchant_lng, rules.merchant_radius_m
                )
                if since is not None:
                    out.append(self._fire(ArrivalKind.ARRIVED_AT_MERCHANT, fix, since))
            return out
        if ArrivalKind.ARRIVED_AT_CUSTOMER in fired:
            return out
        if ArrivalKind.APPROACHING_CUSTOMER not in fired:
            since = self._approach(prev, fix)
            if since is not None:
                out.append(self._fire(ArrivalKind.APPROACHING_CUSTOMER, fix, since))
        since = self._dwell(
            prev, fix, fence.customer_lat, fence.customer_lng, rules.customer_radius_m
        )
        if since is not None:
            out.append(self._fire(ArrivalKind.ARRIVED_AT_CUSTOMER, fix, since))
        return out

    def _fire(self, kind: ArrivalKind, fix: Fix, since_ms: int) -> Arrival:
        self.fired.add(kind)
        return Arrival(self.fence.order_id, kind, fix.lat, fix.lng, fix.device_time_ms, since_ms)

    def _approach(self, prev: Fix | None, fix: Fix) -> int | None:
        """When the path to ``fix`` entered the approach band, or None if it did not."""
        fence = self.fence
        speed = fix.speed_mps if math.isfinite(fix.speed_mps) and fix.speed_mps > 0 else 0.0
        x1, y1 = _local_xy(fence.customer_lat, fence.customer_lng, fix.lat, fix.lng)
        if prev is None:
            radius = self.rules.approach_radius_m(speed)
            return fix.device_time_ms if x1 * x1 + y1 * y1 <= radius * radius else None
        x0, y0 = _local_xy(fence.customer_lat, fence.customer_lng, prev.lat, prev.lng)
        if speed == 0.0:
            # No speed from the phone: the average along the segment is the next best guess.
            seconds = (fix.device_time_ms - prev.device_time_ms) / 1000
            speed = math.hypot(x1 - x0, y1 - y0) / seconds
        span = inside_span(x0, y0, x1, y1, self.rules.approach_radius_m(speed))
        return None if span is None else _at(prev, fix, span[0])

    def _dwell(
        self, prev: Fix | None, fix: Fix, lat: float, lng: float, radius: float
    ) -> int | None:
        """Tracks the stay in the fence around ``(lat, lng)``; its start once it lasted the dwell.

        Entering means crossing ``radius``; leaving, crossing ``radius + exit_margin_m``, so a
        courier waiting near the edge is not thrown out by every jittery fix.
        """
        dwell_ms = self.rules.dwell_s * 1000
        outer = radius + self.rules.exit_margin_m
        x1, y1 = _local_xy(lat, lng, fix.lat, fix.lng)
        if prev is None:
            limit = radius if self._entered_ms is None else outer
            if x1 * x1 + y1 * y1 > limit * limit:
                self._entered_ms = None
                return None
            if self._entered_ms is None:
                self._entered_ms = fix.device_time_ms
            entered = self._entered_ms
            return entered if fix.device_time_ms - entered >= dwell_ms else None
        x0, y0 = _local_xy(lat, lng, prev.lat, prev.lng)
        if self._entered_ms is None:
            span = inside_span(x0, y0, x1, y1, radius)
            if span is None:
                return None
            self._entered_ms = _at(prev, fix, span[0])
        # Inside now (entered earlier, or on this segment): the stay lasts until the path leaves
        # the wider circle, which contains the entry point.
        stay = inside_span(x0, y0, x1, y1, outer)
        entered = self._entered_ms
        if stay is None or stay[1] < 1.0:
            # Left before this fix. A stay that lasted the dwell between two sparse fixes is
            # still an arrival: late, but not skipped.
            left_ms = _at(prev, fix, stay[1]) if stay is not None else prev.device_time_ms
            self._entered_ms = None
            return entered if left_ms - entered >= dwell_ms else None
        return entered if fix.device_time_ms - entered >= dwell_ms else None


def _at(prev: Fix, fix: Fix, fraction: float) -> int:
    """The device time ``fraction`` of the way from ``prev`` to ``fix``, in ms."""
    return prev.device_time_ms + round(fraction * (fix.device_time_ms - prev.device_time_ms))
