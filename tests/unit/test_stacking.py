"""Stacking a second order onto a courier: where it goes in the route, and when it may not."""

from __future__ import annotations

import math
import random

import pytest

from matching_svc.domain.stacking import Carried, StackingRules, plan_stack, route_of
from mesh.geo import EARTH_RADIUS_M

BERLIN = (52.52, 13.40)
RULES = StackingRules()


def at(east_m: float, north_m: float) -> tuple[float, float]:
    """A point this many metres east and north of the centre of Berlin."""
    lat = BERLIN[0] + math.degrees(north_m / EARTH_RADIUS_M)
    lng = BERLIN[1] + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return lat, lng


def test_an_idle_courier_just_drives_the_trip() -> None:
    plan = plan_stack(at(0, 0), [], "new", at(1000, 0), at(3000, 0), RULES)
    assert plan is not None
    assert [(s.order_id, s.kind) for s in plan.route] == [("new", "pickup"), ("new", "dropoff")]
    assert plan.detour_s == pytest.approx(RULES.travel_s(at(0, 0), at(1000, 0)), rel=1e-9)
    assert plan.delays_s == {}
    assert plan.eta_s == pytest.approx(3000 * RULES.road_factor / RULES.speed_mps, rel=1e-3)


def test_a_second_order_on_the_way_is_stacked_before_the_first_drop() -> None:
    # The courier has the first order in the bag, heading 3 km east; a shop 300 m further
    # along takes an order for a door 200 m past the first customer.
    first = Carried("first", None, at(3000, 0))
    plan = plan_stack(at(0, 0), [first], "new", at(300, 0), at(3200, 0), RULES)
    assert plan is not None
    assert [(s.order_id, s.kind) for s in plan.route] == [
        ("new", "pickup"),
        ("first", "dropoff"),
        ("new", "dropoff"),
    ]
    # On the way: the first customer waits no longer, and the route grows by almost nothing
    # beyond the new order's own trip.
    assert plan.delays_s["first"] == pytest.approx(0.0, abs=1e-3)
    assert plan.detour_s < 1.0


def test_a_far_pickup_is_not_stacked() -> None:
    first = Carried("first", None, at(3000, 0))
    assert plan_stack(at(0, 0), [first], "new", at(0, -2500), at(3000, 100), RULES) is None


def test_a_drop_the_other_way_costs_too_much_detour() -> None:
    first = Carried("first", None, at(3000, 0))
    # The pickup is close, but the door is 4 km the other way.
    assert plan_stack(at(0, 0), [first], "new", at(200, 0), at(-4000, 0), RULES) is None
    generous = StackingRules(max_detour_s=3600, max_delay_s=3600)
    assert plan_stack(at(0, 0), [first], "new", at(200, 0), at(-4000, 0), generous) is not None


def test_the_first_customers_delay_bounds_where_the_new_order_goes() -> None:
    first = Carried("first", None, at(3000, 0))
    # Dropping the new order first (1.5 km north) would make the first customer wait about
    # 13 min more; with a 5-minute bound it must go after the first drop, if at all.
    pickup, door = at(100, 0), at(100, 1500)
    loose = StackingRules(max_detour_s=3600, max_delay_s=3600)
    tight = StackingRules(max_detour_s=3600, max_delay_s=300)
    free = plan_stack(at(0, 0), [first], "new", pickup, door, loose)
    bound = plan_stack(at(0, 0), [first], "new", pickup, door, tight)
    assert free is not None and bound is not None
    assert [s.kind for s in bound.route][-1] == "dropoff" and bound.route[-1].order_id == "new"
    assert bound.delays_s["first"] <= 300
    assert free.delays_s["first"] > 300


def test_a_courier_still_on_the_way_to_the_first_shop_keeps_pickup_before_drop() -> None:
    first = Carried("first", at(500, 0), at(2500, 0))
    plan = plan_stack(at(0, 0), [first], "new", at(600, 0), at(2600, 0), RULES)
    assert plan is not None
    order = [(s.order_id, s.kind) for s in plan.route]
    assert order.index(("first", "pickup")) < order.index(("first", "dropoff"))
    assert order.index(("new", "pickup")) < order.index(("new", "dropoff"))


