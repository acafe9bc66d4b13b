"""The geofence state machine: dwell, drive-bys, jitter, sparse fixes, and properties over paths."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from location_svc.domain.fixes import Fix
from location_svc.domain.geofence import (
    Arrival,
    ArrivalKind,
    GeofenceRules,
    GeofenceTracker,
    Leg,
    OrderFence,
    _local_xy,
)
from mesh.geo import EARTH_RADIUS_M, haversine_m

MERCHANT = (52.5200, 13.4050)
CUSTOMER = (52.5290, 13.4050)  # about 1 km north of the merchant
T0 = 1_700_000_000_000
RULES = GeofenceRules(
    merchant_radius_m=75,
    customer_radius_m=75,
    exit_margin_m=25,
    dwell_s=20,
    approach_m=500,
    approach_s=0,
)
A = ArrivalKind


def offset(point: tuple[float, float], north_m: float, east_m: float = 0.0) -> tuple[float, float]:
    """The point ``north_m`` north and ``east_m`` east of ``point``."""
    lat, lng = point
    return (
        lat + math.degrees(north_m / EARTH_RADIUS_M),
        lng + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat)))),
    )


def fix(point: tuple[float, float], t_s: float, speed: float = 0.0) -> Fix:
    """A fix at ``point``, ``t_s`` seconds after T0."""
    return Fix(point[0], point[1], 5.0, 0.0, speed, T0 + round(t_s * 1000))


def tracker(leg: Leg = Leg.TO_MERCHANT, rules: GeofenceRules = RULES) -> GeofenceTracker:
    fence = OrderFence("o1", *MERCHANT, *CUSTOMER, leg=leg, version=1)
    return GeofenceTracker(fence, rules)


def feed(t: GeofenceTracker, fixes: list[Fix]) -> list[Arrival]:
    return [a for f in fixes for a in t.observe(f)]


def picked_up(t: GeofenceTracker) -> None:
    old = t.fence
    t.update(
        OrderFence(
            old.order_id,
            old.merchant_lat,
            old.merchant_lng,
            old.customer_lat,
            old.customer_lng,
            Leg.TO_CUSTOMER,
            old.version + 1,
        )
    )


def test_arrival_fires_once_after_the_dwell() -> None:
    t = tracker()
    fixes = [fix(offset(MERCHANT, 10), s) for s in range(0, 60, 5)]
    events = [(f.device_time_ms, a) for f in fixes for a in t.observe(f)]
    assert [(ms - T0, a.kind) for ms, a in events] == [(20_000, A.ARRIVED_AT_MERCHANT)]
    assert events[0][1].since_ms == T0


def test_a_drive_by_does_not_count() -> None:
    # 12 m/s straight through the merchant's fence, a fix every 5 s: inside for about 17 s.
    t = tracker()
    fixes = [fix(offset(MERCHANT, -300 + 60 * i), 5 * i, speed=12) for i in range(11)]
    assert feed(t, fixes) == []


def test_single_jittery_fixes_do_not_count() -> None:
    t = tracker()
    far = offset(MERCHANT, 400)
    fixes = [fix(far, 0), fix(MERCHANT, 5), fix(far, 10), fix(far, 40), fix(MERCHANT, 45)]
    fixes.append(fix(far, 70))
    assert feed(t, fixes) == []


def test_a_jittery_fix_just_outside_does_not_reset_the_dwell() -> None:
    # 90 m is outside the 75 m fence but inside its 100 m exit circle.
    t = tracker()
    fixes = [fix(offset(MERCHANT, 60), 0), fix(offset(MERCHANT, 90), 8), fix(MERCHANT, 21)]
    assert [a.kind for a in feed(t, fixes)] == [A.ARRIVED_AT_MERCHANT]


def test_leaving_before_the_dwell_resets_it() -> None:
    t = tracker()
    inside, outside = MERCHANT, offset(MERCHANT, 200)
    first = [fix(inside, 0), fix(inside, 15), fix(outside, 16)]
    assert feed(t, first) == []
    # Back 4 s later: 15 s before and 15 s now are not one 20 s stay.
    second = [fix(inside, 20), fix(inside, 35)]
    assert feed(t, second) == []
    [arrival] = t.observe(fix(inside, 41))
    assert arrival.kind is A.ARRIVED_AT_MERCHANT
    # The stay started where the path from 200 m re-entered the fence: 125 of 200 m in 4 s.
    assert arrival.since_ms == T0 + 16_000 + 2_500


def test_sparse_fixes_approach_then_arrive_in_order() -> None:
    t = tracker(Leg.TO_CUSTOMER)
    assert t.observe(fix(offset(CUSTOMER, -2000), 0)) == []
    # No fix landed in the 500 m band: the segment crossed it.
    [approach] = t.observe(fix(offset(CUSTOMER, -30), 60))
    assert approach.kind is A.APPROACHING_CUSTOMER
    assert approach.since_ms == T0 + round(60_000 * 1500 / 1970)
    assert approach.time_ms == T0 + 60_000
    # The dwell counts from the interpolated entry into the 75 m fence, not from the fix.
    entry_ms = T0 + round(60_000 * 1925 / 1970)
    assert t.observe(fix(offset(CUSTOMER, -30), 70)) == []
    # The dwell (20 s from entry_ms) has not run out at T0 + 70 s, but has at T0 + 80 s.
    [arrival] = t.observe(fix(offset(CUSTOMER, -20), 80))
    assert arrival.kind is A.ARRIVED_AT_CUSTOMER
    assert arrival.since_ms == entry_ms
    assert feed(t, [fix(CUSTOMER, 90), fix(offset(CUSTOMER, 300), 120)]) == []


def test_approach_and_arrival_in_one_segment_come_in_that_order() -> None:
    rules = GeofenceRules(dwell_s=0, approach_m=500, approach_s=0)
    t = tracker(Leg.TO_CUSTOMER, rules)
    t.observe(fix(offset(CUSTOMER, -2000), 0))
    assert [a.kind for a in t.observe(fix(CUSTOMER, 60))] == [
        A.APPROACHING_CUSTOMER,
        A.ARRIVED_AT_CUSTOMER,
    ]


def test_a_stay_between_two_sparse_fixes_is_not_skipped() -> None:
    # 150 m west, then 100 s later 150 m east: the straight path spent about 58 s in the fence.
    t = tracker()
    west, east = offset(MERCHANT, 0, -150), offset(MERCHANT, 0, 150)
    assert t.observe(fix(west, 0)) == []
    [arrival] = t.observe(fix(east, 100))
    assert arrival.kind is A.ARRIVED_AT_MERCHANT
    assert arrival.since_ms == T0 + 25_000
    assert (arrival.lat, arrival.lng) == east
    # The same crossing in 20 s is a drive-by.
    quick = tracker()
    assert feed(quick, [fix(west, 0), fix(east, 20)]) == []


def test_customer_events_wait_for_the_pickup() -> None:
    t = tracker()
    at_customer = [fix(CUSTOMER, s) for s in range(0, 60, 10)]
    assert feed(t, at_customer) == []
    picked_up(t)
    kinds = [a.kind for a in feed(t, [fix(CUSTOMER, s) for s in range(60, 120, 10)])]
    assert kinds == [A.APPROACHING_CUSTOMER, A.ARRIVED_AT_CUSTOMER]


def test_no_merchant_arrival_after_the_pickup() -> None:
    t = tracker()
    picked_up(t)
    assert all(
        a.kind is not A.ARRIVED_AT_MERCHANT
        for a in feed(t, [fix(MERCHANT, s) for s in range(0, 60, 5)])
    )


def test_fired_events_restored_from_elsewhere_do_not_fire_again() -> None:
    fence = OrderFence("o1", *MERCHANT, *CUSTOMER, leg=Leg.TO_CUSTOMER)
    t = GeofenceTracker(fence, RULES, fired=[A.ARRIVED_AT_CUSTOMER])
    assert feed(t, [fix(offset(CUSTOMER, -2000), 0), fix(CUSTOMER, 60), fix(CUSTOMER, 90)]) == []


def test_a_forgotten_event_fires_again() -> None:
    t = tracker()
    fired = feed(t, [fix(MERCHANT, 0), fix(MERCHANT, 20)])
    assert [a.kind for a in fired] == [A.ARRIVED_AT_MERCHANT]
    t.forget(A.ARRIVED_AT_MERCHANT)
    assert [a.kind for a in t.observe(fix(MERCHANT, 25))] == [A.ARRIVED_AT_MERCHANT]


def test_approaching_by_time_depends_on_speed() -> None:
    rules = GeofenceRules(approach_m=0, approach_s=60, min_speed_mps=3)
    slow, fast = tracker(Leg.TO_CUSTOMER, rules), tracker(Leg.TO_CUSTOMER, rules)
    point = offset(CUSTOMER, -600)
    assert slow.observe(fix(point, 0, speed=5)) == []  # 120 s away
    assert [a.kind for a in fast.observe(fix(point, 0, speed=12))] == [A.APPROACHING_CUSTOMER]
    assert rules.approach_radius_m(0) == 180  # never slower than min_speed_mps


def test_a_long_gap_breaks_the_stay() -> None:
    t = tracker(rules=GeofenceRules(max_gap_s=60))
    assert feed(t, [fix(MERCHANT, 0), fix(MERCHANT, 15), fix(MERCHANT, 90)]) == []
    assert [a.kind for a in t.observe(fix(MERCHANT, 110))] == [A.ARRIVED_AT_MERCHANT]


def test_old_and_repeated_fixes_are_ignored() -> None:
    t = tracker()
    t.observe(fix(MERCHANT, 10))
    assert t.observe(fix(MERCHANT, 10)) == []
    assert t.observe(fix(MERCHANT, 40)) != []
    assert t.observe(fix(MERCHANT, 5)) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"merchant_radius_m": 0},
        {"customer_radius_m": -1},
        {"dwell_s": -1},
        {"approach_m": -5},
        {"max_gap_s": 0},
        {"min_speed_mps": float("nan")},
    ],
)
def test_rules_refuse_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GeofenceRules(**bad)


@settings(deadline=None)
@given(
    lat=st.floats(-70, 70),
    lng=st.floats(-180, 180),
    north=st.floats(-5000, 5000),
    east=st.floats(-5000, 5000),
)
def test_the_projection_agrees_with_haversine_nearby(
    lat: float, lng: float, north: float, east: float
) -> None:
    other_lat = lat + math.degrees(north / EARTH_RADIUS_M)
    other_lng = lng + math.degrees(east / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    other_lng = (other_lng + 540) % 360 - 180
    x, y = _local_xy(lat, lng, other_lat, other_lng)
    exact = haversine_m(lat, lng, other_lat, other_lng)
    assert math.hypot(x, y) == pytest.approx(exact, rel=2e-3, abs=0.5)


# A random walk around the merchant and the customer: stays of a few fixes at a spot, with the
# pickup somewhere in it.
_stays = st.lists(
    st.tuples(
        st.sampled_from(["merchant", "customer", "between", "far"]),
        st.floats(-150, 150),  # metres north of the anchor
        st.floats(-150, 150),  # metres east of the anchor
        st.integers(1, 8),  # fixes at that spot (each jittered by up to 30 m)
        # ms between those fixes: mostly a phone's few seconds, sometimes out of order or a gap
        st.one_of(st.sampled_from([2_000, 5_000, 10_000, 30_000]), st.integers(-5_000, 150_000)),
        st.floats(0, 30),  # reported speed
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(stays=_stays, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_events_fire_at_most_once_and_in_a_sane_order(
    stays: list[tuple[str, float, float, int, int, float]],
    seed: int,
    data: st.DataObject,
) -> None:
    rules = data.draw(
        st.builds(
            GeofenceRules,
            merchant_radius_m=st.floats(10, 200),
            customer_radius_m=st.floats(10, 200),
            exit_margin_m=st.floats(0, 50),
            dwell_s=st.floats(0, 60),
            approach_m=st.floats(0, 2000),
            approach_s=st.floats(0, 300),
            max_gap_s=st.floats(10, 200),
        )
    )
    t = tracker(rules=rules)
    anchors = {
        "merchant": MERCHANT,
        "customer": CUSTOMER,
        "between": offset(MERCHANT, 500),
        "far": offset(MERCHANT, -3000),
    }
    rng = random.Random(seed)
    fixes = []
    now = 0
    for where, north, east, count, dt, speed in stays:
        for _ in range(count):
            now += dt
            spot = offset(anchors[where], north + rng.uniform(-30, 30), east + rng.uniform(-30, 30))
            fixes.append(fix(spot, now / 1000, speed))
    pickup_at = data.draw(st.integers(0, len(fixes)))
    seen: list[Arrival] = []
    for i, f in enumerate(fixes):
        if i == pickup_at:
            picked_up(t)
        events = t.observe(f)
        for event in events:
            assert event.since_ms <= event.time_ms
            if event.kind is not A.APPROACHING_CUSTOMER:
                assert event.time_ms - event.since_ms >= rules.dwell_s * 1000
            if event.kind is A.ARRIVED_AT_MERCHANT:
                assert i < pickup_at
            else:
                assert i >= pickup_at, "a customer event before the pickup"
            if event.kind is A.APPROACHING_CUSTOMER:
                assert A.ARRIVED_AT_CUSTOMER not in {e.kind for e in seen}
        seen.extend(events)
    kinds = [e.kind for e in seen]
    assert len(kinds) == len(set(kinds)), "an event fired twice"


@settings(max_examples=200, deadline=None)
@given(
    miss_m=st.floats(-70, 70),
    speed=st.floats(10.5, 30),
    intervals=st.lists(st.floats(1, 120), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_straight_drive_by_faster_than_the_fence_allows_never_arrives(
    miss_m: float, speed: float, intervals: list[float], seed: int
) -> None:
    # Inside the 100 m exit circle for at most 200 m / speed < 20 s.
    t = tracker()
    start, now = -2500.0, 0.0
    rng = random.Random(seed)
    events: list[Arrival] = []
    events += t.observe(fix(offset(MERCHANT, start, miss_m), 0, speed))
    for gap in intervals:
        now += gap
        jitter = rng.uniform(-0.5, 0.5)
        events += t.observe(fix(offset(MERCHANT, start + speed * now + jitter, miss_m), now, speed))
    assert events == []


@settings(max_examples=200, deadline=None)
@given(
    stop_north=st.floats(-50, 50),
    stop_east=st.floats(-50, 50),
    interval=st.floats(1, 110),
    from_m=st.floats(200, 3000),
)
def test_a_courier_who_stops_inside_always_arrives(
    stop_north: float, stop_east: float, interval: float, from_m: float
) -> None:
    t = tracker()
    path = [fix(offset(MERCHANT, -from_m), 0)]
    # Drives in at 10 m/s, then waits; fixes every ``interval`` seconds whatever happens.
    drive_s = math.hypot(from_m + stop_north, stop_east) / 10
    now = interval
    while now < drive_s + RULES.dwell_s + 2 * interval:
        share = min(1.0, now / drive_s)
        north = -from_m + share * (from_m + stop_north)
        path.append(fix(offset(MERCHANT, north, share * stop_east), now))
        now += interval
    assert [a.kind for a in feed(t, path)] == [A.ARRIVED_AT_MERCHANT]
