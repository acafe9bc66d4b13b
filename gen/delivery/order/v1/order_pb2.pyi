import datetime

from delivery.common.v1 import common_pb2 as _common_pb2
from delivery.order.v1 import merchant_pb2 as _merchant_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CancelReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_REASON_UNSPECIFIED: _ClassVar[CancelReason]
    CANCEL_REASON_CUSTOMER_CHANGED_MIND: _ClassVar[CancelReason]
    CANCEL_REASON_CUSTOMER_MISTAKE: _ClassVar[CancelReason]
    CANCEL_REASON_TOO_LATE: _ClassVar[CancelReason]
    CANCEL_REASON_MERCHANT_CLOSED: _ClassVar[CancelReason]
    CANCEL_REASON_ITEM_UNAVAILABLE: _ClassVar[CancelReason]
    CANCEL_REASON_MERCHANT_TOO_BUSY: _ClassVar[CancelReason]
    CANCEL_REASON_NO_DRIVER_AVAILABLE: _ClassVar[CancelReason]
    CANCEL_REASON_CUSTOMER_UNREACHABLE: _ClassVar[CancelReason]
    CANCEL_REASON_ADDRESS_UNREACHABLE: _ClassVar[CancelReason]
    CANCEL_REASON_OPERATOR: _ClassVar[CancelReason]
    CANCEL_REASON_OTHER: _ClassVar[CancelReason]

class ProblemReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROBLEM_REASON_UNSPECIFIED: _ClassVar[ProblemReason]
    PROBLEM_REASON_ORDER_LATE: _ClassVar[ProblemReason]
    PROBLEM_REASON_MISSING_ITEMS: _ClassVar[ProblemReason]
    PROBLEM_REASON_WRONG_ITEMS: _ClassVar[ProblemReason]
    PROBLEM_REASON_DAMAGED: _ClassVar[ProblemReason]
    PROBLEM_REASON_NOT_DELIVERED: _ClassVar[ProblemReason]
    PROBLEM_REASON_ORDER_NOT_READY: _ClassVar[ProblemReason]
    PROBLEM_REASON_CUSTOMER_UNREACHABLE: _ClassVar[ProblemReason]
    PROBLEM_REASON_ADDRESS_NOT_FOUND: _ClassVar[ProblemReason]
    PROBLEM_REASON_COURIER_CANNOT_CONTINUE: _ClassVar[ProblemReason]
    PROBLEM_REASON_CONDUCT: _ClassVar[ProblemReason]
    PROBLEM_REASON_SAFETY: _ClassVar[ProblemReason]
    PROBLEM_REASON_OTHER: _ClassVar[ProblemReason]

