"""The delivery estimate: one model behind GetEta and TrackOrder.

The estimate is the sum of what is left: the merchant's preparation (from confirmation, by the
merchant's learned average or its own estimate), the courier's way to the merchant (or the
wait for one), the pickup, the way to the door and the handoff. Travel times come from a
:class:`~tracking_svc.domain.travel.TravelTimes` (the road network where one is loaded).

The band is not a fixed plus or minus: it is the spread of past errors, measured as a share
of the time that was left when the estimate was made, between the quantiles that leave about
10% of deliveries early and 10% late (see :class:`Band`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tracking_svc.domain.travel import Point, TravelTimes, Vehicle

#: Statuses after which nothing is left to estimate.
FINAL = frozenset({"delivered", "cancelled"})


@dataclass(frozen=True, slots=True)
class EtaRules:
    """The fixed parts of the model, in seconds."""

    #: How long a merchant takes to confirm a pending order.
    confirm_wait_s: float = 120.0
    #: How long until a courier is assigned, for an order that has none yet.
    dispatch_wait_s: float = 120.0
    #: How long a courier takes at the merchant once the food is ready.
    pickup_service_s: float = 90.0
    #: How long the handoff at the door takes.
    dropoff_service_s: float = 90.0
    #: A new estimate is sent only when it moved at least this much.
    noticeable_s: float = 45.0


@dataclass(frozen=True, slots=True)
class Band:
    """Where the actual delivery falls around the estimate, as shares of the time left.

    ``low`` and ``high`` are quantiles of ``(actual - estimated) / time left``; ``floor_s``
    keeps the band from collapsing to nothing near the end.
    """

    low: float = -0.15
    high: float = 0.25
    floor_s: float = 60.0
    #: How many delivered orders it was calibrated on (0: the defaults).
    samples: int = 0

    @classmethod
    def calibrated(
        cls, residuals: Sequence[float], *, coverage: float = 0.8, min_samples: int = 30
    ) -> Band:
        """The band holding ``coverage`` of ``residuals`` (equal tails); defaults if too few."""
        if len(residuals) < min_samples:
            return cls(samples=len(residuals))
        ordered = sorted(residuals)
        tail = (1 - coverage) / 2
        return cls(
            low=min(0.0, _quantile(ordered, tail)),
            high=max(0.0, _quantile(ordered, 1 - tail)),
            samples=len(ordered),
        )


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@dataclass(frozen=True, slots=True)
class EtaInputs:
    """What the estimate of one order depends on; times are epoch seconds."""

    now: float
    status: str
    merchant: Point
    door: Point
    #: The preparation time to expect, from confirmation.
    prep_s: float
    confirmed_at: float | None = None
    ready_at: float | None = None
    #: The courier's last position, if one is assigned and their position known.
    courier: Point | None = None
    #: Whether a courier is assigned.
    assigned: bool = False
    vehicle: Vehicle = Vehicle.MOTORCYCLE


@dataclass(frozen=True, slots=True)
class Estimate:
    """Estimated times of one order, epoch seconds."""

    #: When the courier collects the order; ``None`` once picked up.
    pickup: float | None
    delivery: float
    low: float
    high: float
    computed: float

    def moved(self, other: Estimate | None, noticeable_s: float) -> bool:
        """Whether this estimate differs from ``other`` enough to be worth sending."""
        if other is None or (self.pickup is None) != (other.pickup is None):
            return True
        return abs(self.delivery - other.delivery) >= noticeable_s


def estimate(
    inputs: EtaInputs, travel: TravelTimes, rules: EtaRules, band: Band, hour: int
) -> Estimate:
    """The estimate for ``inputs``; the caller makes sure the order is not final."""
    now, vehicle = inputs.now, inputs.vehicle
    if inputs.status == "picked_up":
        start = inputs.courier or inputs.merchant
        pickup = None
        delivery = now + travel.leg(start, inputs.door, vehicle, hour).seconds
        delivery += rules.dropoff_service_s
    else:
        # When the food is ready.
        if inputs.ready_at is not None:
            ready = inputs.ready_at
        elif inputs.confirmed_at is not None:
            ready = inputs.confirmed_at + inputs.prep_s
        else:
            ready = now + rules.confirm_wait_s + inputs.prep_s
        ready = max(ready, now)
        # When the courier is at the merchant. Dispatch sends couriers to arrive as the food is
        # ready, so an order without one waits for the later of the two.
        if inputs.courier is not None:
            at_shop = now + travel.leg(inputs.courier, inputs.merchant, vehicle, hour).seconds
        else:
            at_shop = now + (0.0 if inputs.assigned else rules.dispatch_wait_s)
        pickup = max(ready, at_shop) + rules.pickup_service_s
        delivery = pickup + travel.leg(inputs.merchant, inputs.door, vehicle, hour).seconds
        delivery += rules.dropoff_service_s
    left = delivery - now
    spread_low = max(-band.low * left, band.floor_s)
    spread_high = max(band.high * left, band.floor_s)
    return Estimate(
        pickup=pickup,
        delivery=delivery,
        low=max(now, delivery - spread_low),
        high=delivery + spread_high,
        computed=now,
    )


def residual(estimated: float, actual: float, made_at: float, floor_s: float = 300.0) -> float:
    """The error of an estimate as a share of the time it had to run (at least ``floor_s``)."""
    return (actual - estimated) / max(estimated - made_at, floor_s)
