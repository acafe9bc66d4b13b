from delivery.matching.v1 import matching_pb2 as _matching_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DispatchOrderRequest(_message.Message):
    __slots__ = ("order_id", "request_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DispatchOrderResponse(_message.Message):
    __slots__ = ("dispatch_status",)
    DISPATCH_STATUS_FIELD_NUMBER: _ClassVar[int]
    dispatch_status: _matching_pb2.DispatchStatus
    def __init__(self, dispatch_status: _Optional[_Union[_matching_pb2.DispatchStatus, _Mapping]] = ...) -> None: ...

class StreamOffersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamOffersResponse(_message.Message):
    __slots__ = ("offer", "offer_closed")
    OFFER_FIELD_NUMBER: _ClassVar[int]
    OFFER_CLOSED_FIELD_NUMBER: _ClassVar[int]
    offer: _matching_pb2.Offer
    offer_closed: _matching_pb2.OfferClosed
    def __init__(self, offer: _Optional[_Union[_matching_pb2.Offer, _Mapping]] = ..., offer_closed: _Optional[_Union[_matching_pb2.OfferClosed, _Mapping]] = ...) -> None: ...

class AcceptOfferRequest(_message.Message):
    __slots__ = ("offer_id", "request_id")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    request_id: str
    def __init__(self, offer_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AcceptOfferResponse(_message.Message):
    __slots__ = ("offer",)
    OFFER_FIELD_NUMBER: _ClassVar[int]
    offer: _matching_pb2.Offer
    def __init__(self, offer: _Optional[_Union[_matching_pb2.Offer, _Mapping]] = ...) -> None: ...

class DeclineOfferRequest(_message.Message):
    __slots__ = ("offer_id", "request_id", "reason")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    request_id: str
    reason: _matching_pb2.DeclineReason
    def __init__(self, offer_id: _Optional[str] = ..., request_id: _Optional[str] = ..., reason: _Optional[_Union[_matching_pb2.DeclineReason, str]] = ...) -> None: ...

class DeclineOfferResponse(_message.Message):
    __slots__ = ("offer",)
    OFFER_FIELD_NUMBER: _ClassVar[int]
    offer: _matching_pb2.Offer
    def __init__(self, offer: _Optional[_Union[_matching_pb2.Offer, _Mapping]] = ...) -> None: ...

class GetDispatchStatusRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetDispatchStatusResponse(_message.Message):
    __slots__ = ("dispatch_status",)
    DISPATCH_STATUS_FIELD_NUMBER: _ClassVar[int]
    dispatch_status: _matching_pb2.DispatchStatus
    def __init__(self, dispatch_status: _Optional[_Union[_matching_pb2.DispatchStatus, _Mapping]] = ...) -> None: ...
