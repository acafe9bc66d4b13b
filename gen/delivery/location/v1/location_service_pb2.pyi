import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from delivery.location.v1 import location_pb2 as _location_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamLocationRequest(_message.Message):
    __slots__ = ("fix",)
    FIX_FIELD_NUMBER: _ClassVar[int]
    fix: _location_pb2.LocationFix
    def __init__(self, fix: _Optional[_Union[_location_pb2.LocationFix, _Mapping]] = ...) -> None: ...

class StreamLocationResponse(_message.Message):
    __slots__ = ("server_time", "acked_sequence", "next_interval_duration", "accepted_count", "dropped_count", "last_drop_reason")
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    NEXT_INTERVAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    server_time: _timestamp_pb2.Timestamp
    acked_sequence: int
    next_interval_duration: _duration_pb2.Duration
    accepted_count: int
    dropped_count: int
    last_drop_reason: _location_pb2.FixDropReason
    def __init__(self, server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., acked_sequence: _Optional[int] = ..., next_interval_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., accepted_count: _Optional[int] = ..., dropped_count: _Optional[int] = ..., last_drop_reason: _Optional[_Union[_location_pb2.FixDropReason, str]] = ...) -> None: ...

class ReportLocationsRequest(_message.Message):
    __slots__ = ("request_id", "fixes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FIXES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    fixes: _containers.RepeatedCompositeFieldContainer[_location_pb2.LocationFix]
    def __init__(self, request_id: _Optional[str] = ..., fixes: _Optional[_Iterable[_Union[_location_pb2.LocationFix, _Mapping]]] = ...) -> None: ...

class ReportLocationsResponse(_message.Message):
    __slots__ = ("accepted_count", "backfilled_count", "dropped", "next_interval_duration")
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    BACKFILLED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    NEXT_INTERVAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    accepted_count: int
    backfilled_count: int
    dropped: _containers.RepeatedCompositeFieldContainer[_location_pb2.DroppedFix]
    next_interval_duration: _duration_pb2.Duration
    def __init__(self, accepted_count: _Optional[int] = ..., backfilled_count: _Optional[int] = ..., dropped: _Optional[_Iterable[_Union[_location_pb2.DroppedFix, _Mapping]]] = ..., next_interval_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SetAvailabilityRequest(_message.Message):
    __slots__ = ("request_id", "status", "vehicle_type", "driver_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: _common_pb2.DriverStatus
    vehicle_type: _common_pb2.VehicleType
    driver_id: str
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.DriverStatus, str]] = ..., vehicle_type: _Optional[_Union[_common_pb2.VehicleType, str]] = ..., driver_id: _Optional[str] = ...) -> None: ...

class SetAvailabilityResponse(_message.Message):
    __slots__ = ("driver_state",)
    DRIVER_STATE_FIELD_NUMBER: _ClassVar[int]
    driver_state: _location_pb2.DriverState
    def __init__(self, driver_state: _Optional[_Union[_location_pb2.DriverState, _Mapping]] = ...) -> None: ...

class FindNearbyDriversRequest(_message.Message):
    __slots__ = ("center", "radius_meters", "limit", "vehicle_type", "include_busy")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    RADIUS_METERS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BUSY_FIELD_NUMBER: _ClassVar[int]
    center: _common_pb2.LatLng
    radius_meters: float
    limit: int
    vehicle_type: _common_pb2.VehicleType
    include_busy: bool
    def __init__(self, center: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., radius_meters: _Optional[float] = ..., limit: _Optional[int] = ..., vehicle_type: _Optional[_Union[_common_pb2.VehicleType, str]] = ..., include_busy: _Optional[bool] = ...) -> None: ...

class FindNearbyDriversResponse(_message.Message):
    __slots__ = ("drivers",)
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    drivers: _containers.RepeatedCompositeFieldContainer[_location_pb2.NearbyDriver]
    def __init__(self, drivers: _Optional[_Iterable[_Union[_location_pb2.NearbyDriver, _Mapping]]] = ...) -> None: ...

class GetDriverLocationRequest(_message.Message):
    __slots__ = ("driver_id",)
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    driver_id: str
    def __init__(self, driver_id: _Optional[str] = ...) -> None: ...

class GetDriverLocationResponse(_message.Message):
    __slots__ = ("location",)
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    location: _location_pb2.DriverLocation
    def __init__(self, location: _Optional[_Union[_location_pb2.DriverLocation, _Mapping]] = ...) -> None: ...

class WatchDriverLocationRequest(_message.Message):
    __slots__ = ("driver_id", "min_interval_duration")
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    driver_id: str
    min_interval_duration: _duration_pb2.Duration
    def __init__(self, driver_id: _Optional[str] = ..., min_interval_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchDriverLocationResponse(_message.Message):
    __slots__ = ("location",)
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    location: _location_pb2.DriverLocation
    def __init__(self, location: _Optional[_Union[_location_pb2.DriverLocation, _Mapping]] = ...) -> None: ...

class FollowDriversRequest(_message.Message):
    __slots__ = ("follow_driver_ids", "unfollow_driver_ids")
    FOLLOW_DRIVER_IDS_FIELD_NUMBER: _ClassVar[int]
    UNFOLLOW_DRIVER_IDS_FIELD_NUMBER: _ClassVar[int]
    follow_driver_ids: _containers.RepeatedScalarFieldContainer[str]
    unfollow_driver_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, follow_driver_ids: _Optional[_Iterable[str]] = ..., unfollow_driver_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class FollowDriversResponse(_message.Message):
    __slots__ = ("locations", "unknown_driver_ids")
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_DRIVER_IDS_FIELD_NUMBER: _ClassVar[int]
    locations: _containers.RepeatedCompositeFieldContainer[_location_pb2.DriverLocation]
    unknown_driver_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, locations: _Optional[_Iterable[_Union[_location_pb2.DriverLocation, _Mapping]]] = ..., unknown_driver_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFleetRequest(_message.Message):
    __slots__ = ("south_west", "north_east", "max_couriers")
    SOUTH_WEST_FIELD_NUMBER: _ClassVar[int]
    NORTH_EAST_FIELD_NUMBER: _ClassVar[int]
    MAX_COURIERS_FIELD_NUMBER: _ClassVar[int]
    south_west: _common_pb2.LatLng
    north_east: _common_pb2.LatLng
    max_couriers: int
    def __init__(self, south_west: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., north_east: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., max_couriers: _Optional[int] = ...) -> None: ...

class GetFleetResponse(_message.Message):
    __slots__ = ("couriers", "truncated")
    COURIERS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    couriers: _containers.RepeatedCompositeFieldContainer[_location_pb2.FleetCourier]
    truncated: bool
    def __init__(self, couriers: _Optional[_Iterable[_Union[_location_pb2.FleetCourier, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...
