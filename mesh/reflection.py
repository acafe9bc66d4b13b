"""Server reflection, v1 and v1alpha, serving the contracts with their comments.

The generated ``_pb2`` modules register descriptors without source info, and a
``DescriptorPool`` drops it again when a file is copied out of it, so ``grpcurl describe`` would
show none of the contracts' documentation. Reflection therefore serves the serialized files of
``gen/delivery/descriptors.binpb`` (written by ``scripts/gen_protos.py`` with
``--include_source_info --include_imports``) exactly as protoc wrote them, from an index of its
own that also resolves method names (``delivery.order.v1.OrderService.CreateOrder``), which
grpcio-reflection's pool lookup cannot. Health, reflection and the ``google.rpc`` error details
(so that grpcurl decodes a refusal's ErrorInfo and BadRequest) come from the modules that
define them.

grpcio-reflection implements only ``grpc.reflection.v1alpha``. ``grpc.reflection.v1`` is the
same protocol with the package renamed (same messages, same field numbers), so one servicer
answers both: the v1 method is registered by hand with the v1alpha message classes, and a v1
file descriptor made from the v1alpha one lets clients describe it.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import cache

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

logger = logging.getLogger(__name__)

#: The package (``gen/delivery``) and file name of the descriptor set with source info.
DESCRIPTOR_SET = ("delivery", "descriptors.binpb")
#: The reflection service grpcio-reflection implements.
V1ALPHA_SERVICE = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
#: The reflection service of the stable API (grpcurl 1.8.8 and later, buf curl, Postman).
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True, slots=True)
class DescriptorIndex:
    """Serialized file descriptors by file name, and which file defines each symbol."""

    #: File name to its serialized ``FileDescriptorProto``, as protoc wrote it.
    files: dict[str, bytes]
    #: File name to the names of the files it imports.
    imports: dict[str, tuple[str, ...]]
    #: Fully qualified name (message, field, oneof, enum, enum value, service, method,
    #: extension) to the file that defines it.
    symbols: dict[str, str]
    #: Extended message to extension number to the file that declares the extension.
    extensions: dict[str, dict[int, str]]

    @classmethod
    def of(cls, protos: Iterable[descriptor_pb2.FileDescriptorProto]) -> DescriptorIndex:
        """Indexes ``protos``; a file name seen twice keeps its first proto."""
        index = cls({}, {}, {}, {})
        for proto in protos:
            if proto.name not in index.files:
                index._add(proto)
        return index

    def _add(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        self.files[proto.name] = proto.SerializeToString(deterministic=True)
        self.imports[proto.name] = tuple(proto.dependency)
        scope = f"{proto.package}." if proto.package else ""
        for message in proto.message_type:
            self._message(proto.name, scope, message)
        for enum in proto.enum_type:
            self._enum(proto.name, scope, enum)
        for service in proto.service:
            name = scope + service.name
            self.symbols[name] = proto.name
            for method in service.method:
                self.symbols[f"{name}.{method.name}"] = proto.name
        for extension in proto.extension:
            self._extension(proto.name, scope, extension)

    def _message(self, file: str, scope: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = scope + message.name
        self.symbols[name] = file
        for field in message.field:
            self.symbols[f"{name}.{field.name}"] = file
        for oneof in message.oneof_decl:
            self.symbols[f"{name}.{oneof.name}"] = file
        for nested in message.nested_type:
            self._message(file, f"{name}.", nested)
        for enum in message.enum_type:
            self._enum(file, f"{name}.", enum)
        for extension in message.extension:
            self._extension(file, f"{name}.", extension)

    def _enum(self, file: str, scope: str, enum: descriptor_pb2.EnumDescriptorProto) -> None:
        name = scope + enum.name
        self.symbols[name] = file
        # protobuf scopes enum values beside their enum; grpcurl names them inside it.
        for value in enum.value:
            self.symbols[scope + value.name] = file
            self.symbols[f"{name}.{value.name}"] = file

    def _extension(self, file: str, scope: str, field: descriptor_pb2.FieldDescriptorProto) -> None:
        self.symbols[scope + field.name] = file
        self.extensions.setdefault(field.extendee.lstrip("."), {})[field.number] = file

    def with_imports(self, file: str) -> list[bytes]:
        """``file`` first, then every file it imports, directly or not, each once."""
        seen: dict[str, None] = {}
        pending = [file]
        while pending:
            name = pending.pop(0)
            if name in seen or name not in self.files:
                continue
            seen[name] = None
            pending.extend(self.imports[name])
        return [self.files[name] for name in seen]


def _proto_of(descriptor: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """The v1 reflection file: the v1alpha one with its package renamed."""
    proto = _proto_of(reflection_pb2.DESCRIPTOR)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")

    def rename(message: descriptor_pb2.DescriptorProto) -> None:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
        for nested in message.nested_type:
            rename(nested)

    for message in proto.message_type:
        rename(message)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    return proto


def read_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The contracts with their imports and comments, from ``gen/delivery/descriptors.binpb``."""
    package, name = DESCRIPTOR_SET
    resource = importlib.resources.files(package).joinpath(name)
    try:
        data = resource.read_bytes()
    except FileNotFoundError:
        raise RuntimeError(
            f"{package}/{name} is missing from gen/: run scripts/gen_protos.py"
        ) from None
    return descriptor_pb2.FileDescriptorSet.FromString(data)


