"""tracking_svc's tunables from the environment (``DELIVERY_*``), read once at start.

A malformed or out-of-range value stops the service at start with the variable's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.settings import env_int, env_positive
from tracking_svc.domain.eta import EtaRules
from tracking_svc.live import LiveRules


@dataclass(frozen=True)
class TrackingSettings:
    """What ``build_server`` uses when not given rules of its own."""

    live: LiveRules = field(default_factory=LiveRules)
    #: Logged updates kept per order for resuming watchers.
    log_entries: int = 500
    #: How often street speeds are learned again from the couriers' history, in seconds.
    speeds_every_s: float = 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrackingSettings:
        """Reads the variables documented in docs/operations.md."""
        env = os.environ if env is None else env
        live, eta = LiveRules(), EtaRules()
        return cls(
            live=LiveRules(
                stale_after_s=env_positive(env, "POSITION_STALE_S", live.stale_after_s),
                position_interval_s=env_positive(
                    env, "TRACKING_POSITION_INTERVAL_S", live.position_interval_s
                ),
                max_backlog=max(1, env_int(env, "TRACKING_MAX_BACKLOG", live.max_backlog)),
                linger_s=env_positive(env, "TRACKING_LINGER_S", live.linger_s),
                route_every_s=env_positive(env, "TRACKING_ROUTE_EVERY_S", live.route_every_s),
                eta_every_s=env_positive(env, "ETA_EVERY_S", live.eta_every_s),
                eta=EtaRules(
                    noticeable_s=env_positive(env, "ETA_NOTICEABLE_S", eta.noticeable_s),
                ),
            ),
            log_entries=max(10, env_int(env, "TRACKING_LOG_ENTRIES", cls.log_entries)),
            speeds_every_s=env_positive(env, "SPEEDS_EVERY_S", cls.speeds_every_s),
        )
