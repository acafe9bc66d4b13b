"""The GPS sanity pipeline: Null Island, headings and speeds that are no readings, and the way
out of a wrong anchor; the acks a stream may send."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from location_svc.domain.fixes import (
    UNKNOWN,
    DropReason,
    Fix,
    FixRules,
    Jumps,
    check,
    motion_known,
)
from location_svc.domain.presence import DriverStatus
from location_svc.ingest import AckSink, Update
from mesh.geo import EARTH_RADIUS_M

RULES = FixRules()
NOW = 1_700_000_000_000
HELSINKI = (60.1699, 24.9384)


def _fix(lat: float, lng: float, ms: int, *, heading: float = 0.0, speed: float = 0.0) -> Fix:
    return Fix(lat, lng, 5.0, heading, speed, ms, 0)


def _north(lat: float, lng: float, metres: float) -> tuple[float, float]:
    return lat + math.degrees(metres / EARTH_RADIUS_M), lng


@pytest.mark.parametrize(
    ("lat", "lng"),
    [
        (0.0, 0.0),
        (-0.0, 0.0),
        (math.nan, 24.0),
        (60.0, math.inf),
        (-math.inf, 24.0),
        (90.5, 24.0),
        (60.0, -180.5),
    ],
)
def test_no_position_and_impossible_coordinates_are_out_of_range(lat: float, lng: float) -> None:
    assert check(_fix(lat, lng, NOW), None, NOW, RULES) is DropReason.OUT_OF_RANGE


def test_the_equator_and_the_meridian_apart_are_places() -> None:
    assert check(_fix(0.0, 24.0, NOW), None, NOW, RULES) is None
    assert check(_fix(60.0, 0.0, NOW), None, NOW, RULES) is None


@pytest.mark.parametrize(
    ("heading", "speed", "expected"),
    [
        (90.0, 5.0, (90.0, 5.0)),
        (0.0, 0.0, (0.0, 0.0)),
        (359.9, 69.0, (359.9, 69.0)),
        (UNKNOWN, UNKNOWN, (UNKNOWN, UNKNOWN)),
        (math.nan, 5.0, (UNKNOWN, 5.0)),
        (-math.inf, 5.0, (UNKNOWN, 5.0)),
        (math.inf, 5.0, (UNKNOWN, 5.0)),
        (720.0, 5.0, (UNKNOWN, 5.0)),
        (360.0, 5.0, (UNKNOWN, 5.0)),
        (-45.0, 5.0, (UNKNOWN, 5.0)),
        (90.0, math.inf, (90.0, UNKNOWN)),
        (90.0, -50.0, (90.0, UNKNOWN)),
        (90.0, 3e38, (90.0, UNKNOWN)),
        (90.0, math.nan, (90.0, UNKNOWN)),
    ],
)
def test_a_heading_or_speed_that_is_no_reading_is_not_known(
    heading: float, speed: float, expected: tuple[float, float]
) -> None:
    fix = motion_known(_fix(*HELSINKI, NOW, heading=heading, speed=speed), RULES)
    assert (fix.heading_deg, fix.speed_mps) == expected
    assert (fix.lat, fix.lng, fix.device_time_ms) == (*HELSINKI, NOW)


@given(
    heading=st.floats(allow_nan=True, allow_infinity=True),
    speed=st.floats(allow_nan=True, allow_infinity=True),
)
def test_every_heading_and_speed_that_leaves_is_finite_and_in_range(
    heading: float, speed: float
) -> None:
    fix = motion_known(_fix(*HELSINKI, NOW, heading=heading, speed=speed), RULES)
    assert fix.heading_deg == UNKNOWN or 0 <= fix.heading_deg < 360
    assert fix.speed_mps == UNKNOWN or 0 <= fix.speed_mps <= RULES.max_speed_mps


def _track(start: tuple[float, float], t0: int, count: int, every_s: float) -> list[Fix]:
    """A courier riding north at 5 m/s, a fix every ``every_s`` seconds."""
    return [
        _fix(*_north(*start, 5.0 * every_s * i), t0 + int(every_s * 1000 * i)) for i in range(count)
    ]


def _run(anchor: Fix | None, fixes: list[Fix], rules: FixRules = RULES) -> list[DropReason | None]:
    """Each fix's verdict as a stream sees it: believed fixes become the anchor."""
    jumps, last, verdicts = Jumps(), anchor, []
    for fix in fixes:
        reason = check(fix, last, fix.device_time_ms, rules, jumps)
        verdicts.append(reason)
        if reason is None:
            last = fix
    return verdicts


def test_fixes_agreeing_among_themselves_leave_a_wrong_anchor() -> None:
    # A first fix 400 km away (a cached position) a second before the courier's true track.
    anchor = _fix(*_north(*HELSINKI, 400_000), NOW - 1_000)
    verdicts = _run(anchor, _track(HELSINKI, NOW, 6, 2.0))
    speed = DropReason.IMPOSSIBLE_SPEED
    # Three in a row over 4 s are not yet enough (the run must span 5 s); the fourth is.
    assert verdicts == [speed, speed, speed, None, None, None]


