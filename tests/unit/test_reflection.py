"""The reflection index: which file defines each symbol, and the v1 file made from v1alpha."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from mesh.reflection import DescriptorIndex, ReflectionServicer, default_index, v1_file


def _file(name: str, package: str, deps: list[str]) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto(name=name, package=package, dependency=deps)


def test_every_kind_of_symbol_names_its_file() -> None:
    base = _file("a/base.proto", "pkg.a", [])
    outer = base.message_type.add(name="Outer")
    outer.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    outer.oneof_decl.add(name="choice")
    outer.nested_type.add(name="Inner").nested_type.add(name="Deepest")
    outer.enum_type.add(name="Kind").value.add(name="KIND_UNSPECIFIED", number=0)
    outer.extension_range.add(start=100, end=200)
    top = base.enum_type.add(name="Color")
    top.value.add(name="COLOR_UNSPECIFIED", number=0)
    service = base.service.add(name="Things")
    service.method.add(name="Get", input_type=".pkg.a.Outer", output_type=".pkg.a.Outer")
    user = _file("b/user.proto", "pkg.b", ["a/base.proto"])
    user.extension.add(name="extra", number=150, extendee=".pkg.a.Outer")

    index = DescriptorIndex.of([base, user, _file("a/base.proto", "other", [])])

    for symbol in (
        "pkg.a.Outer",
        "pkg.a.Outer.id",
        "pkg.a.Outer.choice",
        "pkg.a.Outer.Inner.Deepest",
        "pkg.a.Outer.Kind",
        "pkg.a.Outer.KIND_UNSPECIFIED",
        "pkg.a.Outer.Kind.KIND_UNSPECIFIED",
        "pkg.a.Color",
        "pkg.a.COLOR_UNSPECIFIED",
        "pkg.a.Color.COLOR_UNSPECIFIED",
        "pkg.a.Things",
        "pkg.a.Things.Get",
    ):
        assert index.symbols[symbol] == "a/base.proto", symbol
    assert index.symbols["pkg.b.extra"] == "b/user.proto"
    assert index.extensions == {"pkg.a.Outer": {150: "b/user.proto"}}
    # The first file of a name wins; a file's imports follow it, each once.
    assert descriptor_pb2.FileDescriptorProto.FromString(index.files["a/base.proto"]) == base
    assert index.with_imports("b/user.proto") == [
        index.files["b/user.proto"],
        index.files["a/base.proto"],
    ]

    servicer = ReflectionServicer(["pkg.a.Things"], index)
    found = servicer.answer(
        reflection_pb2.ServerReflectionRequest(
            file_containing_extension=reflection_pb2.ExtensionRequest(
                containing_type="pkg.a.Outer", extension_number=150
            )
        )
    )
    assert found.file_descriptor_response.file_descriptor_proto[0] == index.files["b/user.proto"]
    numbers = servicer.answer(
        reflection_pb2.ServerReflectionRequest(all_extension_numbers_of_type="pkg.a.Outer")
    )
    assert list(numbers.all_extension_numbers_response.extension_number) == [150]
    empty = servicer.answer(reflection_pb2.ServerReflectionRequest())
    assert empty.error_response.error_code == 3  # INVALID_ARGUMENT


def test_the_v1_file_is_v1alpha_renamed_and_builds() -> None:
    proto = v1_file()
    assert proto.name == "grpc/reflection/v1/reflection.proto"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    service = pool.FindServiceByName("grpc.reflection.v1.ServerReflection")
    method = service.methods_by_name["ServerReflectionInfo"]
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    response = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    alpha = reflection_pb2.ServerReflectionResponse.DESCRIPTOR
    # Same fields and numbers, so v1alpha's classes read and write v1 messages.
    assert [(f.name, f.number) for f in response.fields] == [
        (f.name, f.number) for f in alpha.fields
    ]


def test_the_default_index_holds_the_contracts_with_comments_and_the_grpc_files() -> None:
    index = default_index()
    for symbol in (
        "delivery.order.v1.OrderService.ListStuckOrders",
        "delivery.location.v1.LocationService.GetDriverLocation",
        "grpc.health.v1.Health.Check",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "google.rpc.BadRequest",
    ):
        assert symbol in index.symbols, symbol
    order = descriptor_pb2.FileDescriptorProto.FromString(
        index.files["delivery/order/v1/order_service.proto"]
    )
    assert any(
        "Admin only." in location.leading_comments for location in order.source_code_info.location
    )
    # Every import of every file is served as well.
    for imports in index.imports.values():
        assert set(imports) <= set(index.files)
