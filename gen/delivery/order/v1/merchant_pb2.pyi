import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HandoffPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HANDOFF_POLICY_UNSPECIFIED: _ClassVar[HandoffPolicy]
    HANDOFF_POLICY_PIN: _ClassVar[HandoffPolicy]
    HANDOFF_POLICY_PHOTO: _ClassVar[HandoffPolicy]
    HANDOFF_POLICY_PIN_OR_PHOTO: _ClassVar[HandoffPolicy]
HANDOFF_POLICY_UNSPECIFIED: HandoffPolicy
HANDOFF_POLICY_PIN: HandoffPolicy
HANDOFF_POLICY_PHOTO: HandoffPolicy
HANDOFF_POLICY_PIN_OR_PHOTO: HandoffPolicy

class Merchant(_message.Message):
    __slots__ = ("merchant_id", "owner_user_id", "name", "description", "address", "location", "open", "delivery_radius_meters", "average_prep_duration", "currency_code", "handoff_policy", "rating_average", "rating_count", "create_time", "update_time", "prep_observation_count", "prep_deviation_duration")
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_RADIUS_METERS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_PREP_DURATION_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_POLICY_FIELD_NUMBER: _ClassVar[int]
    RATING_AVERAGE_FIELD_NUMBER: _ClassVar[int]
    RATING_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PREP_OBSERVATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    PREP_DEVIATION_DURATION_FIELD_NUMBER: _ClassVar[int]
    merchant_id: str
    owner_user_id: str
    name: str
    description: str
    address: str
    location: _common_pb2.LatLng
    open: bool
    delivery_radius_meters: int
    average_prep_duration: _duration_pb2.Duration
    currency_code: str
    handoff_policy: HandoffPolicy
    rating_average: float
    rating_count: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    prep_observation_count: int
    prep_deviation_duration: _duration_pb2.Duration
    def __init__(self, merchant_id: _Optional[str] = ..., owner_user_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., address: _Optional[str] = ..., location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., open: _Optional[bool] = ..., delivery_radius_meters: _Optional[int] = ..., average_prep_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., currency_code: _Optional[str] = ..., handoff_policy: _Optional[_Union[HandoffPolicy, str]] = ..., rating_average: _Optional[float] = ..., rating_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prep_observation_count: _Optional[int] = ..., prep_deviation_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class MenuItem(_message.Message):
    __slots__ = ("menu_item_id", "merchant_id", "name", "description", "price", "available", "option_groups", "update_time")
    MENU_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    OPTION_GROUPS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    menu_item_id: str
    merchant_id: str
    name: str
    description: str
    price: _common_pb2.Money
    available: bool
    option_groups: _containers.RepeatedCompositeFieldContainer[OptionGroup]
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, menu_item_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., price: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., available: _Optional[bool] = ..., option_groups: _Optional[_Iterable[_Union[OptionGroup, _Mapping]]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OptionGroup(_message.Message):
    __slots__ = ("option_group_id", "name", "min_select", "max_select", "options")
    OPTION_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_SELECT_FIELD_NUMBER: _ClassVar[int]
    MAX_SELECT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    option_group_id: str
    name: str
    min_select: int
    max_select: int
    options: _containers.RepeatedCompositeFieldContainer[Option]
    def __init__(self, option_group_id: _Optional[str] = ..., name: _Optional[str] = ..., min_select: _Optional[int] = ..., max_select: _Optional[int] = ..., options: _Optional[_Iterable[_Union[Option, _Mapping]]] = ...) -> None: ...

class Option(_message.Message):
    __slots__ = ("option_id", "name", "price_delta", "available")
    OPTION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_DELTA_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    option_id: str
    name: str
    price_delta: _common_pb2.Money
    available: bool
    def __init__(self, option_id: _Optional[str] = ..., name: _Optional[str] = ..., price_delta: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., available: _Optional[bool] = ...) -> None: ...

class NearbyMerchant(_message.Message):
    __slots__ = ("merchant", "distance_meters")
    MERCHANT_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    merchant: Merchant
    distance_meters: float
    def __init__(self, merchant: _Optional[_Union[Merchant, _Mapping]] = ..., distance_meters: _Optional[float] = ...) -> None: ...
