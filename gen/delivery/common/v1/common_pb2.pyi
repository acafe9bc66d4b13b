from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_CUSTOMER: _ClassVar[Role]
    ROLE_DRIVER: _ClassVar[Role]
    ROLE_MERCHANT: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]

class VehicleType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VEHICLE_TYPE_UNSPECIFIED: _ClassVar[VehicleType]
    VEHICLE_TYPE_BICYCLE: _ClassVar[VehicleType]
    VEHICLE_TYPE_MOTORCYCLE: _ClassVar[VehicleType]
    VEHICLE_TYPE_CAR: _ClassVar[VehicleType]
    VEHICLE_TYPE_VAN: _ClassVar[VehicleType]

class DriverStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIVER_STATUS_UNSPECIFIED: _ClassVar[DriverStatus]
    DRIVER_STATUS_OFFLINE: _ClassVar[DriverStatus]
    DRIVER_STATUS_AVAILABLE: _ClassVar[DriverStatus]
    DRIVER_STATUS_BUSY: _ClassVar[DriverStatus]

class OrderStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATUS_UNSPECIFIED: _ClassVar[OrderStatus]
    ORDER_STATUS_PENDING: _ClassVar[OrderStatus]
    ORDER_STATUS_CONFIRMED: _ClassVar[OrderStatus]
    ORDER_STATUS_PREPARING: _ClassVar[OrderStatus]
    ORDER_STATUS_READY_FOR_PICKUP: _ClassVar[OrderStatus]
    ORDER_STATUS_PICKED_UP: _ClassVar[OrderStatus]
    ORDER_STATUS_DELIVERED: _ClassVar[OrderStatus]
    ORDER_STATUS_CANCELLED: _ClassVar[OrderStatus]
ROLE_UNSPECIFIED: Role
ROLE_CUSTOMER: Role
ROLE_DRIVER: Role
ROLE_MERCHANT: Role
ROLE_ADMIN: Role
VEHICLE_TYPE_UNSPECIFIED: VehicleType
VEHICLE_TYPE_BICYCLE: VehicleType
VEHICLE_TYPE_MOTORCYCLE: VehicleType
VEHICLE_TYPE_CAR: VehicleType
VEHICLE_TYPE_VAN: VehicleType
DRIVER_STATUS_UNSPECIFIED: DriverStatus
DRIVER_STATUS_OFFLINE: DriverStatus
DRIVER_STATUS_AVAILABLE: DriverStatus
DRIVER_STATUS_BUSY: DriverStatus
ORDER_STATUS_UNSPECIFIED: OrderStatus
ORDER_STATUS_PENDING: OrderStatus
ORDER_STATUS_CONFIRMED: OrderStatus
ORDER_STATUS_PREPARING: OrderStatus
ORDER_STATUS_READY_FOR_PICKUP: OrderStatus
ORDER_STATUS_PICKED_UP: OrderStatus
ORDER_STATUS_DELIVERED: OrderStatus
ORDER_STATUS_CANCELLED: OrderStatus

class LatLng(_message.Message):
    __slots__ = ("latitude", "longitude")
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    latitude: float
    longitude: float
    def __init__(self, latitude: _Optional[float] = ..., longitude: _Optional[float] = ...) -> None: ...

class Money(_message.Message):
    __slots__ = ("currency_code", "amount_minor")
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    currency_code: str
    amount_minor: int
    def __init__(self, currency_code: _Optional[str] = ..., amount_minor: _Optional[int] = ...) -> None: ...
