"""Presence and pacing: whether a driver is live, and how often their app should report."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DriverStatus(StrEnum):
    """The availability a driver (or dispatch) set; the strings stored in PostgreSQL and Redis."""

    OFFLINE = "offline"
    AVAILABLE = "available"
    BUSY = "busy"


class Presence(StrEnum):
    """Whether a driver's position is live (Presence in the API)."""

    ONLINE = "online"
    SILENT = "silent"
    STREAM_CLOSED = "stream_closed"
    OFFLINE = "offline"


@dataclass(frozen=True)
class Pacing:
    """How often an app should send fixes, by status, in seconds."""

    #: Delivering: customers watch the marker.
    busy_s: float = 2.0
    #: Waiting for an offer: dispatch needs a recent position, not a smooth track.
    available_s: float = 5.0
    #: Off shift: an occasional fix keeps the session honest.
    offline_s: float = 30.0

    def interval(self, status: DriverStatus) -> float:
        """The reporting interval for ``status``."""
        if status is DriverStatus.BUSY:
            return self.busy_s
        if status is DriverStatus.AVAILABLE:
            return self.available_s
        return self.offline_s


def presence(
    *, status: DriverStatus, stream_open: bool | None, fix_age_s: float | None, ttl_s: float
) -> Presence:
    """Live, silent (no fix within the TTL), stream closed, or offline.

    "Stream closed" (the app hung up its stream) and "silent" (the stream is open, or the app
    never streams, but no fix arrived within the TTL: a tunnel, a sleeping phone) are
    different: the first usually ends a shift, the second usually fixes itself.
    """
    if status is DriverStatus.OFFLINE:
        return Presence.OFFLINE
    if fix_age_s is not None and fix_age_s <= ttl_s:
        return Presence.ONLINE
    if stream_open is False:
        return Presence.STREAM_CLOSED
    return Presence.SILENT
