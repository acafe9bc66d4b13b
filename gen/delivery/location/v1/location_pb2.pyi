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

class FixDropReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIX_DROP_REASON_UNSPECIFIED: _ClassVar[FixDropReason]
    FIX_DROP_REASON_OUT_OF_RANGE: _ClassVar[FixDropReason]
    FIX_DROP_REASON_POOR_ACCURACY: _ClassVar[FixDropReason]
    FIX_DROP_REASON_FUTURE_TIMESTAMP: _ClassVar[FixDropReason]
    FIX_DROP_REASON_STALE_TIMESTAMP: _ClassVar[FixDropReason]
    FIX_DROP_REASON_DUPLICATE: _ClassVar[FixDropReason]
    FIX_DROP_REASON_OUT_OF_ORDER: _ClassVar[FixDropReason]
    FIX_DROP_REASON_IMPOSSIBLE_SPEED: _ClassVar[FixDropReason]

class Presence(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESENCE_UNSPECIFIED: _ClassVar[Presence]
    PRESENCE_ONLINE: _ClassVar[Presence]
    PRESENCE_SILENT: _ClassVar[Presence]
    PRESENCE_STREAM_CLOSED: _ClassVar[Presence]
    PRESENCE_OFFLINE: _ClassVar[Presence]
FIX_DROP_REASON_UNSPECIFIED: FixDropReason
FIX_DROP_REASON_OUT_OF_RANGE: FixDropReason
FIX_DROP_REASON_POOR_ACCURACY: FixDropReason
FIX_DROP_REASON_FUTURE_TIMESTAMP: FixDropReason
FIX_DROP_REASON_STALE_TIMESTAMP: FixDropReason
FIX_DROP_REASON_DUPLICATE: FixDropReason
FIX_DROP_REASON_OUT_OF_ORDER: FixDropReason
FIX_DROP_REASON_IMPOSSIBLE_SPEED: FixDropReason
PRESENCE_UNSPECIFIED: Presence
PRESENCE_ONLINE: Presence
PRESENCE_SILENT: Presence
PRESENCE_STREAM_CLOSED: Presence
PRESENCE_OFFLINE: Presence

class LocationFix(_message.Message):
    __slots__ = ("position", "accuracy_meters", "heading_degrees", "speed_mps", "device_time", "sequence")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_METERS_FIELD_NUMBER: _ClassVar[int]
    HEADING_DEGREES_FIELD_NUMBER: _ClassVar[int]
    SPEED_MPS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    position: _common_pb2.LatLng
    accuracy_meters: float
    heading_degrees: float
    speed_mps: float
    device_time: _timestamp_pb2.Timestamp
    sequence: int
    def __init__(self, position: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., accuracy_meters: _Optional[float] = ..., heading_degrees: _Optional[float] = ..., speed_mps: _Optional[float] = ..., device_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class DroppedFix(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: FixDropReason
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[_Union[FixDropReason, str]] = ...) -> None: ...

class DriverState(_message.Message):
    __slots__ = ("driver_id", "status", "vehicle_type", "update_time")
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    driver_id: str
    status: _common_pb2.DriverStatus
    vehicle_type: _common_pb2.VehicleType
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, driver_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.DriverStatus, str]] = ..., vehicle_type: _Optional[_Union[_common_pb2.VehicleType, str]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class NearbyDriver(_message.Message):
    __slots__ = ("driver_id", "position", "distance_meters", "vehicle_type", "fix_time", "position_age_duration", "status")
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FIX_TIME_FIELD_NUMBER: _ClassVar[int]
    POSITION_AGE_DURATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    driver_id: str
    position: _common_pb2.LatLng
    distance_meters: float
    vehicle_type: _common_pb2.VehicleType
    fix_time: _timestamp_pb2.Timestamp
    position_age_duration: _duration_pb2.Duration
    status: _common_pb2.DriverStatus
    def __init__(self, driver_id: _Optional[str] = ..., position: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., distance_meters: _Optional[float] = ..., vehicle_type: _Optional[_Union[_common_pb2.VehicleType, str]] = ..., fix_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., position_age_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.DriverStatus, str]] = ...) -> None: ...

class DriverLocation(_message.Message):
    __slots__ = ("driver_id", "position", "heading_degrees", "speed_mps", "accuracy_meters", "fix_time", "position_age_duration", "presence", "status")
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    HEADING_DEGREES_FIELD_NUMBER: _ClassVar[int]
    SPEED_MPS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_METERS_FIELD_NUMBER: _ClassVar[int]
    FIX_TIME_FIELD_NUMBER: _ClassVar[int]
    POSITION_AGE_DURATION_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    driver_id: str
    position: _common_pb2.LatLng
    heading_degrees: float
    speed_mps: float
    accuracy_meters: float
    fix_time: _timestamp_pb2.Timestamp
    position_age_duration: _duration_pb2.Duration
    presence: Presence
    status: _common_pb2.DriverStatus
    def __init__(self, driver_id: _Optional[str] = ..., position: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., heading_degrees: _Optional[float] = ..., speed_mps: _Optional[float] = ..., accuracy_meters: _Optional[float] = ..., fix_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., position_age_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., presence: _Optional[_Union[Presence, str]] = ..., status: _Optional[_Union[_common_pb2.DriverStatus, str]] = ...) -> None: ...

class FleetCourier(_message.Message):
    __slots__ = ("driver_id", "position", "status", "vehicle_type", "fix_time", "position_age_duration")
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FIX_TIME_FIELD_NUMBER: _ClassVar[int]
    POSITION_AGE_DURATION_FIELD_NUMBER: _ClassVar[int]
    driver_id: str
    position: _common_pb2.LatLng
    status: _common_pb2.DriverStatus
    vehicle_type: _common_pb2.VehicleType
    fix_time: _timestamp_pb2.Timestamp
    position_age_duration: _duration_pb2.Duration
    def __init__(self, driver_id: _Optional[str] = ..., position: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.DriverStatus, str]] = ..., vehicle_type: _Optional[_Union[_common_pb2.VehicleType, str]] = ..., fix_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., position_age_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
