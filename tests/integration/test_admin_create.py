"""``delivery admin create``: the first admin, made by whoever can reach the database, signs in
and acts as an admin; a repeat changes nothing; bad input and taken emails are refused."""

from __future__ import annotations

import asyncio
import sys
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2

from delivery.common.v1 import common_pb2
from delivery.order.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    order_service_pb2,
    order_service_pb2_grpc,
)
from mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import bearer, serving, settings_for_test
from order_svc.admins import create_admin
from order_svc.server import build_server


async def _cli(database_url: str, *args: str, stdin: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh.cli",
        "admin",
        "create",
        "--database-url",
        database_url,
        "--password-stdin",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_admin_made_by_the_cli_signs_in_and_acts_as_admin(
    store_settings: StoreSettings, stores: Stores
) -> None:
    email = f"ops-{uuid.uuid4().hex[:10]}@example.com"
    url = store_settings.database_url
    code, out, err = await _cli(url, "--email", email, "--name", "Ops", stdin="first passphrase\n")
    assert code == 0, err
    assert out.startswith(f"created admin {email} (")

    # Again, with another password: nothing changes, and it says so.
    code, out, err = await _cli(url, "--email", email, "--name", "Ops", stdin="other passphrase\n")
    assert code == 0, err
    assert f"{email} is an admin already" in out

    settings = settings_for_test("order", store_settings)
    async with serving(build_server, settings, stores) as (_, channel):
        accounts = account_service_pb2_grpc.AccountServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await accounts.Login(
                account_service_pb2.LoginRequest(email=email, password="other passphrase")
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        login = await accounts.Login(
            account_service_pb2.LoginRequest(email=email, password="first passphrase")
        )
        assert login.user.role == common_pb2.ROLE_ADMIN
        stuck = await order_service_pb2_grpc.OrderServiceStub(channel).ListStuckOrders(
            order_service_pb2.ListStuckOrdersRequest(
                stuck_duration=duration_pb2.Duration(seconds=3600)
            ),
            metadata=bearer(login.session_token),
        )
        assert stuck is not None

        # A customer's email cannot be turned into an admin.
        customer = f"ann-{uuid.uuid4().hex[:10]}@example.com"
        await accounts.SignUp(
            account_service_pb2.SignUpRequest(
                email=customer, password="password123", name="Ann", role=common_pb2.ROLE_CUSTOMER
            )
        )
    code, out, err = await _cli(url, "--email", customer, "--name", "X", stdin="a passphrase\n")
    assert code == 1
    assert err.strip() == (
        f"delivery admin create: {customer} belongs to a customer account; choose another email"
    )
    with pytest.raises(AlreadyExists):
        await create_admin(url, email=customer, name="X", password="a passphrase")


async def test_bad_input_and_missing_schema_or_database_are_refused_plainly(
    store_settings: StoreSettings, pg_admin_url: str
) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await create_admin(
            store_settings.database_url, email="not an email", name="", password="short"
        )
    assert [v.field for v in bad.value.violations] == ["email", "password", "name"]
    code, _, err = await _cli(
        store_settings.database_url, "--email", "x", "--name", "X", stdin="short\n"
    )
    assert code == 1
    assert err.startswith("delivery admin create: invalid request: email: must be an email")

    # The server's own maintenance database has no schema of ours.
    with pytest.raises(FailedPrecondition, match="run `delivery migrate`"):
        await create_admin(pg_admin_url, email="a@example.com", name="A", password="passphrase")
    with pytest.raises(Unavailable, match="cannot reach the database"):
        await create_admin(
            "postgresql://postgres@127.0.0.1:1/x", email="a@example.com", name="A", password="x" * 8
        )
