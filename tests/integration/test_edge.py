"""The edge translates gRPC-web to gRPC over real sockets in front of the real order_svc: the
binary, text and JSON codecs, errors with their rich details, and service tokens refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from delivery.common.v1 import common_pb2
from delivery.order.v1 import account_service_pb2, account_service_pb2_grpc
from edge.app import EdgeConfig
from mesh.auth import service_token
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import TEST_SERVICE_SECRET, bearer, serving, settings_for_test
from order_svc.server import build_server
from tests.integration.edge_harness import call, serve_edge

SIGN_UP = "/delivery.order.v1.AccountService/SignUp"
GET_ME = "/delivery.order.v1.AccountService/GetMe"


@pytest.fixture
async def order_channel(
    store_settings: StoreSettings, stores: Stores
) -> AsyncIterator[tuple[str, grpc.aio.Channel]]:
    settings = settings_for_test("order", store_settings)
    async with serving(build_server, settings, stores) as (server, channel):
        yield f"127.0.0.1:{server.port}", channel


@pytest.fixture
async def edge_url(order_channel: tuple[str, grpc.aio.Channel]) -> AsyncIterator[str]:
    address, _ = order_channel
    routes = {"delivery.order.v1": address, "delivery.location.v1": address}
    async with serve_edge(EdgeConfig(routes=routes)) as url:
        yield url


def _sign_up_request() -> account_service_pb2.SignUpRequest:
    return account_service_pb2.SignUpRequest(
        email=f"web-{uuid.uuid4().hex[:8]}@example.com",
        password="password123",
        name="Wéb",
        role=common_pb2.ROLE_CUSTOMER,
    )


async def test_a_unary_call_goes_through_the_edge_in_binary_and_text(edge_url: str) -> None:
    for text in (False, True):
        request = _sign_up_request()
        answer = await call(edge_url, SIGN_UP, request.SerializeToString(), text=text)
        assert answer.code is grpc.StatusCode.OK
        assert answer.headers["content-type"] == (
            "application/grpc-web-text+proto" if text else "application/grpc-web+proto"
        )
        reply = account_service_pb2.SignUpResponse.FromString(answer.messages[0])
        assert reply.user.email == request.email
        assert reply.session_token


async def test_the_json_codec_is_transcoded_both_ways(edge_url: str) -> None:
    for text in (False, True):
        email = f"json-{uuid.uuid4().hex[:8]}@example.com"
        request = {
            "email": email,
            "password": "password123",
            "name": "Jsön",
            "role": "ROLE_CUSTOMER",
            "requestId": uuid.uuid4().hex,
        }
        answer = await call(edge_url, SIGN_UP, json.dumps(request).encode(), json=True, text=text)
        assert answer.code is grpc.StatusCode.OK
        assert answer.headers["content-type"] == (
            "application/grpc-web-text+json" if text else "application/grpc-web+json"
        )
        reply = json.loads(answer.messages[0])
        # proto3 JSON: the JSON names, enums by name.
        assert reply["user"]["email"] == email
        assert reply["user"]["name"] == "Jsön"
        assert reply["user"]["role"] == "ROLE_CUSTOMER"
        token = reply["sessionToken"]
        me = await call(
            edge_url, GET_ME, b"{}", json=True, headers={"authorization": f"Bearer {token}"}
        )
        assert me.code is grpc.StatusCode.OK
        assert json.loads(me.messages[0])["user"]["userId"] == reply["user"]["userId"]


async def test_errors_keep_their_code_and_rich_details(edge_url: str) -> None:
    request = account_service_pb2.SignUpRequest(email="nope", password="password123", name="X")
    binary = await call(edge_url, SIGN_UP, request.SerializeToString())
    as_json = await call(
        edge_url, SIGN_UP, b'{"email": "nope", "password": "password123", "name": "X"}', json=True
    )
    for answer in (binary, as_json):
        assert answer.messages == []
        assert answer.code is grpc.StatusCode.INVALID_ARGUMENT
        assert set(answer.violations()) == {"email", "role"}


async def test_a_service_token_valid_at_the_service_is_refused_at_the_edge(
    edge_url: str, order_channel: tuple[str, grpc.aio.Channel]
) -> None:
    token = service_token(TEST_SERVICE_SECRET, "matching")
    # Straight to the service it is a service identity (GetMe then says it has no account).
    accounts = account_service_pb2_grpc.AccountServiceStub(order_channel[1])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.GetMe(account_service_pb2.GetMeRequest(), metadata=bearer(token))
    assert caught.value.code() is not grpc.StatusCode.UNAUTHENTICATED
    for authorization in (f"Bearer {token}", f"Bearer  {token}", f"BEARER {token}"):
        answer = await call(edge_url, GET_ME, b"", headers={"authorization": authorization})
        assert answer.code is grpc.StatusCode.UNAUTHENTICATED
        assert answer.reason() == "SERVICE_TOKEN_REFUSED"
    answer = await call(edge_url, GET_ME, b"", headers={"authorization": f"bearer\t{token}"})
    assert answer.code is grpc.StatusCode.UNAUTHENTICATED
    assert answer.reason() == "MALFORMED_AUTHORIZATION"


async def test_the_edge_answers_its_own_health(edge_url: str) -> None:
    answer = await call(edge_url, "/grpc.health.v1.Health/Check", b"{}", json=True)
    assert answer.code is grpc.StatusCode.OK
    assert json.loads(answer.messages[0]) == {"status": "SERVING"}
