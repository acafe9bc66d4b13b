"""The allow-listed methods resolved against the descriptor pool, and their JSON transcoding."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

import edge.registry  # noqa: F401 - registers every generated descriptor in the default pool
from edge.exposed import Exposed
from edge.wire import Codec, Refused
from mesh.errors import FieldViolation, InvalidArgument


@dataclass(frozen=True, slots=True)
class Method:
    """One method the edge forwards, with the message classes of its request and response."""

    #: Its allow-list entry.
    exposed: Exposed
    #: The HTTP/2 path of the upstream call, ``/package.Service/Method``.
    path: str
    #: The proto package, which names the service process behind the edge.
    package: str
    #: Whether it answers with a stream.
    streaming: bool
    request_class: type[Message]
    response_class: type[Message]

    def request(self, codec: Codec, payload: bytes) -> bytes:
        """The binary request to forward for a request ``payload`` in ``codec``: the same bytes
        for binary requests, refused (INVALID_ARGUMENT) if it does not fit the request message
        or sets a field browsers may not set."""
        name = self.request_class.DESCRIPTOR.full_name
        if codec.json:
            message = self.request_class()
            try:
                # Decoded here: json.loads would sniff bytes and take UTF-16, UTF-32 or a BOM.
                parsed = json.loads(payload.decode("utf-8"))
                if not isinstance(parsed, dict):
                    # ParseDict would take a list or a number as an empty message.
                    raise ValueError(f"a message is a JSON object, not {type(parsed).__name__}")
                json_format.ParseDict(parsed, message)
            except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the JSON does not fit {name}: {str(exc)[:300]}",
                    reason="BAD_JSON",
                ) from None
            payload = message.SerializeToString()
        elif self.exposed.refused_fields:
            try:
                message = self.request_class.FromString(payload)
            except DecodeError:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the message is not a valid {name}",
                    reason="BAD_MESSAGE",
                ) from None
        else:
            return payload
        set_fields = {field.name for field, _ in message.ListFields()}
        refused = [f for f in self.exposed.refused_fields if f in set_fields]
        if refused:
            raise InvalidArgument(
                [
                    FieldViolation(
                        f,
                        "must be empty in a call through the edge: it is for"
                        " services and operators' tools only",
                    )
                    for f in refused
                ],
                reason="FIELD_NOT_EXPOSED",
            )
        return payload

    def reply(self, codec: Codec, message: bytes) -> bytes:
        """One reply message from the service, in ``codec``: proto3 JSON (the JSON names, as
        connect-web and other gRPC-web clients read it) or the bytes as they came."""
        if not codec.json:
            return message
        as_dict = json_format.MessageToDict(self.response_class.FromString(message))
        return json.dumps(as_dict, separators=(",", ":"), ensure_ascii=False).encode()


def resolve(exposed: Iterable[Exposed]) -> dict[str, Method]:
    """Each of ``exposed`` by full method name, with its descriptors from the default pool;
    raises ValueError for a method the pool does not know or a client stream."""
    pool = descriptor_pool.Default()
    methods = {}
    for rpc in exposed:
        service_name, _, method_name = rpc.method.partition("/")
        try:
            service = pool.FindServiceByName(service_name)
            descriptor = service.methods_by_name[method_name]
        except KeyError:
            raise ValueError(f"{rpc.method} is on the allow-list but no proto defines it") from None
        if descriptor.client_streaming:
            # gRPC-web cannot carry a client stream; listing one is a mistake, not a feature.
            raise ValueError(f"{rpc.method} is a client stream, which gRPC-web cannot carry")
        methods[rpc.method] = Method(
            exposed=rpc,
            path=f"/{rpc.method}",
            package=service.file.package,
            streaming=descriptor.server_streaming,
            request_class=message_factory.GetMessageClass(descriptor.input_type),
            response_class=message_factory.GetMessageClass(descriptor.output_type),
        )
    return methods