def test_plans_always_keep_within_the_rules() -> None:
    rnd = random.Random(7)
    made = 0
    for _ in range(400):

        def spot() -> tuple[float, float]:
            return at(rnd.uniform(-4000, 4000), rnd.uniform(-4000, 4000))

        carried = [
            Carried(f"c{k}", spot() if rnd.random() < 0.4 else None, spot())
            for k in range(rnd.randint(1, 3))
        ]
        courier, pickup, door = spot(), spot(), spot()
        plan = plan_stack(courier, carried, "new", pickup, door, RULES)
        if plan is None:
            continue
        made += 1
        assert plan.detour_s <= RULES.max_detour_s + 1e-6
        assert all(d <= RULES.max_delay_s + 1e-6 for d in plan.delays_s.values())
        order = [(s.order_id, s.kind) for s in plan.route]
        for c in [*carried, Carried("new", pickup, door)]:
            if c.pickup is not None:
                assert order.index((c.order_id, "pickup")) < order.index((c.order_id, "dropoff"))
        # The carried stops keep the order the courier was driving them in.
        kept = [s for s in plan.route if s.order_id != "new"]
        assert kept == route_of(carried, courier, RULES)
    assert made > 10


def test_rules_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        StackingRules(speed_mps=0)
    with pytest.raises(ValueError):
        StackingRules(max_detour_s=float("nan"))
    with pytest.raises(ValueError):
        StackingRules(road_factor=0.5)


def test_a_courier_early_at_the_shop_waits_and_the_bag_waits_with_them() -> None:
    first = Carried("first", None, at(3000, 0))
    # On the way, and ready now: stacked before the first drop.
    ready = plan_stack(at(0, 0), [first], "new", at(300, 0), at(3200, 0), RULES)
    assert ready is not None and ready.route[0].order_id == "new"
    # The same order, its food ready in 15 minutes: picking it up on the way would keep the
    # first customer waiting about that long (over the 7-minute bound), and going back for it
    # after the first drop is a 12-minute detour (over 10): not stacked.
    assert (
        plan_stack(at(0, 0), [first], "new", at(300, 0), at(3200, 0), RULES, ready_s=15 * 60)
        is None
    )
    # Allow the detour, and it goes after the first drop, which then comes no later.
    roomy = StackingRules(max_detour_s=900)
    later = plan_stack(at(0, 0), [first], "new", at(300, 0), at(3200, 0), roomy, ready_s=15 * 60)
    assert later is not None
    order = [(s.order_id, s.kind) for s in later.route]
    assert order == [("first", "dropoff"), ("new", "pickup"), ("new", "dropoff")]
    assert later.delays_s["first"] == pytest.approx(0.0, abs=1e-6)
    # With bounds loose enough to allow it, the wait shows in the first customer's delay.
    loose = StackingRules(max_detour_s=7200, max_delay_s=7200)
    waited = plan_stack(at(0, 0), [], "new", at(300, 0), at(3200, 0), loose, ready_s=600)
    assert waited is not None and waited.eta_s >= 600


def test_a_carried_order_still_cooking_holds_the_route_back() -> None:
    cooking = Carried("first", at(200, 0), at(2500, 0), ready_s=900)
    done = Carried("first", at(200, 0), at(2500, 0))
    slow = route_of([cooking], at(0, 0), RULES)
    assert slow[0].ready_s == 900
    plan_cooking = plan_stack(at(0, 0), [cooking], "new", at(250, 0), at(2600, 0), RULES)
    plan_done = plan_stack(at(0, 0), [done], "new", at(250, 0), at(2600, 0), RULES)
    assert plan_cooking is not None and plan_done is not None
    assert plan_cooking.eta_s >= 900 > plan_done.eta_s