def test_without_the_run_the_wrong_anchor_locks_the_courier_out() -> None:
    anchor = _fix(*_north(*HELSINKI, 400_000), NOW - 1_000)
    jumps_off = FixRules(reanchor_fixes=10**9)
    assert set(_run(anchor, _track(HELSINKI, NOW, 30, 1.0), jumps_off)) == {
        DropReason.IMPOSSIBLE_SPEED
    }


def test_a_gps_that_jumps_back_and_forth_never_moves_the_courier() -> None:
    track = _track(HELSINKI, NOW, 20, 1.0)
    far = [_fix(*_north(fix.lat, fix.lng, 50_000), fix.device_time_ms + 500) for fix in track]
    mixed = [f for pair in zip(track, far, strict=True) for f in pair]
    verdicts = _run(track[0], mixed[1:])
    assert all(v is None for v in verdicts[1::2])
    assert all(v is DropReason.IMPOSSIBLE_SPEED for v in verdicts[::2])


def test_jumps_that_disagree_start_the_run_again() -> None:
    anchor = _fix(*HELSINKI, NOW)
    # Each wild fix is impossible from the anchor and from the wild fix before it.
    wild = [
        _fix(*_north(*HELSINKI, 100_000 * (1 + i % 2) * (-1) ** i), NOW + 2_000 * (i + 1))
        for i in range(10)
    ]
    assert set(_run(anchor, wild)) == {DropReason.IMPOSSIBLE_SPEED}


@settings(max_examples=200, deadline=None)
@given(
    away_km=st.floats(min_value=1, max_value=15_000),
    every_s=st.floats(min_value=0.2, max_value=30),
    bearing=st.floats(min_value=0, max_value=2 * math.pi),
)
def test_a_consistent_track_is_believed_within_a_bounded_number_of_fixes(
    away_km: float, every_s: float, bearing: float
) -> None:
    """However far the wrong anchor, a courier sending fixes that agree is believed once
    enough of them span the re-anchoring time."""
    d = away_km * 1000 / EARTH_RADIUS_M
    anchor = _fix(
        HELSINKI[0] + math.degrees(d * math.cos(bearing)),
        HELSINKI[1] + math.degrees(d * math.sin(bearing)) / 2,
        NOW - 1_000,
    )
    if anchor.lat > 90 or anchor.lat < -90:
        anchor = anchor._replace(lat=max(-89.0, min(89.0, anchor.lat)))
    bound = max(RULES.reanchor_fixes, math.ceil(RULES.reanchor_span_s / every_s) + 1)
    verdicts = _run(anchor, _track(HELSINKI, NOW, bound + 3, every_s))
    assert None in verdicts[:bound]
    first = verdicts.index(None)
    assert all(v is None for v in verdicts[first:])


def _update(fix: Fix, sink: AckSink, shard: str = "s1") -> Update:
    return Update("d", fix, DriverStatus.AVAILABLE, "bicycle", "", shard, NOW, sink, shard)


def _numbered(sequence: int) -> Fix:
    return Fix(*HELSINKI, 5.0, 0.0, 0.0, NOW + sequence, sequence)


def test_dropped_fixes_are_acked_but_never_past_a_fix_still_on_its_way() -> None:
    sink = AckSink()
    sink.dropped(1)
    assert sink.acked_sequence == 1
    two = _update(_numbered(2), sink)
    sink.submitted(two.fix)
    sink.dropped(3)
    # 2 is not stored yet: the app may not forget it.
    assert sink.acked_sequence == 1
    sink.done(two)
    assert sink.acked_sequence == 3 and sink.flushed == 1


def test_a_failed_write_is_not_acked_and_the_stream_believes_the_stored_fix_again() -> None:
    first = _numbered(1)
    sink = AckSink(first, "s1", "s1")
    two = _update(_numbered(2), sink, "s2")
    sink.submitted(two.fix)
    assert sink.last is two.fix
    sink.lost(two)
    assert (sink.last, sink.stored, sink.shard, sink.pos_shard) == (first, first, "s1", "s1")
    assert sink.acked_sequence == 0
    # A later fix processed does not ack past the lost one; its resend does.
    three = _update(_numbered(3), sink, "s2")
    sink.submitted(three.fix)
    sink.done(three)
    assert sink.acked_sequence == 1
    again = _update(_numbered(2), sink, "s2")
    sink.submitted(again.fix)
    sink.done(again)
    assert sink.acked_sequence == 3


def test_a_failed_write_with_a_newer_fix_on_its_way_keeps_believing_the_newer() -> None:
    sink = AckSink(_numbered(1), "s1", "s1")
    two, three = _update(_numbered(2), sink), _update(_numbered(3), sink)
    sink.submitted(two.fix)
    sink.submitted(three.fix)
    sink.lost(two)
    assert sink.last is three.fix