@cache
def default_index() -> DescriptorIndex:
    """Every contract (with comments), the error details, health and both reflection
    versions; built once."""
    return DescriptorIndex.of(
        [
            *read_descriptor_set().file,
            # So that grpcurl shows an error's ErrorInfo and BadRequest instead of raw bytes.
            _proto_of(error_details_pb2.DESCRIPTOR),
            _proto_of(health_pb2.DESCRIPTOR),
            _proto_of(reflection_pb2.DESCRIPTOR),
            v1_file(),
        ]
    )


def _error(
    request: reflection_pb2.ServerReflectionRequest, code: grpc.StatusCode, message: str
) -> reflection_pb2.ServerReflectionResponse:
    return reflection_pb2.ServerReflectionResponse(
        original_request=request,
        error_response=reflection_pb2.ErrorResponse(
            error_code=code.value[0], error_message=message
        ),
    )


class ReflectionServicer(reflection_pb2_grpc.ServerReflectionServicer):
    """Answers ``ServerReflectionInfo`` from a :class:`DescriptorIndex`, for v1 and v1alpha."""

    def __init__(self, service_names: Iterable[str], index: DescriptorIndex) -> None:
        self._services = tuple(sorted(set(service_names)))
        self._index = index

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterator[reflection_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for request in request_iterator:
            yield self.answer(request)

    def answer(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        """The response to one request of the stream."""
        index = self._index
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            return reflection_pb2.ServerReflectionResponse(
                original_request=request,
                list_services_response=reflection_pb2.ListServiceResponse(
                    service=[reflection_pb2.ServiceResponse(name=n) for n in self._services]
                ),
            )
        if kind == "file_by_filename":
            file = request.file_by_filename
            if file not in index.files:
                return _error(request, grpc.StatusCode.NOT_FOUND, f"file not found: {file}")
        elif kind == "file_containing_symbol":
            symbol = request.file_containing_symbol.lstrip(".")
            if symbol not in index.symbols:
                return _error(request, grpc.StatusCode.NOT_FOUND, f"symbol not found: {symbol}")
            file = index.symbols[symbol]
        elif kind == "file_containing_extension":
            wanted = request.file_containing_extension
            found = index.extensions.get(wanted.containing_type, {}).get(wanted.extension_number)
            if found is None:
                return _error(
                    request,
                    grpc.StatusCode.NOT_FOUND,
                    f"extension not found: {wanted.containing_type} {wanted.extension_number}",
                )
            file = found
        elif kind == "all_extension_numbers_of_type":
            message = request.all_extension_numbers_of_type
            if message not in index.symbols:
                return _error(request, grpc.StatusCode.NOT_FOUND, f"type not found: {message}")
            return reflection_pb2.ServerReflectionResponse(
                original_request=request,
                all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                    base_type_name=message,
                    extension_number=sorted(index.extensions.get(message, {})),
                ),
            )
        else:
            return _error(
                request, grpc.StatusCode.INVALID_ARGUMENT, "the request names no known question"
            )
        return reflection_pb2.ServerReflectionResponse(
            original_request=request,
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=index.with_imports(file)
            ),
        )


def enable_reflection(
    service_names: Iterable[str], server: grpc.aio.Server, index: DescriptorIndex | None = None
) -> tuple[str, ...]:
    """Serves reflection v1 and v1alpha on ``server``, listing ``service_names``, health and
    both reflection services; returns every name listed."""
    names = (*service_names, _HEALTH_SERVICE, V1_SERVICE, V1ALPHA_SERVICE)
    servicer = ReflectionServicer(names, index or default_index())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # The same handler under the v1 name: the messages are the same on the wire.
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": v1}),)
    )
    return tuple(sorted(set(names)))
