import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from delivery.order.v1 import merchant_pb2 as _merchant_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateMerchantRequest(_message.Message):
    __slots__ = ("request_id", "name", "description", "address", "location", "delivery_radius_meters", "average_prep_duration", "currency_code", "handoff_policy", "owner_user_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_RADIUS_METERS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_PREP_DURATION_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_POLICY_FIELD_NUMBER: _ClassVar[int]
    OWNER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    name: str
    description: str
    address: str
    location: _common_pb2.LatLng
    delivery_radius_meters: int
    average_prep_duration: _duration_pb2.Duration
    currency_code: str
    handoff_policy: _merchant_pb2.HandoffPolicy
    owner_user_id: str
    def __init__(self, request_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., address: _Optional[str] = ..., location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., delivery_radius_meters: _Optional[int] = ..., average_prep_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., currency_code: _Optional[str] = ..., handoff_policy: _Optional[_Union[_merchant_pb2.HandoffPolicy, str]] = ..., owner_user_id: _Optional[str] = ...) -> None: ...

class CreateMerchantResponse(_message.Message):
    __slots__ = ("merchant",)
    MERCHANT_FIELD_NUMBER: _ClassVar[int]
    merchant: _merchant_pb2.Merchant
    def __init__(self, merchant: _Optional[_Union[_merchant_pb2.Merchant, _Mapping]] = ...) -> None: ...

class GetMerchantRequest(_message.Message):
    __slots__ = ("merchant_id",)
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    merchant_id: str
    def __init__(self, merchant_id: _Optional[str] = ...) -> None: ...

class GetMerchantResponse(_message.Message):
    __slots__ = ("merchant",)
    MERCHANT_FIELD_NUMBER: _ClassVar[int]
    merchant: _merchant_pb2.Merchant
    def __init__(self, merchant: _Optional[_Union[_merchant_pb2.Merchant, _Mapping]] = ...) -> None: ...

class ListMerchantsRequest(_message.Message):
    __slots__ = ("location", "radius_meters", "open_only", "page_size", "page_token")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    RADIUS_METERS_FIELD_NUMBER: _ClassVar[int]
    OPEN_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    location: _common_pb2.LatLng
    radius_meters: float
    open_only: bool
    page_size: int
    page_token: str
    def __init__(self, location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., radius_meters: _Optional[float] = ..., open_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMerchantsResponse(_message.Message):
    __slots__ = ("merchants", "next_page_token")
    MERCHANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    merchants: _containers.RepeatedCompositeFieldContainer[_merchant_pb2.NearbyMerchant]
    next_page_token: str
    def __init__(self, merchants: _Optional[_Iterable[_Union[_merchant_pb2.NearbyMerchant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetMerchantOpenRequest(_message.Message):
    __slots__ = ("request_id", "merchant_id", "open")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    merchant_id: str
    open: bool
    def __init__(self, request_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., open: _Optional[bool] = ...) -> None: ...

class SetMerchantOpenResponse(_message.Message):
    __slots__ = ("merchant",)
    MERCHANT_FIELD_NUMBER: _ClassVar[int]
    merchant: _merchant_pb2.Merchant
    def __init__(self, merchant: _Optional[_Union[_merchant_pb2.Merchant, _Mapping]] = ...) -> None: ...

class UpsertMenuItemRequest(_message.Message):
    __slots__ = ("request_id", "merchant_id", "menu_item")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    MENU_ITEM_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    merchant_id: str
    menu_item: _merchant_pb2.MenuItem
    def __init__(self, request_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., menu_item: _Optional[_Union[_merchant_pb2.MenuItem, _Mapping]] = ...) -> None: ...

class UpsertMenuItemResponse(_message.Message):
    __slots__ = ("menu_item",)
    MENU_ITEM_FIELD_NUMBER: _ClassVar[int]
    menu_item: _merchant_pb2.MenuItem
    def __init__(self, menu_item: _Optional[_Union[_merchant_pb2.MenuItem, _Mapping]] = ...) -> None: ...

class ListMenuItemsRequest(_message.Message):
    __slots__ = ("merchant_id", "available_only", "page_size", "page_token")
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    merchant_id: str
    available_only: bool
    page_size: int
    page_token: str
    def __init__(self, merchant_id: _Optional[str] = ..., available_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMenuItemsResponse(_message.Message):
    __slots__ = ("menu_items", "next_page_token")
    MENU_ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    menu_items: _containers.RepeatedCompositeFieldContainer[_merchant_pb2.MenuItem]
    next_page_token: str
    def __init__(self, menu_items: _Optional[_Iterable[_Union[_merchant_pb2.MenuItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
