import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from delivery.order.v1 import order_pb2 as _order_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateOrderRequest(_message.Message):
    __slots__ = ("request_id", "merchant_id", "items", "delivery_address", "delivery_location", "tip", "note")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_LOCATION_FIELD_NUMBER: _ClassVar[int]
    TIP_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    merchant_id: str
    items: _containers.RepeatedCompositeFieldContainer[_order_pb2.OrderItemInput]
    delivery_address: str
    delivery_location: _common_pb2.LatLng
    tip: _common_pb2.Money
    note: str
    def __init__(self, request_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_order_pb2.OrderItemInput, _Mapping]]] = ..., delivery_address: _Optional[str] = ..., delivery_location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., tip: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class CreateOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "statuses")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    statuses: _containers.RepeatedScalarFieldContainer[_common_pb2.OrderStatus]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[_common_pb2.OrderStatus, str]]] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("orders", "next_page_token")
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[_order_pb2.Order]
    next_page_token: str
    def __init__(self, orders: _Optional[_Iterable[_Union[_order_pb2.Order, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ConfirmOrderRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "expected_version", "estimated_prep_duration")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_PREP_DURATION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    expected_version: int
    estimated_prep_duration: _duration_pb2.Duration
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., expected_version: _Optional[int] = ..., estimated_prep_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ConfirmOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class RejectOrderRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "reason", "note", "expected_version")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    reason: _order_pb2.CancelReason
    note: str
    expected_version: int
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., reason: _Optional[_Union[_order_pb2.CancelReason, str]] = ..., note: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class RejectOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class StartPreparingRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "expected_version")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    expected_version: int
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class StartPreparingResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class MarkOrderReadyRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "expected_version")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    expected_version: int
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class MarkOrderReadyResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class AssignCourierRequest(_message.Message):
    __slots__ = ("order_id", "driver_id", "offer_id", "request_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    driver_id: str
    offer_id: str
    request_id: str
    def __init__(self, order_id: _Optional[str] = ..., driver_id: _Optional[str] = ..., offer_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AssignCourierResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class PickUpOrderRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "expected_version")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    expected_version: int
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class PickUpOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class CompleteDeliveryRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "pin", "proof_of_delivery", "expected_version")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    PROOF_OF_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    pin: str
    proof_of_delivery: _order_pb2.ProofOfDelivery
    expected_version: int
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., pin: _Optional[str] = ..., proof_of_delivery: _Optional[_Union[_order_pb2.ProofOfDelivery, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class CompleteDeliveryResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class CancelOrderRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "reason", "note", "expected_version")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    reason: _order_pb2.CancelReason
    note: str
    expected_version: int
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., reason: _Optional[_Union[_order_pb2.CancelReason, str]] = ..., note: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class CancelOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class ReportProblemRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "reason", "description")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    reason: _order_pb2.ProblemReason
    description: str
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., reason: _Optional[_Union[_order_pb2.ProblemReason, str]] = ..., description: _Optional[str] = ...) -> None: ...

class ReportProblemResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: _order_pb2.ProblemReport
    def __init__(self, report: _Optional[_Union[_order_pb2.ProblemReport, _Mapping]] = ...) -> None: ...

class RateOrderRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "target", "score", "comment")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    target: _order_pb2.RatingTarget
    score: int
    comment: str
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., target: _Optional[_Union[_order_pb2.RatingTarget, str]] = ..., score: _Optional[int] = ..., comment: _Optional[str] = ...) -> None: ...

class RateOrderResponse(_message.Message):
    __slots__ = ("rating",)
    RATING_FIELD_NUMBER: _ClassVar[int]
    rating: _order_pb2.Rating
    def __init__(self, rating: _Optional[_Union[_order_pb2.Rating, _Mapping]] = ...) -> None: ...

class ListNotificationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "unread_only")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UNREAD_ONLY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    unread_only: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., unread_only: _Optional[bool] = ...) -> None: ...

class ListNotificationsResponse(_message.Message):
    __slots__ = ("notifications", "next_page_token")
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    notifications: _containers.RepeatedCompositeFieldContainer[_order_pb2.Notification]
    next_page_token: str
    def __init__(self, notifications: _Optional[_Iterable[_Union[_order_pb2.Notification, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MarkNotificationsReadRequest(_message.Message):
    __slots__ = ("request_id", "notification_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    notification_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., notification_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MarkNotificationsReadResponse(_message.Message):
    __slots__ = ("marked_count",)
    MARKED_COUNT_FIELD_NUMBER: _ClassVar[int]
    marked_count: int
    def __init__(self, marked_count: _Optional[int] = ...) -> None: ...

class ListStuckOrdersRequest(_message.Message):
    __slots__ = ("stuck_duration", "page_size", "page_token")
    STUCK_DURATION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    stuck_duration: _duration_pb2.Duration
    page_size: int
    page_token: str
    def __init__(self, stuck_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListStuckOrdersResponse(_message.Message):
    __slots__ = ("stuck_orders", "next_page_token")
    STUCK_ORDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    stuck_orders: _containers.RepeatedCompositeFieldContainer[_order_pb2.StuckOrder]
    next_page_token: str
    def __init__(self, stuck_orders: _Optional[_Iterable[_Union[_order_pb2.StuckOrder, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReassignOrderRequest(_message.Message):
    __slots__ = ("order_id", "request_id", "reason", "new_driver_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NEW_DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    reason: str
    new_driver_id: str
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ..., reason: _Optional[str] = ..., new_driver_id: _Optional[str] = ...) -> None: ...

class ReassignOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class RunRetentionRequest(_message.Message):
    __slots__ = ("request_id", "dry_run")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    dry_run: bool
    def __init__(self, request_id: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class RunRetentionResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_order_pb2.RetentionResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_order_pb2.RetentionResult, _Mapping]]] = ...) -> None: ...
