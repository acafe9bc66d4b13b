import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OfferStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OFFER_STATUS_UNSPECIFIED: _ClassVar[OfferStatus]
    OFFER_STATUS_PENDING: _ClassVar[OfferStatus]
    OFFER_STATUS_ACCEPTED: _ClassVar[OfferStatus]
    OFFER_STATUS_DECLINED: _ClassVar[OfferStatus]
    OFFER_STATUS_EXPIRED: _ClassVar[OfferStatus]
    OFFER_STATUS_WITHDRAWN: _ClassVar[OfferStatus]

class DeclineReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECLINE_REASON_UNSPECIFIED: _ClassVar[DeclineReason]
    DECLINE_REASON_TOO_FAR: _ClassVar[DeclineReason]
    DECLINE_REASON_LOW_EARNINGS: _ClassVar[DeclineReason]
    DECLINE_REASON_VEHICLE_UNSUITABLE: _ClassVar[DeclineReason]
    DECLINE_REASON_TAKING_BREAK: _ClassVar[DeclineReason]
    DECLINE_REASON_TOO_BUSY: _ClassVar[DeclineReason]
    DECLINE_REASON_OTHER: _ClassVar[DeclineReason]

class DispatchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISPATCH_STATE_UNSPECIFIED: _ClassVar[DispatchState]
    DISPATCH_STATE_QUEUED: _ClassVar[DispatchState]
    DISPATCH_STATE_SEARCHING: _ClassVar[DispatchState]
    DISPATCH_STATE_OFFERED: _ClassVar[DispatchState]
    DISPATCH_STATE_ASSIGNED: _ClassVar[DispatchState]
    DISPATCH_STATE_WAITING_FOR_RETRY: _ClassVar[DispatchState]
    DISPATCH_STATE_EXHAUSTED: _ClassVar[DispatchState]
    DISPATCH_STATE_CANCELLED: _ClassVar[DispatchState]

class BreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKER_STATE_UNSPECIFIED: _ClassVar[BreakerState]
    BREAKER_STATE_CLOSED: _ClassVar[BreakerState]
    BREAKER_STATE_OPEN: _ClassVar[BreakerState]
    BREAKER_STATE_HALF_OPEN: _ClassVar[BreakerState]
OFFER_STATUS_UNSPECIFIED: OfferStatus
OFFER_STATUS_PENDING: OfferStatus
OFFER_STATUS_ACCEPTED: OfferStatus
OFFER_STATUS_DECLINED: OfferStatus
OFFER_STATUS_EXPIRED: OfferStatus
OFFER_STATUS_WITHDRAWN: OfferStatus
DECLINE_REASON_UNSPECIFIED: DeclineReason
DECLINE_REASON_TOO_FAR: DeclineReason
DECLINE_REASON_LOW_EARNINGS: DeclineReason
DECLINE_REASON_VEHICLE_UNSUITABLE: DeclineReason
DECLINE_REASON_TAKING_BREAK: DeclineReason
DECLINE_REASON_TOO_BUSY: DeclineReason
DECLINE_REASON_OTHER: DeclineReason
DISPATCH_STATE_UNSPECIFIED: DispatchState
DISPATCH_STATE_QUEUED: DispatchState
DISPATCH_STATE_SEARCHING: DispatchState
DISPATCH_STATE_OFFERED: DispatchState
DISPATCH_STATE_ASSIGNED: DispatchState
DISPATCH_STATE_WAITING_FOR_RETRY: DispatchState
DISPATCH_STATE_EXHAUSTED: DispatchState
DISPATCH_STATE_CANCELLED: DispatchState
BREAKER_STATE_UNSPECIFIED: BreakerState
BREAKER_STATE_CLOSED: BreakerState
BREAKER_STATE_OPEN: BreakerState
BREAKER_STATE_HALF_OPEN: BreakerState

class ScoreFactor(_message.Message):
    __slots__ = ("name", "value", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    weight: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("offer_id", "order_id", "driver_id", "status", "attempt", "pickup_location", "dropoff_location", "pickup_address", "estimated_pickup_distance_meters", "earnings", "score", "factors", "stacked", "offer_time", "expire_time", "respond_time", "merchant_name", "estimated_ready_time")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PICKUP_LOCATION_FIELD_NUMBER: _ClassVar[int]
    DROPOFF_LOCATION_FIELD_NUMBER: _ClassVar[int]
    PICKUP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_PICKUP_DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    EARNINGS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    STACKED_FIELD_NUMBER: _ClassVar[int]
    OFFER_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESPOND_TIME_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_NAME_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_READY_TIME_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    order_id: str
    driver_id: str
    status: OfferStatus
    attempt: int
    pickup_location: _common_pb2.LatLng
    dropoff_location: _common_pb2.LatLng
    pickup_address: str
    estimated_pickup_distance_meters: float
    earnings: _common_pb2.Money
    score: float
    factors: _containers.RepeatedCompositeFieldContainer[ScoreFactor]
    stacked: bool
    offer_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    respond_time: _timestamp_pb2.Timestamp
    merchant_name: str
    estimated_ready_time: _timestamp_pb2.Timestamp
    def __init__(self, offer_id: _Optional[str] = ..., order_id: _Optional[str] = ..., driver_id: _Optional[str] = ..., status: _Optional[_Union[OfferStatus, str]] = ..., attempt: _Optional[int] = ..., pickup_location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., dropoff_location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., pickup_address: _Optional[str] = ..., estimated_pickup_distance_meters: _Optional[float] = ..., earnings: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., score: _Optional[float] = ..., factors: _Optional[_Iterable[_Union[ScoreFactor, _Mapping]]] = ..., stacked: _Optional[bool] = ..., offer_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., respond_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., merchant_name: _Optional[str] = ..., estimated_ready_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BreakerStatus(_message.Message):
    __slots__ = ("name", "state", "failure_count", "call_count", "open_until_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CALL_COUNT_FIELD_NUMBER: _ClassVar[int]
    OPEN_UNTIL_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: BreakerState
    failure_count: int
    call_count: int
    open_until_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[BreakerState, str]] = ..., failure_count: _Optional[int] = ..., call_count: _Optional[int] = ..., open_until_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DispatchStatus(_message.Message):
    __slots__ = ("order_id", "state", "attempts", "max_attempts", "current_offer", "offers", "next_attempt_time", "breakers", "driver_id", "update_time")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_OFFER_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    state: DispatchState
    attempts: int
    max_attempts: int
    current_offer: Offer
    offers: _containers.RepeatedCompositeFieldContainer[Offer]
    next_attempt_time: _timestamp_pb2.Timestamp
    breakers: _containers.RepeatedCompositeFieldContainer[BreakerStatus]
    driver_id: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, order_id: _Optional[str] = ..., state: _Optional[_Union[DispatchState, str]] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., current_offer: _Optional[_Union[Offer, _Mapping]] = ..., offers: _Optional[_Iterable[_Union[Offer, _Mapping]]] = ..., next_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., breakers: _Optional[_Iterable[_Union[BreakerStatus, _Mapping]]] = ..., driver_id: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OfferClosed(_message.Message):
    __slots__ = ("offer_id", "status")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    status: OfferStatus
    def __init__(self, offer_id: _Optional[str] = ..., status: _Optional[_Union[OfferStatus, str]] = ...) -> None: ...