class RatingTarget(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATING_TARGET_UNSPECIFIED: _ClassVar[RatingTarget]
    RATING_TARGET_DRIVER: _ClassVar[RatingTarget]
    RATING_TARGET_MERCHANT: _ClassVar[RatingTarget]
    RATING_TARGET_CUSTOMER: _ClassVar[RatingTarget]

class NotificationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOTIFICATION_TYPE_UNSPECIFIED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ORDER_PLACED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ORDER_CONFIRMED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ORDER_REJECTED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ORDER_PREPARING: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ORDER_READY_FOR_PICKUP: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_COURIER_ASSIGNED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_COURIER_UNASSIGNED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ARRIVED_AT_MERCHANT: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ORDER_PICKED_UP: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_DRIVER_APPROACHING: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ARRIVED_AT_CUSTOMER: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ORDER_DELIVERED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ORDER_CANCELLED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_NO_DRIVER_AVAILABLE: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_COURIER_HAS_ANOTHER_DROP: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_ETA_DELAYED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_PROBLEM_REPORTED: _ClassVar[NotificationType]
CANCEL_REASON_UNSPECIFIED: CancelReason
CANCEL_REASON_CUSTOMER_CHANGED_MIND: CancelReason
CANCEL_REASON_CUSTOMER_MISTAKE: CancelReason
CANCEL_REASON_TOO_LATE: CancelReason
CANCEL_REASON_MERCHANT_CLOSED: CancelReason
CANCEL_REASON_ITEM_UNAVAILABLE: CancelReason
CANCEL_REASON_MERCHANT_TOO_BUSY: CancelReason
CANCEL_REASON_NO_DRIVER_AVAILABLE: CancelReason
CANCEL_REASON_CUSTOMER_UNREACHABLE: CancelReason
CANCEL_REASON_ADDRESS_UNREACHABLE: CancelReason
CANCEL_REASON_OPERATOR: CancelReason
CANCEL_REASON_OTHER: CancelReason
PROBLEM_REASON_UNSPECIFIED: ProblemReason
PROBLEM_REASON_ORDER_LATE: ProblemReason
PROBLEM_REASON_MISSING_ITEMS: ProblemReason
PROBLEM_REASON_WRONG_ITEMS: ProblemReason
PROBLEM_REASON_DAMAGED: ProblemReason
PROBLEM_REASON_NOT_DELIVERED: ProblemReason
PROBLEM_REASON_ORDER_NOT_READY: ProblemReason
PROBLEM_REASON_CUSTOMER_UNREACHABLE: ProblemReason
PROBLEM_REASON_ADDRESS_NOT_FOUND: ProblemReason
PROBLEM_REASON_COURIER_CANNOT_CONTINUE: ProblemReason
PROBLEM_REASON_CONDUCT: ProblemReason
PROBLEM_REASON_SAFETY: ProblemReason
PROBLEM_REASON_OTHER: ProblemReason
RATING_TARGET_UNSPECIFIED: RatingTarget
RATING_TARGET_DRIVER: RatingTarget
RATING_TARGET_MERCHANT: RatingTarget
RATING_TARGET_CUSTOMER: RatingTarget
NOTIFICATION_TYPE_UNSPECIFIED: NotificationType
NOTIFICATION_TYPE_ORDER_PLACED: NotificationType
NOTIFICATION_TYPE_ORDER_CONFIRMED: NotificationType
NOTIFICATION_TYPE_ORDER_REJECTED: NotificationType
NOTIFICATION_TYPE_ORDER_PREPARING: NotificationType
NOTIFICATION_TYPE_ORDER_READY_FOR_PICKUP: NotificationType
NOTIFICATION_TYPE_COURIER_ASSIGNED: NotificationType
NOTIFICATION_TYPE_COURIER_UNASSIGNED: NotificationType
NOTIFICATION_TYPE_ARRIVED_AT_MERCHANT: NotificationType
NOTIFICATION_TYPE_ORDER_PICKED_UP: NotificationType
NOTIFICATION_TYPE_DRIVER_APPROACHING: NotificationType
NOTIFICATION_TYPE_ARRIVED_AT_CUSTOMER: NotificationType
NOTIFICATION_TYPE_ORDER_DELIVERED: NotificationType
NOTIFICATION_TYPE_ORDER_CANCELLED: NotificationType
NOTIFICATION_TYPE_NO_DRIVER_AVAILABLE: NotificationType
NOTIFICATION_TYPE_COURIER_HAS_ANOTHER_DROP: NotificationType
NOTIFICATION_TYPE_ETA_DELAYED: NotificationType
NOTIFICATION_TYPE_PROBLEM_REPORTED: NotificationType

class Order(_message.Message):
    __slots__ = ("order_id", "customer_id", "merchant_id", "driver_id", "status", "version", "items", "delivery_address", "delivery_location", "subtotal", "delivery_fee", "tip", "total", "delivery_pin", "handoff_policy", "estimated_prep_duration", "estimated_delivery_time", "create_time", "confirm_time", "ready_time", "pickup_time", "delivery_time", "cancel_time", "update_time", "cancellation", "note", "merchant_location")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_LOCATION_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FEE_FIELD_NUMBER: _ClassVar[int]
    TIP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PIN_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_POLICY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_PREP_DURATION_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_DELIVERY_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_TIME_FIELD_NUMBER: _ClassVar[int]
    READY_TIME_FIELD_NUMBER: _ClassVar[int]
    PICKUP_TIME_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_TIME_FIELD_NUMBER: _ClassVar[int]
    CANCEL_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CANCELLATION_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    merchant_id: str
    driver_id: str
    status: _common_pb2.OrderStatus
    version: int
    items: _containers.RepeatedCompositeFieldContainer[OrderItem]
    delivery_address: str
    delivery_location: _common_pb2.LatLng
    subtotal: _common_pb2.Money
    delivery_fee: _common_pb2.Money
    tip: _common_pb2.Money
    total: _common_pb2.Money
    delivery_pin: str
    handoff_policy: _merchant_pb2.HandoffPolicy
    estimated_prep_duration: _duration_pb2.Duration
    estimated_delivery_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    confirm_time: _timestamp_pb2.Timestamp
    ready_time: _timestamp_pb2.Timestamp
    pickup_time: _timestamp_pb2.Timestamp
    delivery_time: _timestamp_pb2.Timestamp
    cancel_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    cancellation: CancellationInfo
    note: str
    merchant_location: _common_pb2.LatLng
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., driver_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.OrderStatus, str]] = ..., version: _Optional[int] = ..., items: _Optional[_Iterable[_Union[OrderItem, _Mapping]]] = ..., delivery_address: _Optional[str] = ..., delivery_location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., subtotal: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., delivery_fee: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., tip: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., total: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., delivery_pin: _Optional[str] = ..., handoff_policy: _Optional[_Union[_merchant_pb2.HandoffPolicy, str]] = ..., estimated_prep_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., estimated_delivery_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., confirm_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pickup_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delivery_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cancel_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cancellation: _Optional[_Union[CancellationInfo, _Mapping]] = ..., note: _Optional[str] = ..., merchant_location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ...) -> None: ...

