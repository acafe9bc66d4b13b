"""Writes the per-order tracking log from the order and location event streams.

One consumer group (``tracking``) per stream: each event is logged by one instance, once
(the log's append drops an event id it has seen), and every instance hears of it through the
log's announcement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf import timestamp_pb2

from delivery.location.v1 import location_events_pb2
from delivery.order.v1 import order_events_pb2
from delivery.tracking.v1 import tracking_pb2, tracking_service_pb2
from mesh import clock
from mesh.events import Event, parse_payload
from tracking_svc.domain.eta import Estimate, EtaInputs
from tracking_svc.domain.travel import Point
from tracking_svc.live import STATUS_TO_PROTO, timestamp_s
from tracking_svc.store.calibration import EtaCalibration
from tracking_svc.store.log import TrackingLog

logger = logging.getLogger(__name__)

_E = order_events_pb2
#: Order events that change what a watcher is shown as the order's status or courier.
STATUS_EVENTS = frozenset(
    {
        _E.ORDER_EVENT_TYPE_CREATED,
        _E.ORDER_EVENT_TYPE_CONFIRMED,
        _E.ORDER_EVENT_TYPE_REJECTED,
        _E.ORDER_EVENT_TYPE_PREPARING,
        _E.ORDER_EVENT_TYPE_READY_FOR_PICKUP,
        _E.ORDER_EVENT_TYPE_COURIER_ASSIGNED,
        _E.ORDER_EVENT_TYPE_COURIER_UNASSIGNED,
        _E.ORDER_EVENT_TYPE_PICKED_UP,
        _E.ORDER_EVENT_TYPE_DELIVERED,
        _E.ORDER_EVENT_TYPE_CANCELLED,
    }
)
_STATUS_NAMES = {v: k for k, v in STATUS_TO_PROTO.items()}

_A = location_events_pb2
_T = tracking_pb2
ARRIVAL_NOTICES = {
    _A.ARRIVAL_EVENT_TYPE_ARRIVED_AT_MERCHANT: (
        _T.TRACKING_NOTICE_TYPE_ARRIVED_AT_MERCHANT,
        "The courier is at the merchant.",
    ),
    _A.ARRIVAL_EVENT_TYPE_APPROACHING_CUSTOMER: (
        _T.TRACKING_NOTICE_TYPE_DRIVER_APPROACHING,
        "The courier is a few minutes away.",
    ),
    _A.ARRIVAL_EVENT_TYPE_ARRIVED_AT_CUSTOMER: (
        _T.TRACKING_NOTICE_TYPE_ARRIVED_AT_CUSTOMER,
        "The courier is at the door.",
    ),
}

#: A finished order's log is kept this long for late resumes, in seconds.
FINAL_TTL_S = 24 * 3600


class Recorder:
    """The handler of both streams' events; with ``calibration``, it also remembers each
    order's first estimate (made by ``estimator`` at placement) and, on delivery, its error."""

    def __init__(
        self,
        log: TrackingLog,
        calibration: EtaCalibration | None = None,
        estimator: Callable[[EtaInputs], Estimate] | None = None,
    ) -> None:
        self._log = log
        self._calibration = calibration
        self._estimator = estimator
        #: Entries logged.
        self.logged = 0

    async def order_event(self, event: Event) -> None:
        message = order_events_pb2.OrderEvent()
        if not parse_payload(event, message):
            return
        if message.type == _E.ORDER_EVENT_TYPE_NO_COURIER_FOUND:
            await self._notice(
                message.order_id,
                f"order:{event.event_id}",
                tracking_pb2.TRACKING_NOTICE_TYPE_NO_DRIVER_AVAILABLE,
                "No courier has taken the order yet; we keep looking.",
                message.occur_time,
            )
            return
        if message.type not in STATUS_EVENTS:
            return
        status = _STATUS_NAMES.get(message.status)
        if status is None or not message.order_id:
            return
        update = tracking_service_pb2.TrackOrderResponse(
            event_time=message.occur_time
            if message.HasField("occur_time")
            else timestamp_s(event.occurred_at.timestamp()),
            status_update=tracking_pb2.OrderStatusUpdate(
                status=message.status, driver_id=message.driver_id, version=message.version
            ),
        )
        final = status in ("delivered", "cancelled")
        entry = await self._log.append(
            message.order_id,
            update.SerializeToString(),
            now_ms=clock.now_ms(),
            event_id=f"order:{event.event_id}",
            version=message.version,
            status=status,
            driver_id=message.driver_id,
            ttl_s=FINAL_TTL_S if final else None,
        )
        if entry is not None:
            self.logged += 1
        await self._calibrate(message)

    async def _calibrate(self, message: order_events_pb2.OrderEvent) -> None:
        if self._calibration is None or self._estimator is None:
            return
        when = message.occur_time.ToNanoseconds() / 1e9
        if message.type == _E.ORDER_EVENT_TYPE_CREATED:
            prep = message.estimated_prep_duration.ToTimedelta().total_seconds() or 900.0
            first = self._estimator(
                EtaInputs(
                    now=when,
                    status="pending",
                    merchant=Point(
                        message.merchant_location.latitude, message.merchant_location.longitude
                    ),
                    door=Point(
                        message.delivery_location.latitude, message.delivery_location.longitude
                    ),
                    prep_s=prep,
                )
            )
            await self._calibration.first_estimate(message.order_id, first.delivery, when)
        elif message.type == _E.ORDER_EVENT_TYPE_DELIVERED:
            await self._calibration.delivered(message.order_id, when)

    async def location_event(self, event: Event) -> None:
        message = location_events_pb2.DriverArrivalEvent()
        if not parse_payload(event, message) or message.type not in ARRIVAL_NOTICES:
            return
        kind, text = ARRIVAL_NOTICES[message.type]
        await self._notice(
            message.order_id,
            f"arrival:{message.event_id or event.event_id}",
            kind,
            text,
            message.occur_time,
        )

    async def _notice(
        self,
        order_id: str,
        event_id: str,
        kind: tracking_pb2.TrackingNoticeType,
        text: str,
        when: timestamp_pb2.Timestamp,
    ) -> None:
        if not order_id:
            return
        update = tracking_service_pb2.TrackOrderResponse(
            event_time=when, notice=tracking_pb2.TrackingNotice(type=kind, message=text)
        )
        entry = await self._log.append(
            order_id, update.SerializeToString(), now_ms=clock.now_ms(), event_id=event_id
        )
        if entry is not None:
            self.logged += 1
