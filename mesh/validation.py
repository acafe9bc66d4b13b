"""Input checks every request passes before its handler runs, walked from the message's descriptor.

Handlers check what a field means (a valid email, a price below its limit); the rules here hold
for every field of every request, whatever its service, so no malformed value reaches a
handler, a store or a log:

- text fields: at most :attr:`InputRules.max_text_chars` characters, and no control characters
  (C0 and C1, DEL) except tab, line feed and carriage return. PostgreSQL cannot store NUL, and
  no name, address or note needs a bell or an escape sequence;
- bytes fields: at most :attr:`InputRules.max_bytes` bytes;
- float and double fields: finite (no NaN, no infinities), except in the methods of
  :attr:`InputRules.nonfinite_methods`;
- enum fields: a value the enum defines (proto3 keeps unknown numbers as they came);
- repeated and map fields: at most :attr:`InputRules.max_items` entries;
- ``google.protobuf.Timestamp`` and ``Duration``: within the ranges their definitions allow;
- a body that does not parse (invalid UTF-8 in a string field, a truncated message).

Longer limits for single fields are in :data:`LENGTH_OVERRIDES` and :data:`ITEMS_OVERRIDES`.
A refusal is INVALID_ARGUMENT with a field violation per bad field (``items[3].note``), mapped
by :class:`mesh.interceptors.MeshInterceptor`. Coordinates (``delivery.common.v1.LatLng``)
closer to 0 than :data:`mesh.geo.NEAR_ZERO_DEG` are set to 0 on the way in.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from mesh.errors import FieldViolation, InvalidArgument, Validator
from mesh.geo import snap_near_zero

#: Text and bytes fields that may be longer than the default, by full field name; None means
#: only the server's message size limit (and the handler) bounds them.
LENGTH_OVERRIDES: Mapping[str, int | None] = {
    # A photo of the handed-over order; order_svc enforces its own maximum (5 MiB).
    "delivery.order.v1.ProofOfDelivery.photo": None,
}

#: Repeated fields that may hold more entries than the default, by full field name.
ITEMS_OVERRIDES: Mapping[str, int] = {}

#: Methods whose float fields may carry NaN or infinities: location_svc judges each GPS fix on
#: its own and drops a bad one with a reason, while the stream or the batch goes on.
NONFINITE_METHODS = frozenset(
    {
        "/delivery.location.v1.LocationService/StreamLocation",
        "/delivery.location.v1.LocationService/ReportLocations",
    }
)

#: Messages whose double fields are degrees of latitude and longitude.
COORDINATE_MESSAGES = frozenset({"delivery.common.v1.LatLng"})

# C0 controls but tab, line feed and carriage return; DEL; C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_TIMESTAMP_MIN_S = -62_135_596_800
_TIMESTAMP_MAX_S = 253_402_300_799
# google.protobuf.Duration: about +-10,000 years.
_DURATION_MAX_S = 315_576_000_000
_NANOS_MAX = 999_999_999
# Messages the walks treat apart from their plain fields.
_SPECIAL_TIMESTAMP, _SPECIAL_DURATION, _SPECIAL_COORDINATES = 1, 2, 3
_SPECIAL = {
    "google.protobuf.Timestamp": _SPECIAL_TIMESTAMP,
    "google.protobuf.Duration": _SPECIAL_DURATION,
    **dict.fromkeys(COORDINATE_MESSAGES, _SPECIAL_COORDINATES),
}
# Deeper than any request of ours; protobuf's own parser stops at 100 levels too.
_MAX_DEPTH = 100


@dataclass(frozen=True, slots=True)
class InputRules:
    """The limits every request is held to (see the module docstring)."""

    #: Longest text field, in characters.
    max_text_chars: int = 4096
    #: Longest bytes field, in bytes.
    max_bytes: int = 4096
    #: Most entries of a repeated or map field.
    max_items: int = 1000
    #: Full field name -> longest text or bytes value (None: no limit of ours).
    length_overrides: Mapping[str, int | None] = field(default_factory=lambda: LENGTH_OVERRIDES)
    #: Full field name -> most entries.
    items_overrides: Mapping[str, int] = field(default_factory=lambda: ITEMS_OVERRIDES)
    #: Methods (``/package.Service/Method``) whose floats are not checked for NaN or infinity.
    nonfinite_methods: frozenset[str] = NONFINITE_METHODS


_TEXT, _BYTES, _FLOAT, _ENUM, _MESSAGE, _OTHER = range(6)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: int
    repeated: bool
    #: Longest value (text or bytes), or None.
    max_len: int | None
    #: Most entries (repeated fields).
    max_items: int
    #: The numbers an enum defines, and its name.
    enum_numbers: frozenset[int] = frozenset()
    enum_name: str = ""
    #: The message type of a message field (a map's entry type for maps).
    message: Descriptor | None = None
    #: For maps: the key's and the value's rules.
    map_key: _Field | None = None
    map_value: _Field | None = None


def _kind(fd: FieldDescriptor) -> int:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _FLOAT
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return _ENUM
    if fd.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return _MESSAGE
    return _OTHER


class RequestChecker:
    """Walks request messages by their descriptors; the plan of each type is made once."""

    def __init__(self, rules: InputRules | None = None) -> None:
        self.rules = rules or InputRules()
        self._plans: dict[str, dict[int, _Field]] = {}
        # The same plans by message class, with what is special about the type.
        self._fast: dict[type, tuple[int, dict[int, _Field]]] = {}

    def check(self, message: Message, *, finite: bool = True) -> Validator:
        """The violations of ``message`` (none if it passes); near-zero coordinates become 0.

        ``finite=False`` lets NaN and infinities through (see :attr:`InputRules.nonfinite_methods`).
        """
        found = Validator()
        # Nearly every request is clean: a pass that names no fields says so quickly, and
        # only a request that fails it is walked again to name each bad field.
        if not self._clean(message, finite, 0):
            self._walk(message, "", found, finite, 0)
        return found

    def raise_if_invalid(self, message: Message, *, finite: bool = True) -> None:
        """Raises :class:`InvalidArgument` naming every bad field of ``message``."""
        self.check(message, finite=finite).raise_if_any()

    # --- plans --------------------------------------------------------------------------------

    def _plan(self, descriptor: Descriptor) -> dict[int, _Field]:
        plan = self._plans.get(descriptor.full_name)
        if plan is None:
            plan = {fd.number: self._field(fd) for fd in descriptor.fields}
            self._plans[descriptor.full_name] = plan
        return plan

    def _field(self, fd: FieldDescriptor) -> _Field:
        kind = _kind(fd)
        rules = self.rules
        default_len = rules.max_bytes if kind == _BYTES else rules.max_text_chars
        max_len = rules.length_overrides.get(fd.full_name, default_len)
        spec = _Field(
            name=fd.name,
            kind=kind,
            repeated=fd.is_repeated,
            max_len=max_len,
            max_items=rules.items_overrides.get(fd.full_name, rules.max_items),
        )
        if kind == _ENUM:
            spec = replace(
                spec,
                enum_numbers=frozenset(v.number for v in fd.enum_type.values),
                enum_name=fd.enum_type.full_name,
            )
        elif kind == _MESSAGE:
            entry = fd.message_type
            if entry.GetOptions().map_entry:
                key, value = entry.fields_by_number[1], entry.fields_by_number[2]
                spec = replace(
                    spec,
                    message=entry,
                    map_key=self._field(key),
                    map_value=self._field(value),
                )
            else:
                spec = replace(spec, message=entry)
        return spec

    # --- the walks ----------------------------------------------------------------------------

    def _clean(self, message: Message, finite: bool, depth: int) -> bool:
        """Whether ``message`` passes every check (snapping coordinates on the way)."""
        plan = self._fast.get(type(message))
        if plan is None:
            plan = self._fast_plan(message)
        special, fields = plan
        if special:
            if special == _SPECIAL_TIMESTAMP:
                return _timestamp_ok(message)
            if special == _SPECIAL_DURATION:
                return _duration_ok(message)
            _snap_coordinates(message)
        if depth > _MAX_DEPTH:
            return False
        for fd, value in message.ListFields():
            spec = fields[fd.number]
            kind = spec.kind
            if kind == _OTHER:
                continue
            if spec.repeated:
                if len(value) > spec.max_items or spec.map_key is not None:
                    return False
                values = value
            else:
                values = (value,)
            if kind == _TEXT:
                max_len = spec.max_len
                for text in values:
                    if (max_len is not None and len(text) > max_len) or _CONTROL.search(text):
                        return False
            elif kind == _MESSAGE:
                for item in values:
                    if not self._clean(item, finite, depth + 1):
                        return False
            elif kind == _FLOAT:
                if finite and not all(map(math.isfinite, values)):
                    return False
            elif kind == _ENUM:
                if not spec.enum_numbers.issuperset(values):
                    return False
            elif spec.max_len is not None and any(len(b) > spec.max_len for b in values):
                return False
        return True

    def _fast_plan(self, message: Message) -> tuple[int, dict[int, _Field]]:
        full_name = message.DESCRIPTOR.full_name
        special = _SPECIAL.get(full_name, 0)
        plan = (special, self._plan(message.DESCRIPTOR))
        self._fast[type(message)] = plan
        return plan

    def _walk(
        self, message: Message, prefix: str, found: Validator, finite: bool, depth: int
    ) -> None:
        descriptor = message.DESCRIPTOR
        full_name = descriptor.full_name
        if full_name == "google.protobuf.Timestamp":
            _check_timestamp(message, prefix, found)
            return
        if full_name == "google.protobuf.Duration":
            _check_duration(message, prefix, found)
            return
        if depth > _MAX_DEPTH:
            found.add(prefix.rstrip("."), f"nests deeper than {_MAX_DEPTH} messages")
            return
        if full_name in COORDINATE_MESSAGES:
            _snap_coordinates(message)
        plan = self._plan(descriptor)
        for fd, value in message.ListFields():
            spec = plan[fd.number]
            path = prefix + spec.name
            if spec.map_key is not None:
                self._check_map(spec, value, path, found, finite, depth)
            elif spec.repeated:
                if len(value) > spec.max_items:
                    found.add(
                        path, f"must hold at most {spec.max_items} entries (got {len(value)})"
                    )
                    continue
                for index, item in enumerate(value):
                    self._check_value(spec, item, f"{path}[{index}]", found, finite, depth)
            else:
                self._check_value(spec, value, path, found, finite, depth)

    def _check_map(
        self, spec: _Field, value: Any, path: str, found: Validator, finite: bool, depth: int
    ) -> None:
        if len(value) > spec.max_items:
            found.add(path, f"must hold at most {spec.max_items} entries (got {len(value)})")
            return
        assert spec.map_key is not None and spec.map_value is not None
        for index, (key, item) in enumerate(value.items()):
            # Keys are the caller's text: named by position, never echoed.
            entry = f"{path}[{index}]"
            self._check_value(spec.map_key, key, f"{entry}.key", found, finite, depth)
            self._check_value(spec.map_value, item, f"{entry}.value", found, finite, depth)

    def _check_value(
        self, spec: _Field, value: Any, path: str, found: Validator, finite: bool, depth: int
    ) -> None:
        kind = spec.kind
        if kind == _TEXT:
            _check_text(value, spec.max_len, path, found)
        elif kind == _MESSAGE:
            self._walk(value, path + ".", found, finite, depth + 1)
        elif kind == _FLOAT:
            if finite and not math.isfinite(value):
                found.add(path, f"must be a finite number, not {_nonfinite_name(value)}")
        elif kind == _ENUM:
            if value not in spec.enum_numbers:
                found.add(path, f"{value} is not a value of {spec.enum_name}")
        elif kind == _BYTES and spec.max_len is not None and len(value) > spec.max_len:
            found.add(path, f"must be at most {spec.max_len} bytes long (got {len(value)})")


def _check_text(value: str, max_len: int | None, path: str, found: Validator) -> None:
    if max_len is not None and len(value) > max_len:
        found.add(path, f"must be at most {max_len} characters long (got {len(value)})")
        return
    bad = _CONTROL.search(value)
    if bad is not None:
        char = bad.group()
        if char == "\x00":
            found.add(path, "must not contain NUL characters")
        else:
            found.add(
                path,
                f"must not contain control characters (U+{ord(char):04X} at {bad.start()})",
            )


def _nonfinite_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "infinity" if value > 0 else "-infinity"


def _snap_coordinates(point: Message) -> None:
    for name in ("latitude", "longitude"):
        degrees = getattr(point, name)
        snapped = snap_near_zero(degrees)
        if snapped != degrees:
            setattr(point, name, snapped)


def _timestamp_ok(message: Any) -> bool:
    return (
        _TIMESTAMP_MIN_S <= message.seconds <= _TIMESTAMP_MAX_S and 0 <= message.nanos <= _NANOS_MAX
    )


def _duration_ok(message: Any) -> bool:
    seconds, nanos = message.seconds, message.nanos
    return (
        -_DURATION_MAX_S <= seconds <= _DURATION_MAX_S
        and -_NANOS_MAX <= nanos <= _NANOS_MAX
        and seconds * nanos >= 0
    )


def _check_timestamp(message: Any, prefix: str, found: Validator) -> None:
    path = prefix.rstrip(".")
    if not _TIMESTAMP_MIN_S <= message.seconds <= _TIMESTAMP_MAX_S:
        found.add(path, "must be a time between years 1 and 9999")
    if not 0 <= message.nanos <= _NANOS_MAX:
        found.add(f"{prefix}nanos", f"must be between 0 and {_NANOS_MAX}")


def _check_duration(message: Any, prefix: str, found: Validator) -> None:
    path = prefix.rstrip(".")
    seconds, nanos = message.seconds, message.nanos
    if not -_DURATION_MAX_S <= seconds <= _DURATION_MAX_S:
        found.add(path, f"must be at most {_DURATION_MAX_S} seconds either way")
    if not -_NANOS_MAX <= nanos <= _NANOS_MAX:
        found.add(f"{prefix}nanos", f"must be between -{_NANOS_MAX} and {_NANOS_MAX}")
    elif seconds * nanos < 0:
        found.add(path, "seconds and nanos must have the same sign")


# --- bodies that do not parse ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unparsable:
    """What the deserializer hands on for a body that failed to parse (as a ``<type>``)."""

    descriptor: Descriptor | None
    data: bytes

    def violation(self) -> FieldViolation:
        """Names the string field holding invalid UTF-8, if that is why; else the whole body."""
        if self.descriptor is not None:
            path = bad_utf8_path(self.descriptor, self.data)
            if path is not None:
                return FieldViolation(path, "is not valid UTF-8")
            return FieldViolation("", f"the body is not a valid {self.descriptor.full_name}")
        return FieldViolation("", "the body is not a valid request message")


def bad_utf8_path(
    descriptor: Descriptor, data: bytes, prefix: str = "", depth: int = 0
) -> str | None:
    """The path of the first string field in wire-format ``data`` that is not valid UTF-8.

    Protobuf's parser refuses such a body without saying where; this reads the wire format
    again to tell the caller. None if no such field is found (or the body is malformed).
    """
    if depth > _MAX_DEPTH:
        return None
    seen: dict[int, int] = {}
    pos, end = 0, len(data)
    try:
        while pos < end:
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = _varint(data, pos)
                chunk, pos = data[pos : pos + length], pos + length
                if pos > end:
                    return None
                fd = descriptor.fields_by_number.get(number)
                if fd is None:
                    continue
                index = seen.get(number, 0)
                seen[number] = index + 1
                path = prefix + fd.name + (f"[{index}]" if fd.is_repeated else "")
                if fd.type == FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return path
                elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                    found = bad_utf8_path(fd.message_type, chunk, path + ".", depth + 1)
                    if found is not None:
                        return found
            else:
                return None  # Groups, or garbage.
    except IndexError:
        return None
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise IndexError("varint too long")


# --- the interceptor ---------------------------------------------------------------------------


class ValidationInterceptor(grpc.aio.ServerInterceptor):
    """Checks each request message (each one of a client stream) before the handler sees it.

    Goes after :class:`mesh.interceptors.MeshInterceptor` in a server's list, so the caller is
    authenticated first and the :class:`InvalidArgument` raised here is mapped (and logged at
    INFO, without a traceback) like any handler's. A bad message of a client stream ends the
    stream with INVALID_ARGUMENT.
    """

    def __init__(self, rules: InputRules | None = None) -> None:
        self.checker = RequestChecker(rules)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith("/grpc."):
            return handler
        # A service's handler objects are made once, so their wrappers are too.
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        finite = method not in self.checker.rules.nonfinite_methods
        deserializer = _tolerant(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_request(handler.unary_unary, finite),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_request(handler.unary_stream, finite),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_request(handler.stream_unary, finite),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream_request(handler.stream_stream, finite),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )

    def _vet(self, request: Any, finite: bool) -> None:
        if isinstance(request, Unparsable):
            raise InvalidArgument(request.violation(), reason="MALFORMED_REQUEST")
        if isinstance(request, Message):
            self.checker.raise_if_invalid(request, finite=finite)

    def _unary_request(self, behavior: Callable[..., Any], finite: bool) -> Callable[..., Any]:
        vet = self._vet
        if inspect.isasyncgenfunction(behavior):

            async def streamed(request: Any, context: grpc.aio.ServicerContext) -> Any:
                vet(request, finite)
                responses = behavior(request, context)
                try:
                    async for response in responses:
                        yield response
                finally:
                    await responses.aclose()

            return streamed

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            vet(request, finite)
            return await behavior(request, context)

        return handle

    def _stream_request(self, behavior: Callable[..., Any], finite: bool) -> Callable[..., Any]:
        vet = self._vet

        async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                vet(request, finite)
                yield request

        if inspect.isasyncgenfunction(behavior):

            async def streamed(requests: AsyncIterator[Any], context: Any) -> Any:
                responses = behavior(checked(requests), context)
                try:
                    async for response in responses:
                        yield response
                finally:
                    await responses.aclose()

            return streamed

        async def handle(requests: AsyncIterator[Any], context: Any) -> Any:
            return await behavior(checked(requests), context)

        return handle


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, handing on an :class:`Unparsable` where it would raise.

    grpc answers a deserializer's exception with INTERNAL (and logs it), before any handler
    or interceptor could tell the caller what was wrong.
    """
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    if not isinstance(descriptor, Descriptor):
        descriptor = None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # whatever the parser raises, the body is at fault
            return Unparsable(descriptor, data)

    return deserialize