class OrderItem(_message.Message):
    __slots__ = ("menu_item_id", "name", "quantity", "unit_price", "options", "line_total", "note")
    MENU_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    LINE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    menu_item_id: str
    name: str
    quantity: int
    unit_price: _common_pb2.Money
    options: _containers.RepeatedCompositeFieldContainer[SelectedOption]
    line_total: _common_pb2.Money
    note: str
    def __init__(self, menu_item_id: _Optional[str] = ..., name: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., options: _Optional[_Iterable[_Union[SelectedOption, _Mapping]]] = ..., line_total: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class SelectedOption(_message.Message):
    __slots__ = ("option_group_id", "option_id", "name", "price_delta")
    OPTION_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    OPTION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_DELTA_FIELD_NUMBER: _ClassVar[int]
    option_group_id: str
    option_id: str
    name: str
    price_delta: _common_pb2.Money
    def __init__(self, option_group_id: _Optional[str] = ..., option_id: _Optional[str] = ..., name: _Optional[str] = ..., price_delta: _Optional[_Union[_common_pb2.Money, _Mapping]] = ...) -> None: ...

class OrderItemInput(_message.Message):
    __slots__ = ("menu_item_id", "quantity", "options", "note")
    MENU_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    menu_item_id: str
    quantity: int
    options: _containers.RepeatedCompositeFieldContainer[OptionChoice]
    note: str
    def __init__(self, menu_item_id: _Optional[str] = ..., quantity: _Optional[int] = ..., options: _Optional[_Iterable[_Union[OptionChoice, _Mapping]]] = ..., note: _Optional[str] = ...) -> None: ...

class OptionChoice(_message.Message):
    __slots__ = ("option_group_id", "option_id")
    OPTION_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    OPTION_ID_FIELD_NUMBER: _ClassVar[int]
    option_group_id: str
    option_id: str
    def __init__(self, option_group_id: _Optional[str] = ..., option_id: _Optional[str] = ...) -> None: ...

class CancellationInfo(_message.Message):
    __slots__ = ("reason", "cancelled_by", "note", "refund", "cancellation_fee")
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_BY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    REFUND_FIELD_NUMBER: _ClassVar[int]
    CANCELLATION_FEE_FIELD_NUMBER: _ClassVar[int]
    reason: CancelReason
    cancelled_by: _common_pb2.Role
    note: str
    refund: _common_pb2.Money
    cancellation_fee: _common_pb2.Money
    def __init__(self, reason: _Optional[_Union[CancelReason, str]] = ..., cancelled_by: _Optional[_Union[_common_pb2.Role, str]] = ..., note: _Optional[str] = ..., refund: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., cancellation_fee: _Optional[_Union[_common_pb2.Money, _Mapping]] = ...) -> None: ...

class ProofOfDelivery(_message.Message):
    __slots__ = ("photo", "content_type", "location", "capture_time")
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    photo: bytes
    content_type: str
    location: _common_pb2.LatLng
    capture_time: _timestamp_pb2.Timestamp
    def __init__(self, photo: _Optional[bytes] = ..., content_type: _Optional[str] = ..., location: _Optional[_Union[_common_pb2.LatLng, _Mapping]] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ProblemReport(_message.Message):
    __slots__ = ("problem_id", "order_id", "reporter_id", "reporter_role", "reason", "description", "create_time")
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTER_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTER_ROLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    problem_id: str
    order_id: str
    reporter_id: str
    reporter_role: _common_pb2.Role
    reason: ProblemReason
    description: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, problem_id: _Optional[str] = ..., order_id: _Optional[str] = ..., reporter_id: _Optional[str] = ..., reporter_role: _Optional[_Union[_common_pb2.Role, str]] = ..., reason: _Optional[_Union[ProblemReason, str]] = ..., description: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Rating(_message.Message):
    __slots__ = ("rating_id", "order_id", "rater_id", "rater_role", "target", "target_id", "score", "comment", "create_time")
    RATING_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    RATER_ID_FIELD_NUMBER: _ClassVar[int]
    RATER_ROLE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    rating_id: str
    order_id: str
    rater_id: str
    rater_role: _common_pb2.Role
    target: RatingTarget
    target_id: str
    score: int
    comment: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, rating_id: _Optional[str] = ..., order_id: _Optional[str] = ..., rater_id: _Optional[str] = ..., rater_role: _Optional[_Union[_common_pb2.Role, str]] = ..., target: _Optional[_Union[RatingTarget, str]] = ..., target_id: _Optional[str] = ..., score: _Optional[int] = ..., comment: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Notification(_message.Message):
    __slots__ = ("notification_id", "order_id", "type", "title", "body", "create_time", "read")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    order_id: str
    type: NotificationType
    title: str
    body: str
    create_time: _timestamp_pb2.Timestamp
    read: bool
    def __init__(self, notification_id: _Optional[str] = ..., order_id: _Optional[str] = ..., type: _Optional[_Union[NotificationType, str]] = ..., title: _Optional[str] = ..., body: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., read: _Optional[bool] = ...) -> None: ...

class StuckOrder(_message.Message):
    __slots__ = ("order", "state_duration")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    STATE_DURATION_FIELD_NUMBER: _ClassVar[int]
    order: Order
    state_duration: _duration_pb2.Duration
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., state_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RetentionResult(_message.Message):
    __slots__ = ("table_name", "rows_deleted", "rows_archived")
    TABLE_NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_DELETED_FIELD_NUMBER: _ClassVar[int]
    ROWS_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    table_name: str
    rows_deleted: int
    rows_archived: int
    def __init__(self, table_name: _Optional[str] = ..., rows_deleted: _Optional[int] = ..., rows_archived: _Optional[int] = ...) -> None: ...
