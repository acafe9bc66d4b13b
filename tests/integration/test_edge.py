"""The edge translates gRPC-web to gRPC over real sockets, errors and details included."""

from __future__ import annotations

import base64
import struct
import uuid

import aiohttp
import pytest
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2

from delivery.common.v1 import common_pb2
from delivery.order.v1 import account_service_pb2
from edge.app import EdgeConfig, build_app
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server


@pytest.fixture
async def edge_url(store_settings: StoreSettings, stores: Stores):
    settings = settings_for_test("order", store_settings)
    async with serving(build_server, settings, stores) as (server, _):
        address = f"127.0.0.1:{server.port}"
        routes = {"delivery.order.v1": address, "delivery.location.v1": address}
        app, _ = build_app(EdgeConfig(routes=routes))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


def _frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    messages, trailers = [], {}
    while body:
        flag, length = struct.unpack(">BI", body[:5])
        chunk, body = body[5 : 5 + length], body[5 + length :]
        if flag & 0x80:
            for line in chunk.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key] = value
        else:
            messages.append(chunk)
    return messages, trailers


async def _call(url: str, path: str, message: bytes, *, text: bool = False, **headers: str):
    body = struct.pack(">BI", 0, len(message)) + message
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + path,
            data=base64.b64encode(body) if text else body,
            headers={"content-type": content_type, "x-grpc-web": "1", **headers},
        ) as response,
    ):
        assert response.status == 200
        raw = await response.read()
        return _frames(_b64_chunks(raw) if text else raw)


def _b64_chunks(raw: bytes) -> bytes:
    # gRPC-web text may send each frame padded on its own; 4-character groups decode alone.
    return b"".join(base64.b64decode(raw[i : i + 4]) for i in range(0, len(raw), 4))


async def test_a_unary_call_goes_through_the_edge(edge_url: str) -> None:
    request = account_service_pb2.SignUpRequest(
        email=f"web-{uuid.uuid4().hex[:8]}@example.com",
        password="password123",
        name="Web",
        role=common_pb2.ROLE_CUSTOMER,
    )
    for text in (False, True):
        if text:
            request.email = "text-" + request.email
        messages, trailers = await _call(
            edge_url,
            "/delivery.order.v1.AccountService/SignUp",
            request.SerializeToString(),
            text=text,
        )
        assert trailers["grpc-status"] == "0"
        reply = account_service_pb2.SignUpResponse.FromString(messages[0])
        assert reply.user.email == request.email
        assert reply.session_token


async def test_errors_keep_their_code_and_rich_details(edge_url: str) -> None:
    request = account_service_pb2.SignUpRequest(email="nope", password="password123", name="X")
    messages, trailers = await _call(
        edge_url, "/delivery.order.v1.AccountService/SignUp", request.SerializeToString()
    )
    assert messages == []
    assert trailers["grpc-status"] == "3"  # INVALID_ARGUMENT
    raw = trailers["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    assert {v.field for v in bad.field_violations} == {"email", "role"}


async def test_unknown_methods_and_client_streams_are_unimplemented(edge_url: str) -> None:
    _, trailers = await _call(edge_url, "/delivery.order.v1.AccountService/Nope", b"")
    assert trailers["grpc-status"] == "12"
    _, trailers = await _call(edge_url, "/delivery.location.v1.LocationService/StreamLocation", b"")
    assert trailers["grpc-status"] == "12"


async def test_cors_preflight_allows_grpc_web_headers(edge_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.options(
            edge_url + "/delivery.order.v1.AccountService/SignUp",
            headers={"Origin": "http://example.com", "Access-Control-Request-Method": "POST"},
        ) as response,
    ):
        assert response.status == 204
        allowed = response.headers["Access-Control-Allow-Headers"]
        assert "x-grpc-web" in allowed and "authorization" in allowed
        assert "grpc-status" in response.headers["Access-Control-Expose-Headers"]
