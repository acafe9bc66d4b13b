"""location_svc's tunables from the environment (``DELIVERY_*``), read once at start.

Presence, the sanity pipeline's thresholds, reporting intervals and the arrival fences are
what operators tune per city; everything else keeps the defaults of the dataclasses it fills.
A malformed or out-of-range value stops the service at start with the variable's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from location_svc.domain.fixes import FixRules
from location_svc.domain.geofence import GeofenceRules
from location_svc.domain.presence import Pacing
from location_svc.service import LocationPolicy
from mesh.settings import env_int, env_non_negative, env_positive


@dataclass(frozen=True)
class LocationSettings:
    """What ``build_server`` uses when not given a policy or rules of its own."""

    policy: LocationPolicy = field(default_factory=LocationPolicy)
    rules: GeofenceRules = field(default_factory=GeofenceRules)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocationSettings:
        """Reads the variables documented in docs/operations.md."""
        env = os.environ if env is None else env
        p, f, g, pace = LocationPolicy(), FixRules(), GeofenceRules(), Pacing()

        def positive(name: str, default: float) -> float:
            return env_positive(env, name, default)

        def non_negative(name: str, default: float) -> float:
            return env_non_negative(env, name, default)

        radius = positive("ARRIVAL_RADIUS_M", g.merchant_radius_m)
        streams = env_int(env, "WATCH_STREAMS_PER_CALLER", p.watch_streams_per_caller)
        if streams < 1:
            raise ValueError(f"DELIVERY_WATCH_STREAMS_PER_CALLER must be at least 1, got {streams}")
        return cls(
            policy=LocationPolicy(
                rules=FixRules(
                    max_accuracy_m=positive("FIX_MAX_ACCURACY_M", f.max_accuracy_m),
                    max_future_s=non_negative("FIX_MAX_FUTURE_S", f.max_future_s),
                    max_age_s=positive("FIX_MAX_AGE_S", f.max_age_s),
                    max_speed_kmh=positive("FIX_MAX_SPEED_KMH", f.max_speed_kmh),
                    jitter_m=f.jitter_m,
                ),
                pacing=Pacing(
                    busy_s=positive("REPORT_BUSY_S", pace.busy_s),
                    available_s=positive("REPORT_AVAILABLE_S", pace.available_s),
                    offline_s=positive("REPORT_OFFLINE_S", pace.offline_s),
                ),
                presence_ttl_s=positive("PRESENCE_TTL_S", p.presence_ttl_s),
                watch_ttl_s=p.watch_ttl_s,
                watch_streams_per_caller=streams,
                ack_spacing_s=non_negative("ACK_SPACING_S", p.ack_spacing_s),
            ),
            rules=GeofenceRules(
                merchant_radius_m=radius,
                customer_radius_m=radius,
                exit_margin_m=g.exit_margin_m,
                dwell_s=non_negative("ARRIVAL_DWELL_S", g.dwell_s),
                approach_m=non_negative("APPROACH_M", g.approach_m),
                approach_s=non_negative("APPROACH_S", g.approach_s),
                min_speed_mps=g.min_speed_mps,
                max_gap_s=g.max_gap_s,
            ),
        )
