"""Plan a courier's multi-stop route: the order of pickups and drop-offs that finishes earliest.

The rules every plan keeps:

* an order's pickup comes before its drop-off; a drop-off whose order has no pickup in the list
  is already on board and may come at any point;
* the courier waits at a stop until its ready time (food not ready: wait at the shop), then
  spends its service time there;
* the objective is the earliest finish (departure from the last stop), ties broken by the total
  distance.

Up to `EXACT_LIMIT` stops the plan is exact: dynamic programming over (visited set, last stop)
that keeps, per state, every (time, distance) label no other label beats on both. This is exact
when a later departure never arrives earlier (travel times that change with the hour only
approximately keep that). Larger lists are seeded by VROOM (pyvroom, given the travel-time matrix
of the start hour and the ready times as time windows), by cheapest insertion and by nearest
neighbour, and each seed is improved by a local search (relocate and swap moves that keep every
pickup before its drop-off) under the true objective. Every plan returned is checked valid.

Legs are asked of the TravelTimes at the hour (UTC) the courier leaves for them.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tracking_svc.domain.travel import Point, TravelTimes, Vehicle

logger = logging.getLogger(__name__)

#: Lists of at most this many stops are planned exactly.
EXACT_LIMIT = 12
#: The local search of a long list stops improving after this long (seconds of wall time).
_SEARCH_BUDGET_S = 0.3
#: Rounds of kick-and-descend after the first local optimum, per seed.
_KICKS = 30


class StopKind(StrEnum):
    """What the courier does at a stop."""

    PICKUP = "pickup"
    DROPOFF = "dropoff"


@dataclass(frozen=True, slots=True)
class Stop:
    """A place the courier must visit."""

    stop_id: str
    order_id: str
    kind: StopKind
    point: Point
    #: Epoch seconds before which the stop cannot be served (the food is not ready), or None.
    ready_time: float | None = None
    #: Seconds spent at the stop once served (handing over, parking).
    service_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class PlannedStop:
    """A stop in visiting order, with when the courier gets there and leaves."""

    stop: Stop
    #: Epoch seconds of arrival.
    arrival_time: float
    #: Epoch seconds of departure: max(arrival, ready time) + service seconds.
    departure_time: float
    #: Meters travelled from the previous stop (or the start).
    meters_from_previous: float
    #: Seconds travelled from the previous stop (or the start).
    seconds_from_previous: float

    @property
    def wait_seconds(self) -> float:
        """Seconds spent waiting for the stop to be ready."""
        return self.departure_time - self.stop.service_seconds - self.arrival_time


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A route from the start through every stop."""

    start: Point
    start_time: float
    stops: tuple[PlannedStop, ...]
    #: Total meters travelled.
    meters: float
    #: Seconds from the start to the departure from the last stop.
    seconds: float
    #: How the order was found: "exact", "vroom", "insertion", "nearest", "hint" or "given".
    method: str

    @property
    def finish_time(self) -> float:
        """Epoch seconds of the departure from the last stop (the start time if none)."""
        return self.start_time + self.seconds

    @property
    def stop_ids(self) -> list[str]:
        return [p.stop.stop_id for p in self.stops]


