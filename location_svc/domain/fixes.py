"""The GPS sanity pipeline: which fixes are believed, and why the others are dropped.

Phones report positions that are wrong in well-known ways (Traccar's and Namma Yatri's
filters catch the same ones): out of range, NaN or exactly 0, 0 (a phone with no fix yet), too
inaccurate to use, stamped in the future or long ago, repeated, older than what was already
seen, or implying a jump no vehicle makes. A dropped fix is counted by reason; it never ends
the stream. A heading or speed that is no measurement (NaN, infinite, out of its range) is
"not known", as the API writes it, rather than a reason to lose the position.

The speed check trusts the newest believed fix; when that one was wrong (a wild first fix, a
cached position from yesterday), every true fix would look like a jump from it until the
distance could be covered at top speed. So fixes that keep arriving impossible from it but
consistent among themselves (:class:`Jumps`) become the new anchor.
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
    #: Fixes in a row, each an impossible jump from the believed fix but reachable from the
    #: one before, that make the courier's new position believed (the old anchor was wrong).
    reanchor_fixes: int = 3
    #: ... and the least time they span, in seconds: a burst of one bad reading is no track.
    reanchor_span_s: float = 5.0

    @property
    def max_speed_mps(self) -> float:
        """:attr:`max_speed_kmh` in metres per second."""
        return self.max_speed_kmh / 3.6


@dataclass(slots=True)
class Jumps:
    """The fixes in a row dropped as impossible jumps that agree with each other: where the
    courier really is, if the believed fix was wrong. Only the ends are kept."""

    first: Fix | None = None
    last: Fix | None = None
    count: int = 0

    def clear(self) -> None:
        """Forgets the run (a fix was believed)."""
        self.first = self.last = None
        self.count = 0

    def start(self, fix: Fix) -> None:
        """Starts a new run with ``fix``."""
        self.first = self.last = fix
        self.count = 1


#: What a heading or speed that is not known is sent back as ("negative if not known").
UNKNOWN = -1.0


def check_shape(fix: Fix, now_ms: int, rules: FixRules) -> DropReason | None:
    """The checks that need no history: range, accuracy, clock."""
    if not valid_lat_lng(fix.lat, fix.lng):
        return DropReason.OUT_OF_RANGE
    if fix.lat == 0.0 and fix.lng == 0.0:
        # Null Island: what a phone reports before it has a position, never a courier.
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


def check_track(fix: Fix, last: Fix | None, jumps: Jumps, rules: FixRules) -> DropReason | None:
    """:func:`check_against`, with the way out of a wrong anchor: a fix that is an impossible
    jump from ``last`` joins ``jumps`` (updated in place) if it is reachable from the run's
    newest fix, else starts a run of its own; a run of :attr:`FixRules.reanchor_fixes` over at
    least :attr:`FixRules.reanchor_span_s` is believed (``None``), the old anchor forgotten.
    A believed fix ends the run: the jumps were the outliers."""
    reason = check_against(fix, last, rules)
    if reason is not DropReason.IMPOSSIBLE_SPEED:
        if reason is None:
            jumps.clear()
        return reason
    if jumps.last is None:
        jumps.start(fix)
    else:
        from_run = check_against(fix, jumps.last, rules)
        if from_run is None:
            jumps.last = fix
            jumps.count += 1
        elif from_run is DropReason.IMPOSSIBLE_SPEED:
            jumps.start(fix)
        # A repeat of the run's fix, or an older one, leaves the run as it is.
    assert jumps.first is not None
    if (
        jumps.count >= rules.reanchor_fixes
        and fix.device_time_ms - jumps.first.device_time_ms >= rules.reanchor_span_s * 1000
        and jumps.last is fix
    ):
        jumps.clear()
        return None
    return DropReason.IMPOSSIBLE_SPEED


def check(
    fix: Fix, last: Fix | None, now_ms: int, rules: FixRules, jumps: Jumps | None = None
) -> DropReason | None:
    """Why ``fix`` is dropped given the newest believed fix ``last``, or ``None`` to keep it;
    with ``jumps``, a run of consistent jumps re-anchors (:func:`check_track`)."""
    reason = check_shape(fix, now_ms, rules)
    if reason is not None:
        return reason
    if jumps is None:
        return check_against(fix, last, rules)
    return check_track(fix, last, jumps, rules)


def motion_known(fix: Fix, rules: FixRules) -> Fix:
    """``fix`` with a heading or speed that is no measurement made "not known" (:data:`UNKNOWN`).

    The API says a heading lies in [0, 360) and either is negative when not known; NaN, an
    infinity, a heading of 360 or more and a speed no vehicle reaches are no readings, and the
    position beside them is still good. Every value that leaves here is finite.
    """
    heading, speed = fix.heading_deg, fix.speed_mps
    heading_ok = 0.0 <= heading < 360.0 or heading == UNKNOWN
    speed_ok = 0.0 <= speed <= rules.max_speed_mps or speed == UNKNOWN
    if heading_ok and speed_ok:
        return fix
    return fix._replace(
        heading_deg=heading if heading_ok else UNKNOWN,
        speed_mps=speed if speed_ok else UNKNOWN,
    )
