import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from delivery.order.v1 import order_pb2 as _order_pb2
from delivery.tracking.v1 import tracking_pb2 as _tracking_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrackOrderRequest(_message.Message):
    __slots__ = ("order_id", "resume_after_sequence")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    resume_after_sequence: int
    def __init__(self, order_id: _Optional[str] = ..., resume_after_sequence: _Optional[int] = ...) -> None: ...

class TrackOrderResponse(_message.Message):
    __slots__ = ("sequence", "event_time", "status_update", "courier_position", "eta", "notice")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_UPDATE_FIELD_NUMBER: _ClassVar[int]
    COURIER_POSITION_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    event_time: _timestamp_pb2.Timestamp
    status_update: _tracking_pb2.OrderStatusUpdate
    courier_position: _tracking_pb2.CourierPosition
    eta: _tracking_pb2.EtaUpdate
    notice: _tracking_pb2.TrackingNotice
    def __init__(self, sequence: _Optional[int] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status_update: _Optional[_Union[_tracking_pb2.OrderStatusUpdate, _Mapping]] = ..., courier_position: _Optional[_Union[_tracking_pb2.CourierPosition, _Mapping]] = ..., eta: _Optional[_Union[_tracking_pb2.EtaUpdate, _Mapping]] = ..., notice: _Optional[_Union[_tracking_pb2.TrackingNotice, _Mapping]] = ...) -> None: ...

class StreamNotificationsRequest(_message.Message):
    __slots__ = ("resume_after_sequence",)
    RESUME_AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    resume_after_sequence: int
    def __init__(self, resume_after_sequence: _Optional[int] = ...) -> None: ...

class StreamNotificationsResponse(_message.Message):
    __slots__ = ("sequence", "notification")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    notification: _order_pb2.Notification
    def __init__(self, sequence: _Optional[int] = ..., notification: _Optional[_Union[_order_pb2.Notification, _Mapping]] = ...) -> None: ...

class GetEtaRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetEtaResponse(_message.Message):
    __slots__ = ("eta",)
    ETA_FIELD_NUMBER: _ClassVar[int]
    eta: _tracking_pb2.Eta
    def __init__(self, eta: _Optional[_Union[_tracking_pb2.Eta, _Mapping]] = ...) -> None: ...

class PlanRouteRequest(_message.Message):
    __slots__ = ("start", "start_time", "stops", "vehicle_type")
    START_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    STOPS_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    start: _common_pb2.LatLng
    start_time: _timestamp_pb2.Timestamp
    stops: _containers.RepeatedCompositeFieldContainer[_tracking_pb2.RouteStop]
    vehicle_type: _common_pb2.VehicleType
    def __init__(self, start: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stops: _Optional[_Iterable[_Union[_tracking_pb2.RouteStop, _Mapping]]] = ..., vehicle_type: _Optional[_Union[_common_pb2.VehicleType, str]] = ...) -> None: ...

class PlanRouteResponse(_message.Message):
    __slots__ = ("stops", "total_distance_meters", "total_duration")
    STOPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    stops: _containers.RepeatedCompositeFieldContainer[_tracking_pb2.PlannedStop]
    total_distance_meters: float
    total_duration: _duration_pb2.Duration
    def __init__(self, stops: _Optional[_Iterable[_Union[_tracking_pb2.PlannedStop, _Mapping]]] = ..., total_distance_meters: _Optional[float] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
