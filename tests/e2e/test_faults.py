"""Faults over real processes: a mesh run by `delivery up` on its own Redis and database, apps
placing orders and driving them to delivery while a service is killed with SIGKILL, or while
Redis restarts without its data. Harness: tests/e2e/faults.py.

Redis holds nothing durable (docs: sessions, positions and presence, offer pushes, fences, event
streams with their consumer groups and dedupe records). After it restarts empty: sessions are
gone, so apps are refused UNAUTHENTICATED and log in again; couriers' next fixes refill the
index; consumers make their groups again on NOGROUP; and events published but not yet read are
gone, so matching_svc finds orders waiting without a dispatch job in PostgreSQL by itself.

Nothing here measures time: every bound is an "eventually" (tests/e2e/faults.py, BOUND_S).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import grpc
import pytest
from redis.asyncio import Redis

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_service_pb2
from delivery.order.v1 import account_service_pb2
from mesh.auth import service_token
from mesh.cli import SERVICES
from mesh.migrate import migrate
from tests.e2e.faults import (
    Apps,
    Flow,
    Ledger,
    Person,
    UpMesh,
    delivery_up,
    private_redis,
    until,
    within,
)
from tests.integration.marketplace import details, north

S = common_pb2
#: Orders placed and driven to delivery around each kill.
ORDERS_PER_KILL = 3
COURIERS = 4
#: When each service is killed: once one more order of its batch is placed ("created"), or
#: once one more was accepted by a courier ("accepted", when its first order is on its way to
#: pickup and the later ones are still being placed and confirmed).
KILLED_ONCE = {
    "order": "accepted",
    "location": "created",
    "matching": "accepted",
    "tracking": "accepted",
    "edge": "created",
}
#: The mesh's settings: offers short enough that one lost with a dead stream passes on soon.
MESH_SETTINGS = {"offer_ttl_s": "15", "dispatch_tick_s": "0.1", "log_level": "WARNING"}


@pytest.fixture(scope="module")
async def fault_database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A database of these tests alone: the relay of the mesh under test publishes every
    unpublished outbox row it finds, and other tests leave theirs."""
    name = f"delivery_faults_{uuid.uuid4().hex[:12]}"
    url = urlunparse(urlparse(pg_admin_url)._replace(path="/" + name))
    await migrate(url)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(pg_admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _somewhere() -> common_pb2.LatLng:
    return common_pb2.LatLng(latitude=random.uniform(-50, 50), longitude=random.uniform(-170, 170))


async def _market(apps: Apps, ledger: Ledger) -> tuple[Flow, list[Person], dict[str, Person]]:
    """A shop, couriers streaming near it, two customers; the flow, customers and everyone."""
    owner = await apps.sign_up(S.ROLE_MERCHANT)
    shop_at = _somewhere()
    flow = Flow(apps, ledger, owner, await apps.shop(owner, shop_at), shop_at)
    for n in range(COURIERS):
        await flow.add_courier(north(shop_at, 200 + 150 * n))
    customers = [await apps.sign_up(S.ROLE_CUSTOMER) for _ in range(2)]
    people = {p.user_id: p for p in [owner, *customers]}
    people.update({c.person.user_id: c.person for c in flow.couriers.values()})
    return flow, customers, people


async def _all_of(what: str, tasks: list[asyncio.Task[Any]]) -> list[Any]:
    """The tasks' results; the others are cancelled as soon as one fails."""
    try:
        return await within(what, asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _restarted(mesh: UpMesh, service: str, old_pid: int) -> int:
    """Waits until ``delivery up`` runs ``service`` again in a new process that serves on the
    same port; its pid."""
    pid = 0

    async def back() -> bool:
        nonlocal pid
        mesh.alive()
        pid = mesh.pids().get(service, 0)
        return pid not in (0, old_pid) and await mesh.serving(service)

    await until(f"delivery up restarts {service} on port {mesh.ports[service]}", back)
    return pid


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_each_service_killed_in_turn_while_orders_flow_loses_nothing(
    fault_database_url: str, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as redis:
        await redis.started()
        async with delivery_up(tmp_path, fault_database_url, redis.url, **MESH_SETTINGS) as mesh:
            apps = Apps(mesh.ports)
            pool = await asyncpg.create_pool(fault_database_url, min_size=1, max_size=4)
            ledger = Ledger()
            flow: Flow | None = None
            try:
                flow, customers, people = await _market(apps, ledger)
                for victim in SERVICES:
                    before = mesh.pids()
                    assert set(before) == set(SERVICES), before
                    created = len(getattr(ledger, KILLED_ONCE[victim]))

                    async def placed_after(pause_s: float, customer: Person) -> str:
                        assert flow is not None
                        await asyncio.sleep(pause_s)
                        return await flow.order(customer)

                    batch = [
                        asyncio.create_task(placed_after(0.5 * n, customers[n % 2]))
                        for n in range(ORDERS_PER_KILL)
                    ]

                    async def under_way(
                        count: int = created,
                        batch: list[asyncio.Task[str]] = batch,
                        moment: str = KILLED_ONCE[victim],
                    ) -> bool:
                        # A failure surfaces here rather than after the kill.
                        for task in batch:
                            if task.done():
                                task.result()
                        return len(getattr(ledger, moment)) > count

                    when = f"an order {KILLED_ONCE[victim]} before killing {victim}"
                    await until(when, under_way)
                    os.kill(before[victim], signal.SIGKILL)
                    try:
                        await _restarted(mesh, victim, before[victim])
                        done = await _all_of(f"the orders around the {victim} kill", batch)
                    finally:
                        for task in batch:
                            task.cancel()
                    assert len(done) == ORDERS_PER_KILL
                    # One fault stays one fault: nothing else was restarted.
                    after = mesh.pids()
                    assert {k: v for k, v in after.items() if k != victim} == {
                        k: v for k, v in before.items() if k != victim
                    }
                    print(
                        f"{victim} killed: {ORDERS_PER_KILL} orders delivered;"
                        f" UNAVAILABLE retries so far {apps.counts.unavailable}"
                    )
                assert ledger.delivered == set(ledger.created)
                assert len(ledger.created) == ORDERS_PER_KILL * len(SERVICES)
                await ledger.verify(apps, pool, people)
            finally:
                if flow is not None:
                    for courier in flow.couriers.values():
                        await courier.stop()
                await apps.close()
                await pool.close()


async def _stream_groups(redis: Redis) -> set[tuple[str, str]]:
    """Every (event stream, consumer group) in Redis."""
    found = set()
    async for key in redis.scan_iter(match="events:*", _type="stream"):
        stream = key.decode()
        if stream.endswith(":dead"):
            continue
        for group in await redis.xinfo_groups(stream):
            name = group["name"]
            found.add((stream, name.decode() if isinstance(name, bytes) else name))
    return found


async def _code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_redis_restarted_empty_sessions_end_the_index_refills_and_dispatch_resumes(
    fault_database_url: str, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as redis_server:
        await redis_server.started()
        async with delivery_up(
            tmp_path, fault_database_url, redis_server.url, **MESH_SETTINGS
        ) as mesh:
            apps = Apps(mesh.ports)
            pool = await asyncpg.create_pool(fault_database_url, min_size=1, max_size=4)
            redis = Redis.from_url(redis_server.url)
            ledger = Ledger()
            flow: Flow | None = None
            try:
                flow, [customer, other], people = await _market(apps, ledger)
                # Before: the mesh delivers, and its consumer groups exist.
                await flow.order(customer)
                groups = await _stream_groups(redis)
                assert {g for _, g in groups} >= {"matching"}, groups
                old_session = customer.metadata
                run_id = redis_server.cli("info", "server")

                # An order whose events are published while matching_svc is behind (here:
                # stopped), so that they are lost with Redis before matching reads them.
                matching = mesh.pids()["matching"]
                os.kill(matching, signal.SIGSTOP)
                try:
                    first_change = len(ledger.changes)
                    behind = asyncio.create_task(flow.order(other))

                    async def ready_and_announced() -> bool:
                        if behind.done():
                            behind.result()
                        ready = [
                            order_id
                            for order_id, status, _ in ledger.changes[first_change:]
                            if status == S.ORDER_STATUS_READY_FOR_PICKUP
                        ]
                        return bool(ready) and not await pool.fetchval(
                            "SELECT count(*) FROM outbox"
                            " WHERE aggregate_id = $1::uuid AND published_at IS NULL",
                            ready[0],
                        )

                    await until("an order ready with its events published", ready_and_announced)
                    await redis_server.restart_empty()
                finally:
                    os.kill(matching, signal.SIGCONT)
                assert redis_server.cli("info", "server") != run_id

                # Sessions lived in Redis only: the old one is refused, and the app logs in.
                async def refused() -> bool:
                    code = await _code_of(
                        apps.accounts.GetMe(
                            account_service_pb2.GetMeRequest(), metadata=old_session, timeout=30
                        )
                    )
                    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
                    return code == grpc.StatusCode.UNAUTHENTICATED

                await until("the lost session is refused", refused)
                try:
                    await apps.accounts.GetMe(
                        account_service_pb2.GetMeRequest(), metadata=old_session, timeout=30
                    )
                except grpc.aio.AioRpcError as err:
                    assert details(err)[0] == "SESSION_INVALID"

                # The couriers' next fixes file them in the geo index again (busy or not: the
                # event that frees the last order's courier may have been lost with Redis).
                service = Person("matching", "", 0, service_token(mesh.secret, "matching"))
                indexed: list[Any] = []

                async def refilled() -> bool:
                    assert flow is not None
                    found = await apps.call(
                        apps.location.FindNearbyDrivers,
                        location_service_pb2.FindNearbyDriversRequest(
                            center=flow.shop_at, radius_meters=5000, limit=100, include_busy=True
                        ),
                        service,
                        "FindNearbyDrivers",
                    )
                    indexed[:] = found.drivers
                    return {d.driver_id for d in found.drivers} == set(flow.couriers)

                await until(
                    "every streaming courier is in the geo index again",
                    refilled,
                    seen=lambda: (list(flow.couriers), indexed) if flow else None,
                )

                # Dispatch resumes: an order placed now gets an offer and is delivered, and so
                # is the order whose events were lost.
                await flow.order(customer)
                assert customer.logins >= 2
                await within("the order whose events were lost is delivered", behind)

                # The services made their consumer groups again by themselves.
                async def regrouped() -> bool:
                    return groups <= await _stream_groups(redis)

                await until("every consumer group exists again", regrouped)
                assert ledger.delivered == set(ledger.created)
                await ledger.verify(apps, pool, people)
            finally:
                if flow is not None:
                    for courier in flow.couriers.values():
                        await courier.stop()
                await apps.close()
                await pool.close()
                await redis.aclose()
