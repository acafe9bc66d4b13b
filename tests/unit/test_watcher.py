"""A TrackOrder stream's mailbox: ordered logged updates, only the newest position, bounded."""

from __future__ import annotations

import asyncio

from delivery.common.v1 import common_pb2
from delivery.tracking.v1 import tracking_pb2, tracking_service_pb2
from mesh.auth import Principal, Role
from tracking_svc.live import SEQ_SHIFT, LiveRules, Watcher

R = tracking_service_pb2.TrackOrderResponse


def _status(version: int) -> R:
    return R(
        status_update=tracking_pb2.OrderStatusUpdate(
            status=common_pb2.ORDER_STATUS_PREPARING, version=version
        )
    )


def _position(lat: float, fix_s: float = 0.0) -> R:
    position = tracking_pb2.CourierPosition(position=common_pb2.LatLng(latitude=lat, longitude=1.0))
    position.fix_time.FromMilliseconds(int(fix_s * 1000))
    return R(courier_position=position)


def _watcher(**rules: object) -> Watcher:
    return Watcher(Principal("u", Role.CUSTOMER), LiveRules(**rules))  # type: ignore[arg-type]


async def test_a_slow_watcher_holds_only_the_newest_position() -> None:
    watcher = _watcher(position_interval_s=0.0)
    for i in range(10_000):
        watcher.position(_position(i / 1000))
    sent, _ = watcher.take()
    assert [u.courier_position.position.latitude for u in sent] == [9.999]


async def test_positions_are_held_back_to_one_per_interval() -> None:
    watcher = _watcher(position_interval_s=60.0)
    watcher.position(_position(1.0))
    first, wait = watcher.take()
    assert len(first) == 1 and wait is None
    watcher.position(_position(2.0))
    watcher.position(_position(3.0))
    held, wait = watcher.take()
    assert held == [] and wait is not None and 59 < wait <= 60


async def test_logged_updates_go_in_order_numbered_by_the_log_and_ephemeral_ones_between() -> None:
    watcher = _watcher(position_interval_s=0.0)
    watcher.logged(100, _status(3))
    watcher.position(_position(1.0))
    watcher.logged(101, _status(4))
    sent, _ = watcher.take()
    assert [u.sequence for u in sent] == [
        100 << SEQ_SHIFT,
        101 << SEQ_SHIFT,
        (101 << SEQ_SHIFT) + 1,
    ]
    assert [u.WhichOneof("update") for u in sent] == [
        "status_update",
        "status_update",
        "courier_position",
    ]
    # A logged update already passed (heard twice) or an older status is not sent again.
    watcher.logged(101, _status(4))
    watcher.logged(102, _status(2))
    again, _ = watcher.take()
    assert again == []


async def test_a_watcher_too_far_behind_is_marked_for_a_fresh_snapshot_not_a_longer_queue() -> None:
    watcher = _watcher(max_backlog=8)
    for seq in range(1, 100):
        watcher.logged(seq, _status(seq))
    assert watcher.overflowed
    sent, _ = watcher.take()
    assert len(sent) <= 8


async def test_ending_wakes_the_stream() -> None:
    watcher = _watcher()
    waiting = asyncio.create_task(watcher.wake.wait())
    watcher.end()
    await asyncio.wait_for(waiting, 1)
    assert watcher.ended and watcher.error is None


async def test_a_phone_sending_every_second_is_not_held_back_by_arrival_jitter() -> None:
    watcher = _watcher(position_interval_s=1.0)
    # Fixes one second apart by the phone's clock, arriving 0.9 s apart here: each goes at once.
    for i, arrived in enumerate((100.0, 100.9, 101.8, 102.7)):
        watcher.position(_position(i, fix_s=1000.0 + i))
        sent, wait = watcher.take(now=arrived)
        assert [u.courier_position.position.latitude for u in sent] == [i] and wait is None
    # A phone sending faster (fixes 0.2 s apart) is held to one a second by this clock.
    watcher.position(_position(9, fix_s=1003.2))
    sent, wait = watcher.take(now=102.9)
    assert sent == [] and wait is not None and abs(wait - 0.8) < 1e-9
    sent, wait = watcher.take(now=103.7)
    assert [u.courier_position.position.latitude for u in sent] == [9]
