"""Imports every generated module so the default descriptor pool knows every method."""

from delivery.location.v1 import location_service_pb2  # noqa: F401
from delivery.matching.v1 import matching_service_pb2  # noqa: F401
from delivery.order.v1 import (  # noqa: F401
    account_service_pb2,
    merchant_service_pb2,
    order_service_pb2,
)
from delivery.tracking.v1 import tracking_service_pb2  # noqa: F401
