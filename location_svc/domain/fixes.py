"""The GPS sanity pipeline: which fixes are believed, and why the others are dropped.

Phones report positions that are wrong in well-known ways (Traccar's and Namma Yatri's
filters catch the same ones): out of range or NaN, too inaccurate to use, stamped in the
future or long ago, repeated, older than what was already seen, or implying a jump no vehicle
makes. A dropped fix is counted by reason; it never ends the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from mesh.geo import haversine_m, valid_lat_lng


class DropReason(StrEnum):
    """Why a fix was not believed (FixDropReason in the API)."""

    OUT_OF_RANGE = "out_of_range"
    POOR_ACCURACY = "poor_accuracy"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    IMPOSSIBLE_SPEED = "impossible_speed"


class Fix(NamedTuple):
    """One position report from a phone (a named tuple: one is built per fix received)."""

    lat: float
    lng: float
    accuracy_m: float
    heading_deg: float
    speed_mps: float
    #: The phone's clock when the position was taken, in milliseconds since the epoch.
    device_time_ms: int
    #: The app's own counter; echoed in acks.
    sequence: int = 0


@dataclass(frozen=True)
class FixRules:
    """The thresholds of the sanity pipeline."""

    #: Fixes less accurate than this (metres, 68% radius) are dropped.
    max_accuracy_m: float = 50.0
    #: How far ahead of the server clock a device clock may run, in seconds.
    max_future_s: float = 30.0
    #: How old a fix may be to be taken at all (buffered offline fixes included), in seconds.
    max_age_s: float = 24 * 3600.0
    #: The fastest a courier can plausibly move, in km/h.
    max_speed_kmh: float = 250.0
    #: Jumps shorter than this never count as impossible: GPS jitter between close fixes.
    jitter_m: float = 100.0


def check_shape(fix: Fix, now_ms: int, rules: FixRules) -> DropReason | None:
    """The checks that need no history: range, accuracy, clock."""
    if not valid_lat_lng(fix.lat, fix.lng):
        return DropReason.OUT_OF_RANGE
    if not math.isfinite(fix.accuracy_m) or fix.accuracy_m < 0:
        return DropReason.POOR_ACCURACY
    if fix.accuracy_m > rules.max_accuracy_m:
        return DropReason.POOR_ACCURACY
    if fix.device_time_ms > now_ms + rules.max_future_s * 1000:
        return DropReason.FUTURE_TIMESTAMP
    if fix.device_time_ms < now_ms - rules.max_age_s * 1000:
        return DropReason.STALE_TIMESTAMP
    return None


def check_against(fix: Fix, last: Fix | None, rules: FixRules) -> DropReason | None:
    """The checks against the newest believed fix: repeats, order, implied speed."""
    if last is None:
        return None
    if fix.device_time_ms == last.device_time_ms:
        return DropReason.DUPLICATE
    if fix.device_time_ms < last.device_time_ms:
        return DropReason.OUT_OF_ORDER
    distance = haversine_m(last.lat, last.lng, fix.lat, fix.lng)
    if distance <= rules.jitter_m:
        return None
    seconds = (fix.device_time_ms - last.device_time_ms) / 1000
    if distance / seconds * 3.6 > rules.max_speed_kmh:
        return DropReason.IMPOSSIBLE_SPEED
    return None


def check(fix: Fix, last: Fix | None, now_ms: int, rules: FixRules) -> DropReason | None:
    """Why ``fix`` is dropped given the newest believed fix ``last``, or ``None`` to keep it."""
    return check_shape(fix, now_ms, rules) or check_against(fix, last, rules)
