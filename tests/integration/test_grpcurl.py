"""Operators debug with real grpcurl and buf binaries: reflection (v1 and v1alpha) serves the
contracts with their comments, method names resolve, health needs no proto files."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from mesh.reflection import V1_SERVICE, V1ALPHA_SERVICE
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server

ROOT = Path(__file__).resolve().parents[2]
ORDER_SERVICE_PROTO = ROOT / "protos" / "delivery" / "order" / "v1" / "order_service.proto"


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' brings it")
    return found


async def _run(tool: str, *args: str, ok: bool = True) -> tuple[str, str]:
    process = await asyncio.create_subprocess_exec(
        _tool(tool), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    if ok:
        assert process.returncode == 0, err.decode()
    else:
        assert process.returncode != 0, out.decode()
    return out.decode(), err.decode()


async def _grpcurl(*args: str) -> str:
    return (await _run("grpcurl", *args))[0]


def _comment_above(proto: Path, declaration: str) -> list[str]:
    """The comment lines right above ``declaration`` in ``proto``, without ``//``."""
    lines = proto.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(declaration))
    comment: list[str] = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip()[2:].strip())
    assert comment, f"no comment above {declaration}"
    return comment


@pytest.fixture
async def target(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[str]:
    settings = settings_for_test("order", store_settings)
    async with serving(build_server, settings, stores) as (server, _):
        yield f"127.0.0.1:{server.port}"


async def test_grpcurl_lists_describes_and_checks_health(target: str) -> None:
    listed = (await _grpcurl("-plaintext", target, "list")).split()
    assert listed == sorted(
        [
            "delivery.order.v1.AccountService",
            "delivery.order.v1.MerchantService",
            "delivery.order.v1.OrderService",
            "grpc.health.v1.Health",
            V1_SERVICE,
            V1ALPHA_SERVICE,
        ]
    )

    message = await _grpcurl(
        "-plaintext", target, "describe", "delivery.order.v1.CreateOrderRequest"
    )
    assert "string request_id = 1;" in message

    overall = json.loads(await _grpcurl("-plaintext", target, "grpc.health.v1.Health/Check"))
    assert overall == {"status": "SERVING"}
    one = json.loads(
        await _grpcurl(
            "-plaintext",
            "-d",
            '{"service": "delivery.order.v1.OrderService"}',
            target,
            "grpc.health.v1.Health/Check",
        )
    )
    assert one == {"status": "SERVING"}
    for service in (V1_SERVICE, V1ALPHA_SERVICE, "grpc.health.v1.Health"):
        assert "is a service:" in await _grpcurl("-plaintext", target, "describe", service)


async def test_describe_shows_the_comments_of_the_proto_and_resolves_methods(target: str) -> None:
    service = await _grpcurl("-plaintext", target, "describe", "delivery.order.v1.OrderService")
    assert "delivery.order.v1.OrderService is a service:" in service
    for line in _comment_above(ORDER_SERVICE_PROTO, "service OrderService"):
        assert f"// {line}" in service
    for line in _comment_above(ORDER_SERVICE_PROTO, "rpc ListStuckOrders("):
        assert f"// {line}" in service

    method = await _grpcurl(
        "-plaintext", target, "describe", "delivery.order.v1.OrderService.CreateOrder"
    )
    assert method.startswith("delivery.order.v1.OrderService.CreateOrder is a method:")
    for line in _comment_above(ORDER_SERVICE_PROTO, "rpc CreateOrder("):
        assert f"// {line}" in method
    assert (
        "rpc CreateOrder ( .delivery.order.v1.CreateOrderRequest )"
        " returns ( .delivery.order.v1.CreateOrderResponse );"
    ) in method

    field = await _grpcurl(
        "-plaintext", target, "describe", "delivery.order.v1.CreateOrderRequest.request_id"
    )
    assert "is a field:" in field
    assert "// A client-generated idempotency key" in field
    value = await _grpcurl("-plaintext", target, "describe", "delivery.common.v1.Role.ROLE_ADMIN")
    assert "is an enum value:" in value
    assert "ROLE_ADMIN = 4;" in value

    _, err = await _run(
        "grpcurl", "-plaintext", target, "describe", "delivery.order.v1.NoSuchThing", ok=False
    )
    assert "Symbol not found" in err


async def test_a_refusal_shows_its_error_details_decoded(target: str) -> None:
    # The google.rpc error details are served too, so grpcurl prints the reason, not bytes.
    _, err = await _run(
        "grpcurl",
        "-plaintext",
        "-d",
        '{"email": "not an email", "password": "x"}',
        target,
        "delivery.order.v1.AccountService/SignUp",
        ok=False,
    )
    assert "Code: InvalidArgument" in err
    assert '"reason":"INVALID_ARGUMENT"' in err
    assert '"field":"email"' in err
    assert "is not recognized" not in err


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_buf_curl_reads_each_reflection_version(target: str, protocol: str) -> None:
    # buf curl (another client nobody here wrote) lets the test pick the reflection version.
    base = ["curl", "--reflect-protocol", protocol, "--protocol", "grpc", "--http2-prior-knowledge"]
    methods, _ = await _run("buf", *base, "--list-methods", f"http://{target}")
    assert "delivery.order.v1.OrderService/ListStuckOrders" in methods.split()
    out, _ = await _run("buf", *base, f"http://{target}/grpc.health.v1.Health/Check")
    assert json.loads(out) == {"status": "SERVING"}


async def _ask(
    channel: grpc.aio.Channel, service: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    # v1 and v1alpha share every message and field number, so one set of classes speaks both.
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter(requests), timeout=10)
    return [response async for response in call]


@pytest.mark.parametrize("service", [V1_SERVICE, V1ALPHA_SERVICE])
async def test_both_reflection_versions_serve_source_info(target: str, service: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        by_method, unknown, listed = await _ask(
            channel,
            service,
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="delivery.order.v1.OrderService.ReassignOrder"
            ),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="delivery.Nope"),
            reflection_pb2.ServerReflectionRequest(list_services=""),
        )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in by_method.file_descriptor_response.file_descriptor_proto
    ]
    # The file first, then what it imports (transitively), each once.
    assert files[0].name == "delivery/order/v1/order_service.proto"
    names = [f.name for f in files]
    assert len(names) == len(set(names))
    assert {"delivery/common/v1/common.proto", "google/protobuf/timestamp.proto"} <= set(names)
    comments = " ".join(
        re.sub(r"\s+", " ", location.leading_comments)
        for location in files[0].source_code_info.location
    )
    expected = " ".join(_comment_above(ORDER_SERVICE_PROTO, "rpc ReassignOrder("))
    assert expected in comments

    assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "delivery.Nope" in unknown.error_response.error_message
    assert {s.name for s in listed.list_services_response.service} >= {
        V1_SERVICE,
        V1ALPHA_SERVICE,
        "delivery.order.v1.OrderService",
    }
