"""Error mapping and sessions over real gRPC, PostgreSQL and Redis."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from delivery.common.v1 import common_pb2
from delivery.order.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
)
from delivery.tracking.v1 import tracking_service_pb2, tracking_service_pb2_grpc
from mesh.server import ServiceBinding, build_mesh_server
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import bearer, service_metadata, serving, settings_for_test
from order_svc.server import build_server


@pytest.fixture
async def order_channel(store_settings: StoreSettings, stores: Stores):
    settings = settings_for_test("order", store_settings)
    async with serving(build_server, settings, stores) as (_, channel):
        yield channel


def _details(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    status = rpc_status.from_call(err)
    assert status is not None, "the error carries no google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return info, fields


def _email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


async def test_bad_input_gets_invalid_argument_naming_each_field(order_channel) -> None:
    accounts = account_service_pb2_grpc.AccountServiceStub(order_channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.SignUp(
            account_service_pb2.SignUpRequest(
                email="not-an-email", password="short", name="Ann", role=common_pb2.ROLE_CUSTOMER
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = _details(caught.value)
    assert info.reason == "INVALID_ARGUMENT"
    assert info.domain == "delivery.mesh"
    assert set(fields) == {"email", "password"}


async def test_a_driver_needs_a_vehicle_and_unset_role_is_refused(order_channel) -> None:
    accounts = account_service_pb2_grpc.AccountServiceStub(order_channel)
    for request, field in (
        (account_service_pb2.SignUpRequest(role=common_pb2.ROLE_DRIVER), "vehicle_type"),
        (account_service_pb2.SignUpRequest(), "role"),
    ):
        request.email, request.password, request.name = _email(), "password123", "Dee"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await accounts.SignUp(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _details(caught.value)[1] == [field]


async def test_calls_without_a_session_are_unauthenticated(order_channel) -> None:
    accounts = account_service_pb2_grpc.AccountServiceStub(order_channel)
    for metadata in ((), bearer("no-such-token"), (("authorization", "Basic abc"),)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await accounts.GetMe(account_service_pb2.GetMeRequest(), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _details(caught.value)[0].reason in {
            "MISSING_CREDENTIALS",
            "SESSION_INVALID",
            "MALFORMED_AUTHORIZATION",
        }


async def test_sign_up_login_get_me_and_logout_revokes_at_once(order_channel) -> None:
    accounts = account_service_pb2_grpc.AccountServiceStub(order_channel)
    email = _email()
    signed = await accounts.SignUp(
        account_service_pb2.SignUpRequest(
            email=email.upper(),
            password="correct horse",
            name="Ann",
            role=common_pb2.ROLE_DRIVER,
            vehicle_type=common_pb2.VEHICLE_TYPE_BICYCLE,
        )
    )
    assert signed.user.email == email
    assert signed.user.role == common_pb2.ROLE_DRIVER
    me = await accounts.GetMe(
        account_service_pb2.GetMeRequest(), metadata=bearer(signed.session_token)
    )
    assert me.user.user_id == signed.user.user_id

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.Login(account_service_pb2.LoginRequest(email=email, password="wrong one"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    login = await accounts.Login(
        account_service_pb2.LoginRequest(email=email, password="correct horse")
    )
    assert login.session_token != signed.session_token
    await accounts.Logout(account_service_pb2.LogoutRequest(), metadata=bearer(login.session_token))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.GetMe(
            account_service_pb2.GetMeRequest(), metadata=bearer(login.session_token)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Only the session that logged out is gone.
    still = await accounts.GetMe(
        account_service_pb2.GetMeRequest(), metadata=bearer(signed.session_token)
    )
    assert still.user.user_id == signed.user.user_id


async def test_the_same_email_cannot_sign_up_twice(order_channel) -> None:
    accounts = account_service_pb2_grpc.AccountServiceStub(order_channel)
    request = account_service_pb2.SignUpRequest(
        email=_email(), password="password123", name="Bo", role=common_pb2.ROLE_CUSTOMER
    )
    await accounts.SignUp(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.SignUp(request)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _details(caught.value)[0].reason == "EMAIL_TAKEN"


async def test_only_an_admin_creates_admins(order_channel) -> None:
    accounts = account_service_pb2_grpc.AccountServiceStub(order_channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.SignUp(
            account_service_pb2.SignUpRequest(
                email=_email(), password="password123", name="Eve", role=common_pb2.ROLE_ADMIN
            )
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_rpc_without_a_handler_is_unimplemented_not_unknown(
    store_settings: StoreSettings, stores: Stores
) -> None:
    settings = settings_for_test("tracking", store_settings)

    async def build(settings, stores):
        # The generated base class: every method raises NotImplementedError.
        binding = ServiceBinding(
            "delivery.tracking.v1.TrackingService",
            tracking_service_pb2_grpc.TrackingServiceServicer(),
            tracking_service_pb2_grpc.add_TrackingServiceServicer_to_server,
        )
        return build_mesh_server(settings, stores, [binding])

    async with serving(build, settings, stores) as (_, channel):
        tracking = tracking_service_pb2_grpc.TrackingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tracking.GetEta(
                tracking_service_pb2.GetEtaRequest(), metadata=service_metadata(settings)
            )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_forged_service_token_is_refused(order_channel) -> None:
    accounts = account_service_pb2_grpc.AccountServiceStub(order_channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.GetMe(
            account_service_pb2.GetMeRequest(), metadata=bearer("svc.matching.deadbeef")
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _details(caught.value)[0].reason == "INVALID_SERVICE_TOKEN"
