"""The route planner: exact against brute force, always valid, ready times, and re-planning."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.geo import EARTH_RADIUS_M, haversine_m
from tracking_svc.domain.routing import (
    PlannedStop,
    RoutePlan,
    Stop,
    StopKind,
    evaluate_route,
    plan_route,
    replan,
)
from tracking_svc.domain.travel import Leg, Point, Vehicle

HELSINKI = (60.1699, 24.9384)
T0 = 1_700_000_000.0
PICKUP, DROPOFF = StopKind.PICKUP, StopKind.DROPOFF


class StraightLine:
    """Travel at a fixed speed along the great circle times a circuity factor (a test double)."""

    def __init__(self, speed_mps: float = 8.0, circuity: float = 1.3) -> None:
        self.speed_mps = speed_mps
        self.circuity = circuity

    def leg(self, origin: Point, destination: Point, vehicle: Vehicle, hour: int) -> Leg:
        meters = haversine_m(origin.lat, origin.lng, destination.lat, destination.lng)
        meters *= self.circuity
        return Leg(seconds=meters / self.speed_mps, meters=meters)


TRAVEL = StraightLine()


def at(east_m: float, north_m: float) -> Point:
    """A point this many metres east and north of central Helsinki."""
    lat = HELSINKI[0] + math.degrees(north_m / EARTH_RADIUS_M)
    lng = HELSINKI[1] + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return Point(lat, lng)


def brute_force_finish(start: Point, stops: Sequence[Stop]) -> float:
    """The earliest finish over every visiting order that keeps pickups before drop-offs."""
    best = math.inf
    for order in itertools.permutations(stops):
        if not precedence_ok(order):
            continue
        best = min(best, evaluate_route(start, T0, Vehicle.CAR, order, TRAVEL).finish_time)
    return best


def precedence_ok(order: Sequence[Stop] | Sequence[PlannedStop]) -> bool:
    stops = [s.stop if isinstance(s, PlannedStop) else s for s in order]
    picked: set[str] = set()
    listed_pickups = {s.order_id for s in stops if s.kind == PICKUP}
    for s in stops:
        if s.kind == PICKUP:
            picked.add(s.order_id)
        elif s.order_id in listed_pickups and s.order_id not in picked:
            return False
    return True


def assert_valid(plan: RoutePlan, stops: Sequence[Stop]) -> None:
    assert sorted(plan.stop_ids) == sorted(s.stop_id for s in stops)
    assert precedence_ok(plan.stops)
    t = plan.start_time
    for p in plan.stops:
        assert p.arrival_time >= t - 1e-6
        ready = p.stop.ready_time if p.stop.ready_time is not None else -math.inf
        assert p.departure_time == pytest.approx(
            max(p.arrival_time, ready) + p.stop.service_seconds
        )
        t = p.departure_time
    assert plan.finish_time == pytest.approx(t)
    assert plan.meters == pytest.approx(sum(p.meters_from_previous for p in plan.stops))


def random_instance(rng: random.Random, orders: int, on_board: int) -> list[Stop]:
    def spot() -> Point:
        return at(rng.uniform(-2500, 2500), rng.uniform(-2500, 2500))

    stops: list[Stop] = []
    for k in range(orders):
        ready = T0 + rng.uniform(0, 1200) if rng.random() < 0.5 else None
        stops.append(Stop(f"p{k}", f"o{k}", PICKUP, spot(), ready, rng.choice([0.0, 60.0])))
        stops.append(Stop(f"d{k}", f"o{k}", DROPOFF, spot(), None, rng.choice([0.0, 90.0])))
    for k in range(on_board):
        stops.append(Stop(f"b{k}", f"carried{k}", DROPOFF, spot(), None, 60.0))
    rng.shuffle(stops)
    return stops


def nearest_neighbour_finish(start: Point, stops: Sequence[Stop]) -> float:
    """A simple feasible plan: always drive to the nearest stop allowed next."""
    left = list(stops)
    order: list[Stop] = []
    here = start
    listed = {s.order_id for s in stops if s.kind == PICKUP}
    while left:
        picked = {s.order_id for s in order if s.kind == PICKUP}
        allowed = [
            s for s in left if s.kind == PICKUP or s.order_id not in listed or s.order_id in picked
        ]
        nxt = min(allowed, key=lambda s: TRAVEL.leg(here, s.point, Vehicle.CAR, 0).seconds)
        order.append(nxt)
        left.remove(nxt)
        here = nxt.point
    return evaluate_route(start, T0, Vehicle.CAR, order, TRAVEL).finish_time


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    orders=st.integers(0, 3),
    on_board=st.integers(0, 3),
)
def test_the_plan_finishes_as_early_as_brute_force(seed: int, orders: int, on_board: int) -> None:
    rng = random.Random(seed)
    stops = random_instance(rng, orders, on_board)[:7]
    dropped = {s.order_id for s in stops if s.kind == DROPOFF}
    stops = [s for s in stops if s.kind == DROPOFF or s.order_id in dropped]
    start = at(rng.uniform(-2500, 2500), rng.uniform(-2500, 2500))
    plan = plan_route(start, T0, Vehicle.CAR, stops, TRAVEL)
    assert_valid(plan, stops)
    assert plan.finish_time == pytest.approx(brute_force_finish(start, stops), abs=1e-6)


def test_a_dropoff_never_comes_before_its_pickup_even_when_it_is_closer() -> None:
    stops = [
        Stop("drop", "o1", DROPOFF, at(100, 0)),
        Stop("pick", "o1", PICKUP, at(2000, 0)),
    ]
    plan = plan_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    assert plan.stop_ids == ["pick", "drop"]


def test_an_on_board_dropoff_may_come_first() -> None:
    stops = [
        Stop("pick", "new", PICKUP, at(2000, 0)),
        Stop("drop-new", "new", DROPOFF, at(3000, 0)),
        Stop("drop-carried", "carried", DROPOFF, at(200, 0)),
    ]
    plan = plan_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    assert plan.stop_ids == ["drop-carried", "pick", "drop-new"]


def test_the_courier_waits_at_a_shop_that_is_not_ready() -> None:
    ready = T0 + 900
    stops = [
        Stop("pick", "o1", PICKUP, at(800, 0), ready_time=ready, service_seconds=60),
        Stop("drop", "o1", DROPOFF, at(1600, 0), service_seconds=30),
    ]
    plan = plan_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    pick, drop = plan.stops
    assert pick.arrival_time < ready
    assert pick.wait_seconds == pytest.approx(ready - pick.arrival_time)
    assert pick.departure_time == pytest.approx(ready + 60)
    assert drop.arrival_time == pytest.approx(pick.departure_time + pick.seconds_from_previous)
    assert plan.seconds == pytest.approx(drop.departure_time - T0)


def test_a_late_shop_is_served_after_a_ready_one_on_the_way() -> None:
    # The near shop's food is 20 minutes out; the far one is ready: fetch that first.
    stops = [
        Stop("near", "a", PICKUP, at(300, 0), ready_time=T0 + 1200),
        Stop("near-drop", "a", DROPOFF, at(600, 0)),
        Stop("far", "b", PICKUP, at(1500, 0)),
        Stop("far-drop", "b", DROPOFF, at(1800, 0)),
    ]
    plan = plan_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    assert_valid(plan, stops)
    assert plan.stop_ids.index("far") < plan.stop_ids.index("near")


def test_ties_in_finish_are_broken_by_distance() -> None:
    # Everything waits for one shop ready far in the future; the order of the two on-board
    # drop-offs beforehand does not change the finish, only the distance.
    stops = [
        Stop("shop", "o", PICKUP, at(0, 1000), ready_time=T0 + 7200),
        Stop("door", "o", DROPOFF, at(0, 1200)),
        Stop("x", "c1", DROPOFF, at(500, 0)),
        Stop("y", "c2", DROPOFF, at(1000, 0)),
    ]
    plan = plan_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    others = [
        evaluate_route(at(0, 0), T0, Vehicle.CAR, [stops[i] for i in order], TRAVEL)
        for order in ([3, 2, 0, 1], [2, 3, 0, 1])
    ]
    assert all(o.finish_time == pytest.approx(plan.finish_time) for o in others)
    assert plan.meters == pytest.approx(min(o.meters for o in others))
    assert plan.stop_ids[:2] == ["x", "y"]


def test_no_stops_is_an_empty_plan() -> None:
    plan = plan_route(at(0, 0), T0, Vehicle.BICYCLE, [], TRAVEL)
    assert plan.stops == () and plan.seconds == 0 and plan.finish_time == T0


@pytest.mark.parametrize(
    ("stops", "message"),
    [
        ([Stop("a", "o", DROPOFF, at(0, 0)), Stop("a", "p", DROPOFF, at(1, 0))], "duplicate"),
        (
            [
                Stop("a", "o", PICKUP, at(0, 0)),
                Stop("b", "o", PICKUP, at(1, 0)),
                Stop("c", "o", DROPOFF, at(2, 0)),
            ],
            "two pickup",
        ),
        ([Stop("a", "o", PICKUP, at(0, 0))], "without a drop-off"),
        ([Stop("a", "o", DROPOFF, at(0, 0), service_seconds=-1)], "service"),
    ],
)
def test_inconsistent_stops_are_refused(stops: list[Stop], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)


def test_evaluate_route_refuses_a_dropoff_before_its_pickup() -> None:
    stops = [Stop("d", "o", DROPOFF, at(0, 0)), Stop("p", "o", PICKUP, at(1, 0))]
    with pytest.raises(ValueError, match="before"):
        evaluate_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)


@pytest.mark.parametrize("use_vroom", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_twenty_stops_give_a_valid_plan_no_worse_than_nearest_neighbour(
    seed: int, use_vroom: bool
) -> None:
    rng = random.Random(seed)
    stops = random_instance(rng, 8, 4)
    start = at(0, 0)
    plan = plan_route(start, T0, Vehicle.CAR, stops, TRAVEL, use_vroom=use_vroom)
    assert len(plan.stops) == 20
    assert plan.method != "exact"
    assert_valid(plan, stops)
    assert plan.finish_time <= nearest_neighbour_finish(start, stops) + 1e-6


@pytest.mark.parametrize("first", [False, True])
def test_vroom_orders_twenty_stops_validly(first: bool) -> None:
    pytest.importorskip("vroom")
    from tracking_svc.domain.routing import _Problem, _vroom_order

    stops = random_instance(random.Random(11), 9, 2)
    problem = _Problem(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    head = next(i for i, s in enumerate(stops, start=1) if s.kind == PICKUP) if first else 0
    order = _vroom_order(problem, head)
    assert problem.valid(order)
    assert not head or order[0] == head


def test_a_failing_vroom_falls_back_to_heuristics(monkeypatch: pytest.MonkeyPatch) -> None:
    import tracking_svc.domain.routing as routing

    def broken(*_: object) -> list[int]:
        raise RuntimeError("no solver")

    monkeypatch.setattr(routing, "_vroom_order", broken)
    stops = random_instance(random.Random(7), 7, 2)
    plan = plan_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    assert plan.method in {"insertion", "nearest"}
    assert_valid(plan, stops)


def test_a_forced_first_stop_comes_first() -> None:
    stops = random_instance(random.Random(3), 3, 1)
    first = next(s for s in stops if s.kind == PICKUP)
    plan = plan_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL, first_stop_id=first.stop_id)
    assert plan.stop_ids[0] == first.stop_id
    assert_valid(plan, stops)
    long_stops = random_instance(random.Random(3), 7, 2)
    first = next(s for s in long_stops if s.kind == PICKUP)
    plan = plan_route(at(0, 0), T0, Vehicle.CAR, long_stops, TRAVEL, first_stop_id=first.stop_id)
    assert plan.stop_ids[0] == first.stop_id
    assert_valid(plan, long_stops)


def test_replan_keeps_the_current_leg_for_a_small_gain() -> None:
    # Heading east to A (1 km); B sits 800 m west. Going to B first and then A would save a
    # little (200 m of driving), but not a minute: keep heading to A.
    stops = [Stop("A", "a", DROPOFF, at(1000, 0)), Stop("B", "b", DROPOFF, at(-800, 0))]
    free = plan_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    assert free.stop_ids == ["B", "A"]
    kept = evaluate_route(at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    assert 0 < kept.finish_time - free.finish_time <= 60
    plan = replan(["A", "B"], at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    assert plan.stop_ids == ["A", "B"]


def test_replan_turns_around_when_the_gain_exceeds_the_threshold() -> None:
    stops = [Stop("A", "a", DROPOFF, at(1000, 0)), Stop("B", "b", DROPOFF, at(-100, 0))]
    plan = replan(["A", "B"], at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    assert plan.stop_ids == ["B", "A"]
    # With a threshold above the gain the courier carries on to A.
    kept = replan(["A", "B"], at(0, 0), T0, Vehicle.CAR, stops, TRAVEL, keep_threshold_s=10_000)
    assert kept.stop_ids == ["A", "B"]


def test_replan_forgets_a_current_leg_that_is_done() -> None:
    stops = [Stop("A", "a", DROPOFF, at(1000, 0)), Stop("B", "b", DROPOFF, at(-100, 0))]
    plan = replan(["gone", "A", "B"], at(0, 0), T0, Vehicle.CAR, stops, TRAVEL)
    assert plan.stop_ids == ["B", "A"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), threshold=st.sampled_from([0.0, 60.0, 300.0]))
def test_replan_is_the_kept_plan_unless_the_free_one_gains_more_than_the_threshold(
    seed: int, threshold: float
) -> None:
    rng = random.Random(seed)
    stops = random_instance(rng, 2, 2)
    previous = [s.stop_id for s in stops]
    rng.shuffle(previous)
    start = at(rng.uniform(-2000, 2000), rng.uniform(-2000, 2000))
    plan = replan(previous, start, T0, Vehicle.CAR, stops, TRAVEL, keep_threshold_s=threshold)
    assert_valid(plan, stops)
    free = plan_route(start, T0, Vehicle.CAR, stops, TRAVEL)
    head = next(s for s in stops if s.stop_id == previous[0])
    if head.kind == DROPOFF and any(s.order_id == head.order_id for s in stops if s is not head):
        assert plan.finish_time == pytest.approx(free.finish_time)
        return
    kept = plan_route(start, T0, Vehicle.CAR, stops, TRAVEL, first_stop_id=previous[0])
    if kept.finish_time - free.finish_time > threshold:
        assert plan.finish_time == pytest.approx(free.finish_time)
    else:
        assert plan.stop_ids[0] == previous[0]
        assert plan.finish_time == pytest.approx(kept.finish_time)
