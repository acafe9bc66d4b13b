"""Proto <-> domain mapping for order_svc."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from delivery.common.v1 import common_pb2
from delivery.order.v1 import account_pb2
from mesh.auth import Role
from order_svc.domain.accounts import User, VehicleType

ROLE_FROM_PROTO = {
    common_pb2.ROLE_CUSTOMER: Role.CUSTOMER,
    common_pb2.ROLE_DRIVER: Role.DRIVER,
    common_pb2.ROLE_MERCHANT: Role.MERCHANT,
    common_pb2.ROLE_ADMIN: Role.ADMIN,
}
ROLE_TO_PROTO = {role: value for value, role in ROLE_FROM_PROTO.items()}

VEHICLE_FROM_PROTO = {
    common_pb2.VEHICLE_TYPE_BICYCLE: VehicleType.BICYCLE,
    common_pb2.VEHICLE_TYPE_MOTORCYCLE: VehicleType.MOTORCYCLE,
    common_pb2.VEHICLE_TYPE_CAR: VehicleType.CAR,
    common_pb2.VEHICLE_TYPE_VAN: VehicleType.VAN,
}


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for ``value`` (``None`` stays unset)."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def user_to_proto(user: User) -> account_pb2.User:
    """The public view of an account."""
    return account_pb2.User(
        user_id=user.id,
        email=user.email,
        name=user.name,
        phone=user.phone,
        role=ROLE_TO_PROTO[user.role],
        create_time=timestamp(user.created_at),
    )
