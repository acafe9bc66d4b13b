"""Proto <-> domain mapping for location_svc."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2
from location_svc.domain.fixes import DropReason, Fix
from location_svc.domain.presence import DriverStatus, Presence

DROP_TO_PROTO: dict[DropReason, Any] = {
    DropReason.OUT_OF_RANGE: location_pb2.FIX_DROP_REASON_OUT_OF_RANGE,
    DropReason.POOR_ACCURACY: location_pb2.FIX_DROP_REASON_POOR_ACCURACY,
    DropReason.FUTURE_TIMESTAMP: location_pb2.FIX_DROP_REASON_FUTURE_TIMESTAMP,
    DropReason.STALE_TIMESTAMP: location_pb2.FIX_DROP_REASON_STALE_TIMESTAMP,
    DropReason.DUPLICATE: location_pb2.FIX_DROP_REASON_DUPLICATE,
    DropReason.OUT_OF_ORDER: location_pb2.FIX_DROP_REASON_OUT_OF_ORDER,
    DropReason.IMPOSSIBLE_SPEED: location_pb2.FIX_DROP_REASON_IMPOSSIBLE_SPEED,
}
STATUS_TO_PROTO: dict[DriverStatus, Any] = {
    DriverStatus.OFFLINE: common_pb2.DRIVER_STATUS_OFFLINE,
    DriverStatus.AVAILABLE: common_pb2.DRIVER_STATUS_AVAILABLE,
    DriverStatus.BUSY: common_pb2.DRIVER_STATUS_BUSY,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}
PRESENCE_TO_PROTO: dict[Presence, Any] = {
    Presence.ONLINE: location_pb2.PRESENCE_ONLINE,
    Presence.SILENT: location_pb2.PRESENCE_SILENT,
    Presence.STREAM_CLOSED: location_pb2.PRESENCE_STREAM_CLOSED,
    Presence.OFFLINE: location_pb2.PRESENCE_OFFLINE,
}
VEHICLE_TO_PROTO: dict[str, Any] = {
    "bicycle": common_pb2.VEHICLE_TYPE_BICYCLE,
    "motorcycle": common_pb2.VEHICLE_TYPE_MOTORCYCLE,
    "car": common_pb2.VEHICLE_TYPE_CAR,
    "van": common_pb2.VEHICLE_TYPE_VAN,
}
VEHICLE_FROM_PROTO = {v: k for k, v in VEHICLE_TO_PROTO.items()}


def fix_from_proto(fix: location_pb2.LocationFix) -> Fix:
    """A domain fix; a missing position or time becomes NaN / 0 and fails the sanity checks."""
    # Positional, and each sub-message read once: this runs for every fix received.
    t = fix.device_time
    if fix.HasField("position"):
        position = fix.position
        lat, lng = position.latitude, position.longitude
    else:
        lat = lng = math.nan
    return Fix(
        lat,
        lng,
        fix.accuracy_meters,
        fix.heading_degrees,
        fix.speed_mps,
        t.seconds * 1000 + t.nanos // 1_000_000,
        fix.sequence,
    )


def timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    """A Timestamp for milliseconds since the epoch."""
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def seconds(value: float) -> duration_pb2.Duration:
    """A Duration of ``value`` seconds."""
    whole = int(value)
    return duration_pb2.Duration(seconds=whole, nanos=int((value - whole) * 1e9))


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The server's clock as a Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts
