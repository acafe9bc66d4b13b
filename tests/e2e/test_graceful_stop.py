"""SIGTERM drains a real service process: in-flight calls finish, new ones are refused, exit 0."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from delivery.common.v1 import common_pb2
from delivery.order.v1 import account_service_pb2, account_service_pb2_grpc
from mesh.settings import StoreSettings
from mesh.testing import spawn


async def _wait_until_blocked_on_lock(
    conn: asyncpg.Connection, email: str, call: asyncio.Future[object]
) -> None:
    for _ in range(200):
        if call.done():
            raise AssertionError(f"the sign-up ended before it was blocked: {call.result()}")
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND wait_event = 'transactionid'"
            " AND datname = current_database()"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the sign-up of {email} never reached the database")


async def test_sigterm_lets_in_flight_calls_finish_and_refuses_new_ones(
    store_settings: StoreSettings,
) -> None:
    process, ports = await spawn(
        [sys.executable, "-m", "order_svc"],
        {
            "DELIVERY_DATABASE_URL": store_settings.database_url,
            "DELIVERY_REDIS_URL": store_settings.redis_url,
            "DELIVERY_ORDER_LISTEN": "127.0.0.1:0",
            "DELIVERY_GRACE_S": "30",
        },
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['order']}")
    accounts = account_service_pb2_grpc.AccountServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    email = f"drain-{uuid.uuid4().hex[:10]}@example.com"
    blocker = await asyncpg.connect(store_settings.database_url)
    try:
        # Hold the email's unique-index slot in an open transaction: the service's INSERT of the
        # same email must wait for it, which keeps its SignUp call in flight as long as we like.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            "INSERT INTO users (email, password_hash, name, role)"
            " VALUES ($1, 'x', 'x', 'customer')",
            email,
        )
        in_flight = asyncio.ensure_future(
            accounts.SignUp(
                account_service_pb2.SignUpRequest(
                    email=email, password="password123", name="Drain", role=common_pb2.ROLE_CUSTOMER
                ),
                timeout=60,
            )
        )
        await _wait_until_blocked_on_lock(blocker, email, in_flight)

        process.send_signal(signal.SIGTERM)
        for _ in range(200):
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("health never turned NOT_SERVING")
        # A new call is refused, retryably, while the old one is still in flight.
        refused = None
        for _ in range(100):
            try:
                await accounts.Login(
                    account_service_pb2.LoginRequest(email=email, password="password123"),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    refused = err
                    break
            await asyncio.sleep(0.05)
        assert refused is not None, "the stopping server kept accepting new calls"
        assert not in_flight.done()
        assert process.returncode is None

        await tx.rollback()
        response = await in_flight
        assert response.user.email == email
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        await blocker.close()
        await channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
