"""matching_svc's tunables from the environment (``DELIVERY_*``), read once at start.

A malformed or out-of-range value stops the service at start with the variable's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from matching_svc.dispatcher import DispatchRules
from matching_svc.domain.stacking import StackingRules
from mesh.breaker import BreakerSettings
from mesh.settings import PREFIX, env_bool, env_int, env_non_negative, env_positive


@dataclass(frozen=True)
class MatchingSettings:
    rules: DispatchRules = field(default_factory=DispatchRules)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    #: How often the dispatch loop expires offers and runs due jobs, in seconds.
    tick_s: float = 0.2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MatchingSettings:
        """Reads the variables documented in docs/operations.md."""
        env = os.environ if env is None else env
        r, b, st = DispatchRules(), BreakerSettings(), StackingRules()
        attempts = env_int(env, "DISPATCH_MAX_ATTEMPTS", r.max_attempts)
        if attempts < 1:
            raise ValueError(f"{PREFIX}DISPATCH_MAX_ATTEMPTS must be at least 1, got {attempts}")
        return cls(
            rules=DispatchRules(
                offer_ttl_s=env_positive(env, "OFFER_TTL_S", r.offer_ttl_s),
                max_attempts=attempts,
                radii_m=r.radii_m,
                candidates=r.candidates,
                search_again_s=env_positive(env, "DISPATCH_SEARCH_AGAIN_S", r.search_again_s),
                retry_after_s=env_positive(env, "DISPATCH_RETRY_AFTER_S", r.retry_after_s),
                lead_s=env_non_negative(env, "DISPATCH_LEAD_S", r.lead_s),
                stats_window_s=r.stats_window_s,
                scoring=r.scoring,
                stacking=StackingRules(
                    enabled=env_bool(env, "DISPATCH_STACKING", st.enabled),
                    max_pickup_m=env_non_negative(env, "STACK_MAX_PICKUP_M", st.max_pickup_m),
                    max_detour_s=60
                    * env_non_negative(env, "STACK_MAX_DETOUR_MIN", st.max_detour_s / 60),
                    max_delay_s=60
                    * env_non_negative(env, "STACK_MAX_DELAY_MIN", st.max_delay_s / 60),
                    speed_mps=env_positive(env, "COURIER_SPEED_MPS", st.speed_mps),
                    road_factor=st.road_factor,
                ),
            ),
            breaker=BreakerSettings(
                failure_ratio=b.failure_ratio,
                min_calls=b.min_calls,
                window_s=b.window_s,
                open_s=env_positive(env, "BREAKER_OPEN_S", b.open_s),
                call_timeout_s=b.call_timeout_s,
            ),
            tick_s=env_positive(env, "DISPATCH_TICK_S", 0.2),
        )
