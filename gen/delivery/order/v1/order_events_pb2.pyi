import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from delivery.order.v1 import order_pb2 as _order_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_EVENT_TYPE_UNSPECIFIED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_CREATED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_CONFIRMED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_REJECTED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_PREPARING: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_READY_FOR_PICKUP: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_COURIER_ASSIGNED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_COURIER_UNASSIGNED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_PICKED_UP: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_DELIVERED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_CANCELLED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_PROBLEM_REPORTED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_ESTIMATE_CHANGED: _ClassVar[OrderEventType]
    ORDER_EVENT_TYPE_NO_COURIER_FOUND: _ClassVar[OrderEventType]
ORDER_EVENT_TYPE_UNSPECIFIED: OrderEventType
ORDER_EVENT_TYPE_CREATED: OrderEventType
ORDER_EVENT_TYPE_CONFIRMED: OrderEventType
ORDER_EVENT_TYPE_REJECTED: OrderEventType
ORDER_EVENT_TYPE_PREPARING: OrderEventType
ORDER_EVENT_TYPE_READY_FOR_PICKUP: OrderEventType
ORDER_EVENT_TYPE_COURIER_ASSIGNED: OrderEventType
ORDER_EVENT_TYPE_COURIER_UNASSIGNED: OrderEventType
ORDER_EVENT_TYPE_PICKED_UP: OrderEventType
ORDER_EVENT_TYPE_DELIVERED: OrderEventType
ORDER_EVENT_TYPE_CANCELLED: OrderEventType
ORDER_EVENT_TYPE_PROBLEM_REPORTED: OrderEventType
ORDER_EVENT_TYPE_ESTIMATE_CHANGED: OrderEventType
ORDER_EVENT_TYPE_NO_COURIER_FOUND: OrderEventType

class OrderEvent(_message.Message):
    __slots__ = ("event_id", "order_id", "type", "status", "version", "customer_id", "merchant_id", "driver_id", "merchant_location", "delivery_location", "estimated_prep_duration", "occur_time", "previous_driver_id", "cancel_reason", "problem", "estimated_delivery_time", "confirm_time")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_LOCATION_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_PREP_DURATION_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REASON_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_DELIVERY_TIME_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_TIME_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    type: OrderEventType
    status: _common_pb2.OrderStatus
    version: int
    customer_id: str
    merchant_id: str
    driver_id: str
    merchant_location: _common_pb2.LatLng
    delivery_location: _common_pb2.LatLng
    estimated_prep_duration: _duration_pb2.Duration
    occur_time: _timestamp_pb2.Timestamp
    previous_driver_id: str
    cancel_reason: _order_pb2.CancelReason
    problem: _order_pb2.ProblemReport
    estimated_delivery_time: _timestamp_pb2.Timestamp
    confirm_time: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., type: _Optional[_Union[OrderEventType, str]] = ..., status: _Optional[_Union[_common_pb2.OrderStatus, str]] = ..., version: _Optional[int] = ..., customer_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., driver_id: _Optional[str] = ..., merchant_location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., delivery_location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., estimated_prep_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_driver_id: _Optional[str] = ..., cancel_reason: _Optional[_Union[_order_pb2.CancelReason, str]] = ..., problem: _Optional[_Union[_order_pb2.ProblemReport, _Mapping]] = ..., estimated_delivery_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., confirm_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
