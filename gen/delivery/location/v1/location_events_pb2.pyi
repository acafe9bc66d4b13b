import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArrivalEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARRIVAL_EVENT_TYPE_UNSPECIFIED: _ClassVar[ArrivalEventType]
    ARRIVAL_EVENT_TYPE_ARRIVED_AT_MERCHANT: _ClassVar[ArrivalEventType]
    ARRIVAL_EVENT_TYPE_ARRIVED_AT_CUSTOMER: _ClassVar[ArrivalEventType]
    ARRIVAL_EVENT_TYPE_APPROACHING_CUSTOMER: _ClassVar[ArrivalEventType]
ARRIVAL_EVENT_TYPE_UNSPECIFIED: ArrivalEventType
ARRIVAL_EVENT_TYPE_ARRIVED_AT_MERCHANT: ArrivalEventType
ARRIVAL_EVENT_TYPE_ARRIVED_AT_CUSTOMER: ArrivalEventType
ARRIVAL_EVENT_TYPE_APPROACHING_CUSTOMER: ArrivalEventType

class DriverArrivalEvent(_message.Message):
    __slots__ = ("event_id", "driver_id", "order_id", "type", "position", "occur_time")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    driver_id: str
    order_id: str
    type: ArrivalEventType
    position: _common_pb2.LatLng
    occur_time: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., driver_id: _Optional[str] = ..., order_id: _Optional[str] = ..., type: _Optional[_Union[ArrivalEventType, str]] = ..., position: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