class _Problem:
    """Stops indexed 1..n (0 is the start), their precedence, and a leg cache per hour."""

    def __init__(
        self,
        start: Point,
        start_time: float,
        vehicle: Vehicle,
        stops: Sequence[Stop],
        travel: TravelTimes,
    ) -> None:
        validate_stops(stops)
        self.start = start
        self.start_time = start_time
        self.vehicle = vehicle
        self.stops = list(stops)
        self.travel = travel
        self.n = len(stops)
        self.points = [start, *(s.point for s in stops)]
        self.ready = [-math.inf]
        self.ready += [-math.inf if s.ready_time is None else s.ready_time for s in stops]
        self.service = [0.0, *(float(s.service_seconds) for s in stops)]
        pickup_of_order = {
            s.order_id: i + 1 for i, s in enumerate(stops) if s.kind == StopKind.PICKUP
        }
        #: For each stop index, the index of the stop that must come before it (0: none).
        self.before = [0] * (self.n + 1)
        for i, s in enumerate(stops, start=1):
            if s.kind == StopKind.DROPOFF:
                self.before[i] = pickup_of_order.get(s.order_id, 0)
        self.index_of = {s.stop_id: i for i, s in enumerate(stops, start=1)}
        self._legs: dict[tuple[int, int, int], tuple[float, float]] = {}

    def leg(self, i: int, j: int, depart: float) -> tuple[float, float]:
        """Seconds and meters from point i to point j leaving at `depart`."""
        hour = int(depart // 3600) % 24
        key = (i, j, hour)
        cached = self._legs.get(key)
        if cached is None:
            leg = self.travel.leg(self.points[i], self.points[j], self.vehicle, hour)
            cached = self._legs[key] = (float(leg.seconds), float(leg.meters))
        return cached

    def cost(self, order: Sequence[int]) -> tuple[float, float]:
        """Finish time and meters of visiting the stops in this order (assumed valid)."""
        t, meters, here = self.start_time, 0.0, 0
        for j in order:
            s, m = self.leg(here, j, t)
            t = max(t + s, self.ready[j]) + self.service[j]
            meters += m
            here = j
        return t, meters

    def valid(self, order: Sequence[int]) -> bool:
        seen: set[int] = set()
        for j in order:
            if self.before[j] and self.before[j] not in seen:
                return False
            seen.add(j)
        return len(order) == self.n and seen == set(range(1, self.n + 1))

    def plan(self, order: Sequence[int], method: str) -> RoutePlan:
        if not self.valid(order):
            raise AssertionError(f"invalid visiting order {order!r}")  # a bug, never an input
        t, meters, here = self.start_time, 0.0, 0
        planned: list[PlannedStop] = []
        for j in order:
            s, m = self.leg(here, j, t)
            arrival = t + s
            t = max(arrival, self.ready[j]) + self.service[j]
            meters += m
            planned.append(PlannedStop(self.stops[j - 1], arrival, t, m, s))
            here = j
        return RoutePlan(
            self.start, self.start_time, tuple(planned), meters, t - self.start_time, method
        )


def validate_stops(stops: Sequence[Stop]) -> None:
    """Raise ValueError if the stops cannot make a route (the RPC layer checks fields first)."""
    ids: set[str] = set()
    pickups: set[str] = set()
    dropoffs: set[str] = set()
    for s in stops:
        if s.stop_id in ids:
            raise ValueError(f"duplicate stop id {s.stop_id!r}")
        ids.add(s.stop_id)
        if s.service_seconds < 0 or not math.isfinite(s.service_seconds):
            raise ValueError(f"stop {s.stop_id!r}: service seconds must be finite and >= 0")
        if s.ready_time is not None and not math.isfinite(s.ready_time):
            raise ValueError(f"stop {s.stop_id!r}: ready time must be finite")
        seen = pickups if s.kind == StopKind.PICKUP else dropoffs
        if s.order_id in seen:
            raise ValueError(f"order {s.order_id!r} has two {s.kind.value} stops")
        seen.add(s.order_id)
    missing = pickups - dropoffs
    if missing:
        raise ValueError(f"pickup without a drop-off for order(s) {sorted(missing)!r}")


def plan_route(
    start: Point,
    start_time: float,
    vehicle: Vehicle,
    stops: Sequence[Stop],
    travel: TravelTimes,
    *,
    first_stop_id: str | None = None,
    hint: Sequence[str] = (),
    exact_limit: int = EXACT_LIMIT,
    use_vroom: bool = True,
) -> RoutePlan:
    """Return the plan that finishes earliest (then travels least) through all the stops.

    `first_stop_id` forces that stop to come first (it must be allowed first). `hint` is a
    previous visiting order (stop ids; unknown ones ignored, missing ones inserted) tried as one
    more seed when the list is too long to plan exactly. Raises ValueError for inconsistent stops.
    """
    problem = _Problem(start, start_time, vehicle, stops, travel)
    first = 0
    if first_stop_id is not None:
        first = problem.index_of.get(first_stop_id, 0)
        if first == 0:
            raise ValueError(f"first stop {first_stop_id!r} is not in the list")
        if problem.before[first]:
            raise ValueError(f"first stop {first_stop_id!r} is a drop-off after a listed pickup")
    if problem.n == 0:
        return problem.plan([], "exact")
    if problem.n <= exact_limit:
        return problem.plan(_exact(problem, first), "exact")
    return _heuristic(problem, first, hint, use_vroom)


def evaluate_route(
    start: Point,
    start_time: float,
    vehicle: Vehicle,
    stops: Sequence[Stop],
    travel: TravelTimes,
) -> RoutePlan:
    """Return the plan that visits the stops in the given order; ValueError if it breaks a rule."""
    problem = _Problem(start, start_time, vehicle, stops, travel)
    order = list(range(1, problem.n + 1))
    if not problem.valid(order):
        raise ValueError("a drop-off comes before its order's pickup")
    return problem.plan(order, "given")


def replan(
    current_plan_stop_ids: Sequence[str],
    start: Point,
    start_time: float,
    vehicle: Vehicle,
    stops: Sequence[Stop],
    travel: TravelTimes,
    *,
    keep_threshold_s: float = 60.0,
    exact_limit: int = EXACT_LIMIT,
    use_vroom: bool = True,
) -> RoutePlan:
    """Re-plan from the courier's live position without turning them around for little gain.

    The first stop of the previous plan is where the courier is heading now. If it is still in
    the list (and may come first), the plan keeps it first unless the best plan without that
    constraint finishes more than `keep_threshold_s` seconds earlier. Stops already done are
    simply absent from `stops`; the previous order seeds the search for long lists.
    """
    current = current_plan_stop_ids[0] if current_plan_stop_ids else None
    free = plan_route(
        start,
        start_time,
        vehicle,
        stops,
        travel,
        hint=current_plan_stop_ids,
        exact_limit=exact_limit,
        use_vroom=use_vroom,
    )
    if current is None or not free.stops or free.stops[0].stop.stop_id == current:
        return free
    ids = {s.stop_id: s for s in stops}
    head = ids.get(current)
    if head is None:
        return free
    if head.kind == StopKind.DROPOFF and any(
        s.kind == StopKind.PICKUP and s.order_id == head.order_id for s in stops
    ):
        return free
    kept = plan_route(
        start,
        start_time,
        vehicle,
        stops,
        travel,
        first_stop_id=current,
        hint=current_plan_stop_ids,
        exact_limit=exact_limit,
        use_vroom=use_vroom,
    )
    if kept.finish_time - free.finish_time > keep_threshold_s:
        return free
    return kept


def _exact(problem: _Problem, first: int) -> list[int]:
    """Dynamic programming over (visited set, last stop) with Pareto (time, meters) labels."""
    n = problem.n
    full = (1 << n) - 1
    ready, service, before, leg = problem.ready, problem.service, problem.before, problem.leg
    need = [0 if before[j] == 0 else 1 << (before[j] - 1) for j in range(n + 1)]
    # labels[mask][last] = [(time, meters, parent label or None, last)]
    Label = tuple[float, float, object, int]
    labels: dict[int, dict[int, list[Label]]] = {}

    def add(mask: int, last: int, t: float, m: float, parent: object) -> None:
        bucket = labels.setdefault(mask, {}).setdefault(last, [])
        for lt, lm, _, _ in bucket:
            if lt <= t and lm <= m:
                return
        bucket[:] = [lab for lab in bucket if not (t <= lab[0] and m <= lab[1])]
        bucket.append((t, m, parent, last))

    starts = [first] if first else [j for j in range(1, n + 1) if not need[j]]
    for j in starts:
        s, m = leg(0, j, problem.start_time)
        add(1 << (j - 1), j, max(problem.start_time + s, ready[j]) + service[j], m, None)
    for mask in range(1, full + 1):
        by_last = labels.get(mask)
        if not by_last or mask == full:
            continue
        for last, bucket in by_last.items():
            for label in bucket:
                t0, m0 = label[0], label[1]
                for j in range(1, n + 1):
                    bit = 1 << (j - 1)
                    if mask & bit or (need[j] and not mask & need[j]):
                        continue
                    s, m = leg(last, j, t0)
                    add(mask | bit, j, max(t0 + s, ready[j]) + service[j], m0 + m, label)
        del labels[mask]  # every successor has a larger mask: this level is done
    finals = [lab for bucket in labels[full].values() for lab in bucket]
    best: object = min(finals, key=lambda lab: (lab[0], lab[1]))
    order: list[int] = []
    while best is not None:
        assert isinstance(best, tuple)
        order.append(best[3])
        best = best[2]
    return order[::-1]


def _heuristic(problem: _Problem, first: int, hint: Sequence[str], use_vroom: bool) -> RoutePlan:
    seeds: list[tuple[str, list[int]]] = []
    if use_vroom:
        try:
            seeds.append(("vroom", _vroom_order(problem, first)))
        except Exception:  # pyvroom absent or failing must never fail a plan
            logger.warning("vroom failed on %d stops; heuristics only", problem.n, exc_info=True)
    seeds.append(("insertion", _insertion(problem, first, [])))
    seeds.append(("nearest", _nearest(problem, first)))
    hinted = [problem.index_of[i] for i in hint if i in problem.index_of]
    if hinted and (not first or hinted[0] == first):
        seeds.append(("hint", _insertion(problem, first, hinted)))
    deadline = time.perf_counter() + _SEARCH_BUDGET_S
    lowest = 1 if first else 0
    best: tuple[tuple[float, float], list[int], str] | None = None
    for method, order in seeds:
        if not problem.valid(order) or (first and order[0] != first):
            logger.warning("%s seed broke a rule; dropped", method)
            continue
        improved = _descend(problem, order, lowest, deadline)
        cost = problem.cost(improved)
        if best is None or cost < best[0]:
            best = (cost, improved, method)
    assert best is not None  # insertion always yields a valid order
    return problem.plan(_kick(problem, best[1], lowest, deadline), best[2])


def _vroom_order(problem: _Problem, first: int) -> list[int]:
    import vroom  # imported here: a heavy module only long lists need

    n = problem.n
    hour = int(problem.start_time // 3600) % 24
    matrix = [
        [0 if i == j else round(problem.leg(i, j, hour * 3600.0)[0]) for j in range(n + 1)]
        for i in range(n + 1)
    ]
    ready = problem.ready
    horizon = 10**8

    def windows(j: int) -> list[vroom.TimeWindow]:
        if not math.isfinite(ready[j]) or ready[j] <= problem.start_time:
            return []
        return [vroom.TimeWindow(math.ceil(ready[j] - problem.start_time), horizon)]

    problem_input = vroom.Input()
    problem_input.set_durations_matrix(profile="car", matrix_input=matrix)
    problem_input.add_vehicle(
        vroom.Vehicle(0, start=0, profile="car", time_window=vroom.TimeWindow(0, horizon))
    )
    dropoff_of = {problem.before[j]: j for j in range(1, n + 1) if problem.before[j]}
    for j in range(1, n + 1):
        service = round(problem.service[j])
        if problem.stops[j - 1].kind == StopKind.PICKUP:
            d = dropoff_of[j]
            problem_input.add_shipment(
                vroom.ShipmentStep(j, j, default_service=service, time_windows=windows(j)),
                vroom.ShipmentStep(
                    d, d, default_service=round(problem.service[d]), time_windows=windows(d)
                ),
            )
        elif not problem.before[j]:
            problem_input.add_job(vroom.Job(j, j, default_service=service, time_windows=windows(j)))
    solution = problem_input.solve(exploration_level=5, nb_threads=1)
    routes = solution.routes
    order = [
        int(i)
        for i, kind in zip(routes["id"], routes["type"], strict=True)
        if kind in ("job", "pickup", "delivery")
    ]
    if first:
        # VROOM has no "this task first" outside its check mode: put the current leg in front.
        order = [first, *(j for j in order if j != first)]
    return order


def _insertion(problem: _Problem, first: int, seed: list[int]) -> list[int]:
    """Insert the missing stops (an order's pickup and drop-off together) where they cost least."""
    order = [j for j in seed if not problem.before[j] or problem.before[j] in seed]
    placed = set(order)
    units: list[tuple[int, ...]] = []
    for j in range(1, problem.n + 1):
        if j in placed or problem.before[j]:
            continue
        dropoff = next((d for d in range(1, problem.n + 1) if problem.before[d] == j), 0)
        units.append((j, dropoff) if dropoff else (j,))
    for j in range(1, problem.n + 1):
        if problem.before[j] and j not in placed and problem.before[j] in placed:
            units.append((j,))
    if first and first not in placed:
        unit = next(u for u in units if u[0] == first)
        units.remove(unit)
        order = [first, *order]
        if len(unit) == 2:
            order = _insert_best(problem, order, (unit[1],), low=1)
    lowest = 1 if first else 0
    # Stops that wait for readiness go last among equals: insert the earliest-ready first.
    units.sort(key=lambda u: problem.ready[u[0]])
    for unit in units:
        order = _insert_best(problem, order, unit, low=lowest)
    return order


def _insert_best(problem: _Problem, order: list[int], unit: tuple[int, ...], low: int) -> list[int]:
    best: tuple[tuple[float, float], list[int]] | None = None
    if len(unit) == 1:
        j = unit[0]
        after = order.index(problem.before[j]) + 1 if problem.before[j] in order else 0
        for pos in range(max(low, after), len(order) + 1):
            candidate = [*order[:pos], j, *order[pos:]]
            cost = problem.cost(candidate)
            if best is None or cost < best[0]:
                best = (cost, candidate)
    else:
        p, d = unit
        for pos in range(low, len(order) + 1):
            with_p = [*order[:pos], p, *order[pos:]]
            for dpos in range(pos + 1, len(with_p) + 1):
                candidate = [*with_p[:dpos], d, *with_p[dpos:]]
                cost = problem.cost(candidate)
                if best is None or cost < best[0]:
                    best = (cost, candidate)
    assert best is not None
    return best[1]


def _nearest(problem: _Problem, first: int) -> list[int]:
    """Go next to the allowed stop that can be served soonest (arrival or ready time)."""
    order: list[int] = []
    done: set[int] = set()
    t, here = problem.start_time, 0
    while len(order) < problem.n:
        allowed = [
            j
            for j in range(1, problem.n + 1)
            if j not in done and (not problem.before[j] or problem.before[j] in done)
        ]
        if first and not order:
            allowed = [first]
        j = min(allowed, key=lambda k: (max(t + problem.leg(here, k, t)[0], problem.ready[k]), k))
        t = max(t + problem.leg(here, j, t)[0], problem.ready[j]) + problem.service[j]
        order.append(j)
        done.add(j)
        here = j
    return order


def _kick(problem: _Problem, order: list[int], lowest: int, deadline: float) -> list[int]:
    """Rounds of a random kick (two stops moved) and descent, keeping the best, until the deadline.

    The kicks use a fixed seed so that a plan changes between identical calls only if the
    deadline cuts the rounds short.
    """
    best, best_cost = order, problem.cost(order)
    rng = random.Random(problem.n)
    for _ in range(_KICKS):
        if time.perf_counter() >= deadline or len(best) - lowest < 3:
            break
        kicked = list(best)
        for _ in range(2):
            i = rng.randrange(lowest, len(kicked))
            j = kicked.pop(i)
            kicked.insert(rng.randrange(lowest, len(kicked) + 1), j)
        if not _precedence_ok(problem, kicked):
            continue
        candidate = _descend(problem, kicked, lowest, deadline)
        cost = problem.cost(candidate)
        if cost < best_cost:
            best, best_cost = candidate, cost
    return best


def _descend(problem: _Problem, order: list[int], lowest: int, deadline: float) -> list[int]:
    """First-improvement descent: relocate one stop or a run of two or three, swap, reverse."""
    best, best_cost = order, problem.cost(order)
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for candidate in _neighbours(best, lowest):
            if not _precedence_ok(problem, candidate):
                continue
            cost = problem.cost(candidate)
            if cost < best_cost:
                best, best_cost, improved = candidate, cost, True
                break
    return best


def _neighbours(order: list[int], lowest: int) -> Iterator[list[int]]:
    n = len(order)
    for length in (1, 2, 3):
        for i in range(lowest, n - length + 1):
            run = order[i : i + length]
            rest = order[:i] + order[i + length :]
            for pos in range(lowest, len(rest) + 1):
                if pos != i:
                    yield [*rest[:pos], *run, *rest[pos:]]
    for i in range(lowest, n):
        for k in range(i + 1, n):
            swapped = list(order)
            swapped[i], swapped[k] = swapped[k], swapped[i]
            yield swapped
            if k > i + 1:
                yield [*order[:i], *order[i : k + 1][::-1], *order[k + 1 :]]


def _precedence_ok(problem: _Problem, order: Sequence[int]) -> bool:
    seen: set[int] = set()
    for j in order:
        if problem.before[j] and problem.before[j] not in seen:
            return False
        seen.add(j)
    return True
