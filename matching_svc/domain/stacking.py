"""Stacking: whether a courier already carrying orders may take one more, and at what cost.

A courier's remaining route is their carried orders' stops (a pickup not yet made, then the
drop-off). A new order fits when its pickup is close to that route, and some place in the route
for its pickup and, later, its drop-off keeps two costs within bounds:

- the detour: how much longer the courier's route gets, beyond the new order's own trip from
  shop to door (a courier taking it on its own would drive that much anyway);
- the delay of every customer already waiting: how much later their drop-off comes.

Of the places that fit, the one with the shortest route wins (cheapest insertion, the usual
first step of dial-a-ride heuristics; the courier's current order of stops is kept). A courier
who reaches a shop before its food is ready waits there, with the orders in the bag: a stack
whose food is far from ready costs its waiting customers that wait. Travel times are
straight-line estimates (haversine times a road factor, at a courier's typical speed) until
the route planner of the tracking service exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mesh.geo import haversine_m

Point = tuple[float, float]


@dataclass(frozen=True)
class StackingRules:
    #: Whether couriers carrying orders are offered more at all.
    enabled: bool = True
    #: The new pickup must lie within this straight-line distance of the courier or of a stop
    #: on their route, in metres.
    max_pickup_m: float = 1_500.0
    #: The most the courier's route may grow beyond the new order's own trip, in seconds.
    max_detour_s: float = 600.0
    #: The most any customer already waiting may get their order later, in seconds.
    max_delay_s: float = 420.0
    #: A courier's typical speed in town, in metres per second (18 km/h).
    speed_mps: float = 5.0
    #: Road distance over straight-line distance, on average.
    road_factor: float = 1.3

    def __post_init__(self) -> None:
        for name in ("max_pickup_m", "max_detour_s", "max_delay_s", "speed_mps", "road_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and not negative")
        if self.speed_mps <= 0 or self.road_factor < 1:
            raise ValueError("speed_mps must be positive and road_factor at least 1")

    def travel_s(self, a: Point, b: Point) -> float:
        """The estimated time from ``a`` to ``b``, in seconds."""
        return haversine_m(a[0], a[1], b[0], b[1]) * self.road_factor / self.speed_mps


@dataclass(frozen=True, slots=True)
class Carried:
    """An order the courier carries: its pickup (None once picked up) and its drop-off."""

    order_id: str
    pickup: Point | None
    dropoff: Point
    #: When the food is expected ready, in seconds from now (0: ready, or picked up).
    ready_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Stop:
    order_id: str
    #: "pickup" or "dropoff".
    kind: str
    at: Point
    #: A pickup is left no earlier than this, in seconds from now (the food is not ready
    #: before): a courier early at the shop waits there.
    ready_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StackPlan:
    """Where the new order goes in the courier's route, and what it costs."""

    route: tuple[Stop, ...]
    #: How much the route grew beyond the new order's own shop-to-door trip, in seconds.
    detour_s: float
    #: How much later each carried order's drop-off comes, in seconds, by order id.
    delays_s: dict[str, float]
    #: When the new order would reach its customer, in seconds from now.
    eta_s: float


def route_of(carried: list[Carried], start: Point, rules: StackingRules) -> list[Stop]:
    """The courier's remaining stops, as a courier would drive them: the pickups still to make,
    nearest first, then the drop-offs, nearest first (each from the stop before)."""
    pickups = [
        Stop(c.order_id, "pickup", c.pickup, c.ready_s) for c in carried if c.pickup is not None
    ]
    dropoffs = [Stop(c.order_id, "dropoff", c.dropoff) for c in carried]
    route: list[Stop] = []
    here = start
    for group in (pickups, dropoffs):
        left = list(group)
        while left:
            nearest = min(left, key=lambda s: (rules.travel_s(here, s.at), s.order_id))
            left.remove(nearest)
            route.append(nearest)
            here = nearest.at
    return route


def _arrivals(start: Point, route: list[Stop], rules: StackingRules) -> list[float]:
    """Seconds from now at which each stop of ``route`` is left (a pickup no earlier than its
    food is ready)."""
    times, here, elapsed = [], start, 0.0
    for stop in route:
        elapsed = max(elapsed + rules.travel_s(here, stop.at), stop.ready_s)
        times.append(elapsed)
        here = stop.at
    return times


def plan_stack(
    courier: Point,
    carried: list[Carried],
    order_id: str,
    pickup: Point,
    dropoff: Point,
    rules: StackingRules,
    *,
    ready_s: float = 0.0,
) -> StackPlan | None:
    """The cheapest place for the new order in the courier's route within the rules, or None.

    ``ready_s``: when the new order's food is expected ready, in seconds from now; a courier
    who would reach the shop earlier waits there, and the customers in the bag wait with them.
    With nothing carried it is the plain trip (courier to shop to door): its detour is the way
    to the shop, and no bound applies.
    """
    route = route_of(carried, courier, rules)
    if route:
        near = min(
            haversine_m(pickup[0], pickup[1], p[0], p[1]) for p in (courier, *(s.at for s in route))
        )
        if near > rules.max_pickup_m:
            return None
    before = _arrivals(courier, route, rules)
    total_before = before[-1] if before else 0.0
    dropped_at = {s.order_id: t for s, t in zip(route, before, strict=True) if s.kind == "dropoff"}
    own_trip = rules.travel_s(pickup, dropoff)
    new_pickup = Stop(order_id, "pickup", pickup, ready_s)
    new_dropoff = Stop(order_id, "dropoff", dropoff)
    best: StackPlan | None = None
    best_total = math.inf
    for i in range(len(route) + 1):
        for j in range(i, len(route) + 1):
            candidate = [*route[:i], new_pickup, *route[i:j], new_dropoff, *route[j:]]
            times = _arrivals(courier, candidate, rules)
            detour = times[-1] - total_before - own_trip
            if route and detour > rules.max_detour_s + 1e-9:
                continue
            delays = {
                s.order_id: max(0.0, t - dropped_at[s.order_id])
                for s, t in zip(candidate, times, strict=True)
                if s.kind == "dropoff" and s.order_id != order_id
            }
            if any(d > rules.max_delay_s + 1e-9 for d in delays.values()):
                continue
            eta = times[candidate.index(new_dropoff)]
            if times[-1] < best_total:
                best = StackPlan(tuple(candidate), max(0.0, detour), delays, eta)
                best_total = times[-1]
    return best
