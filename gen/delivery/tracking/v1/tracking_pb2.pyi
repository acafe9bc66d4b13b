import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrackingNoticeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRACKING_NOTICE_TYPE_UNSPECIFIED: _ClassVar[TrackingNoticeType]
    TRACKING_NOTICE_TYPE_POSITION_STALE: _ClassVar[TrackingNoticeType]
    TRACKING_NOTICE_TYPE_POSITION_RESUMED: _ClassVar[TrackingNoticeType]
    TRACKING_NOTICE_TYPE_COURIER_HAS_ANOTHER_DROP: _ClassVar[TrackingNoticeType]
    TRACKING_NOTICE_TYPE_NO_DRIVER_AVAILABLE: _ClassVar[TrackingNoticeType]
    TRACKING_NOTICE_TYPE_ARRIVED_AT_MERCHANT: _ClassVar[TrackingNoticeType]
    TRACKING_NOTICE_TYPE_DRIVER_APPROACHING: _ClassVar[TrackingNoticeType]
    TRACKING_NOTICE_TYPE_ARRIVED_AT_CUSTOMER: _ClassVar[TrackingNoticeType]
    TRACKING_NOTICE_TYPE_RESYNC: _ClassVar[TrackingNoticeType]

class StopKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_KIND_UNSPECIFIED: _ClassVar[StopKind]
    STOP_KIND_PICKUP: _ClassVar[StopKind]
    STOP_KIND_DROPOFF: _ClassVar[StopKind]
TRACKING_NOTICE_TYPE_UNSPECIFIED: TrackingNoticeType
TRACKING_NOTICE_TYPE_POSITION_STALE: TrackingNoticeType
TRACKING_NOTICE_TYPE_POSITION_RESUMED: TrackingNoticeType
TRACKING_NOTICE_TYPE_COURIER_HAS_ANOTHER_DROP: TrackingNoticeType
TRACKING_NOTICE_TYPE_NO_DRIVER_AVAILABLE: TrackingNoticeType
TRACKING_NOTICE_TYPE_ARRIVED_AT_MERCHANT: TrackingNoticeType
TRACKING_NOTICE_TYPE_DRIVER_APPROACHING: TrackingNoticeType
TRACKING_NOTICE_TYPE_ARRIVED_AT_CUSTOMER: TrackingNoticeType
TRACKING_NOTICE_TYPE_RESYNC: TrackingNoticeType
STOP_KIND_UNSPECIFIED: StopKind
STOP_KIND_PICKUP: StopKind
STOP_KIND_DROPOFF: StopKind

class Eta(_message.Message):
    __slots__ = ("estimated_pickup_time", "estimated_delivery_time", "low_delivery_time", "high_delivery_time", "compute_time")
    ESTIMATED_PICKUP_TIME_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_DELIVERY_TIME_FIELD_NUMBER: _ClassVar[int]
    LOW_DELIVERY_TIME_FIELD_NUMBER: _ClassVar[int]
    HIGH_DELIVERY_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_FIELD_NUMBER: _ClassVar[int]
    estimated_pickup_time: _timestamp_pb2.Timestamp
    estimated_delivery_time: _timestamp_pb2.Timestamp
    low_delivery_time: _timestamp_pb2.Timestamp
    high_delivery_time: _timestamp_pb2.Timestamp
    compute_time: _timestamp_pb2.Timestamp
    def __init__(self, estimated_pickup_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., estimated_delivery_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., low_delivery_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., high_delivery_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., compute_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OrderStatusUpdate(_message.Message):
    __slots__ = ("status", "driver_id", "version")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.OrderStatus
    driver_id: str
    version: int
    def __init__(self, status: _Optional[_Union[_common_pb2.OrderStatus, str]] = ..., driver_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class CourierPosition(_message.Message):
    __slots__ = ("position", "heading_degrees", "fix_time", "stale", "position_age_duration")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    HEADING_DEGREES_FIELD_NUMBER: _ClassVar[int]
    FIX_TIME_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    POSITION_AGE_DURATION_FIELD_NUMBER: _ClassVar[int]
    position: _common_pb2.LatLng
    heading_degrees: float
    fix_time: _timestamp_pb2.Timestamp
    stale: bool
    position_age_duration: _duration_pb2.Duration
    def __init__(self, position: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., heading_degrees: _Optional[float] = ..., fix_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stale: _Optional[bool] = ..., position_age_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class EtaUpdate(_message.Message):
    __slots__ = ("eta",)
    ETA_FIELD_NUMBER: _ClassVar[int]
    eta: Eta
    def __init__(self, eta: _Optional[_Union[Eta, _Mapping]] = ...) -> None: ...

class TrackingNotice(_message.Message):
    __slots__ = ("type", "message")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    type: TrackingNoticeType
    message: str
    def __init__(self, type: _Optional[_Union[TrackingNoticeType, str]] = ..., message: _Optional[str] = ...) -> None: ...

class RouteStop(_message.Message):
    __slots__ = ("stop_id", "order_id", "kind", "location", "ready_time", "service_duration")
    STOP_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    READY_TIME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_DURATION_FIELD_NUMBER: _ClassVar[int]
    stop_id: str
    order_id: str
    kind: StopKind
    location: _common_pb2.LatLng
    ready_time: _timestamp_pb2.Timestamp
    service_duration: _duration_pb2.Duration
    def __init__(self, stop_id: _Optional[str] = ..., order_id: _Optional[str] = ..., kind: _Optional[_Union[StopKind, str]] = ..., location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., ready_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., service_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PlannedStop(_message.Message):
    __slots__ = ("stop", "arrival_time", "departure_time", "distance_from_previous_meters")
    STOP_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_TIME_FIELD_NUMBER: _ClassVar[int]
    DEPARTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FROM_PREVIOUS_METERS_FIELD_NUMBER: _ClassVar[int]
    stop: RouteStop
    arrival_time: _timestamp_pb2.Timestamp
    departure_time: _timestamp_pb2.Timestamp
    distance_from_previous_meters: float
    def __init__(self, stop: _Optional[_Union[RouteStop, _Mapping]] = ..., arrival_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., departure_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., distance_from_previous_meters: _Optional[float] = ...) -> None: ...
