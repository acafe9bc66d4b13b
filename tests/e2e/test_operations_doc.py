"""The grpcurl commands of docs/operations.md and README.md, run as written with the real grpcurl
against ``delivery up``, on a mesh that has something for each to act on: an admin (made by the
docs' own command), a merchant with a menu, an order that a courier accepted and that has been
stuck for an hour, the courier's live position and the offers dispatch made."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from delivery.matching.v1 import matching_pb2, matching_service_pb2, matching_service_pb2_grpc
from delivery.order.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    merchant_pb2,
    merchant_service_pb2,
    merchant_service_pb2_grpc,
    order_pb2,
    order_service_pb2,
    order_service_pb2_grpc,
)
from mesh import clock
from mesh.cli import ENV_FILE
from mesh.embedded import free_port
from mesh.testing import bearer, spawn
from tests.integration.marketplace import eur, north

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"
#: The section of docs/operations.md whose every ``sh`` block the test runs.
SECTION = "## By hand, with grpcurl"
#: Central Helsinki, inside the box the docs' GetFleet asks about.
SHOP = common_pb2.LatLng(latitude=60.1699, longitude=24.9384)

#: For each block, a piece of its text that names it, and what its output must show. ``{order}``
#: and ``{driver}`` stand for the scenario's stuck order and its courier.
EXPECTED: dict[str, list[str]] = {
    # README.md
    "describe delivery.order.v1.OrderService.CreateOrder": [
        "delivery.order.v1.OrderService",
        "is a method:",
        "// Places an order with a merchant",
        '"status": "SERVING"',
    ],
    "AccountService/SignUp": ['"role": "ROLE_CUSTOMER"', "@example.com"],
    # docs/operations.md
    "pick() {": [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "delivery.order.v1.OrderService.ReassignOrder is a method:",
        "// Takes an order away from its courier",
        "google.protobuf.Duration stuck_duration = 1;",
    ],
    "for target in": ['"status": "SERVING"'],
    "delivery admin create": ["created admin ops@example.com"],
    "AccountService/Login": ['"role": "ROLE_ADMIN"', '"email": "ops@example.com"'],
    "pick stuckOrders.0.order.orderId": [
        '"stuckOrders"',
        '"stateDuration"',
        '"orderId": "{order}"',
        '"driverId": "{driver}"',
    ],
    "GetDriverLocation": [
        '"driverId": "{driver}"',
        '"latitude": 60.17',
        '"presence": "PRESENCE_ONLINE"',
        '"couriers"',
    ],
    "psql": ["{order}", "accepted"],
    "courier not moving": ['"orderId": "{order}"', '"status": "ORDER_STATUS_READY_FOR_PICKUP"'],
    "pick dispatchStatus.breakers": [
        '"state": "BREAKER_STATE_CLOSED"',
        'delivery_breaker_state{dependency="location_svc",service="matching"} 0.0',
        "matching_dispatch_round_requests_total",
    ],
    "RunRetention": ['"tableName": "idempotency_keys"', '"tableName": "outbox"'],
    "MatchingService/GetDispatchStatus\n": [
        '"orderId": "{order}"',
        '"offers"',
        '"driverId": "{driver}"',
        '"status": "OFFER_STATUS_ACCEPTED"',
        '"score"',
    ],
}
#: The block that finds the stuck order: the ones before it are run twice.
STUCK = "pick stuckOrders.0.order.orderId"
#: What the second run of a block shows instead (the rerun checks that nothing breaks).
EXPECTED_AGAIN = {"delivery admin create": ["ops@example.com is an admin already"]}


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def operations_blocks() -> list[str]:
    """Every ``sh`` block of the operator section of docs/operations.md, in order."""
    text = OPERATIONS.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return _sh_blocks(text[start : end if end != -1 else len(text)])


def readme_blocks() -> list[str]:
    """Every ``sh`` block of README.md that calls grpcurl."""
    return [block for block in _sh_blocks(README.read_text()) if "grpcurl" in block]


def _key(block: str) -> str:
    keys = [key for key in EXPECTED if key in block]
    assert len(keys) == 1, f"the block needs exactly one key of EXPECTED, has {keys}:\n{block}"
    return keys[0]


def test_every_grpcurl_block_of_the_docs_is_run_and_checked() -> None:
    ops, readme = operations_blocks(), readme_blocks()
    assert len(ops) >= 10 and len(readme) >= 2
    keys = [_key(block) for block in (*readme, *ops)]
    assert sorted(keys) == sorted(EXPECTED), "each key of EXPECTED names one block"
    # Outside the section, no block of operations.md uses grpcurl unchecked.
    text = OPERATIONS.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    for block in _sh_blocks(text[:start] + text[end:]):
        assert "grpcurl" not in block and "$G " not in block, block
    # No port is written into a command: they work on whatever ports `delivery up` chose.
    for block in (*readme, *ops):
        assert not re.search(r"127\.0\.0\.1:\d", block), block


@dataclass
class Scenario:
    order_id: str
    driver_id: str


def _stamp() -> timestamp_pb2.Timestamp:
    ms = clock.now_ms()
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


async def _sign_up(
    accounts: account_service_pb2_grpc.AccountServiceStub, role: int, **fields: object
) -> tuple[str, tuple[tuple[str, str], ...]]:
    signed = await accounts.SignUp(
        account_service_pb2.SignUpRequest(
            email=f"doc-{uuid.uuid4().hex[:12]}@example.com",
            password="password123",
            name="Doc",
            role=role,
            **fields,  # type: ignore[arg-type]
        ),
        timeout=30,
    )
    return signed.user.user_id, bearer(signed.session_token)


@contextlib.asynccontextmanager
async def stuck_order(env: dict[str, str]) -> AsyncIterator[Scenario]:
    """A ready order accepted by a courier who keeps streaming GPS near the shop, its state
    then made an hour old; the courier's GPS stream stays open until the block ends."""
    order_ch = grpc.aio.insecure_channel(env["ORDER"])
    location_ch = grpc.aio.insecure_channel(env["LOCATION"])
    matching_ch = grpc.aio.insecure_channel(env["MATCHING"])
    accounts = account_service_pb2_grpc.AccountServiceStub(order_ch)
    merchants = merchant_service_pb2_grpc.MerchantServiceStub(order_ch)
    orders = order_service_pb2_grpc.OrderServiceStub(order_ch)
    location = location_service_pb2_grpc.LocationServiceStub(location_ch)
    matching = matching_service_pb2_grpc.MatchingServiceStub(matching_ch)
    gps: grpc.aio.StreamStreamCall | None = None
    try:
        _, owner = await _sign_up(accounts, common_pb2.ROLE_MERCHANT)
        _, customer = await _sign_up(accounts, common_pb2.ROLE_CUSTOMER)
        driver_id, driver = await _sign_up(
            accounts, common_pb2.ROLE_DRIVER, vehicle_type=common_pb2.VEHICLE_TYPE_BICYCLE
        )
        merchant = (
            await merchants.CreateMerchant(
                merchant_service_pb2.CreateMerchantRequest(
                    request_id=uuid.uuid4().hex,
                    name="Docs Pizza",
                    address="Aleksanterinkatu 1",
                    location=SHOP,
                    delivery_radius_meters=5000,
                    average_prep_duration=duration_pb2.Duration(seconds=600),
                    currency_code="EUR",
                    handoff_policy=merchant_pb2.HANDOFF_POLICY_PIN,
                ),
                metadata=owner,
                timeout=30,
            )
        ).merchant
        await merchants.SetMerchantOpen(
            merchant_service_pb2.SetMerchantOpenRequest(
                request_id=uuid.uuid4().hex, merchant_id=merchant.merchant_id, open=True
            ),
            metadata=owner,
            timeout=30,
        )
        item = (
            await merchants.UpsertMenuItem(
                merchant_service_pb2.UpsertMenuItemRequest(
                    request_id=uuid.uuid4().hex,
                    merchant_id=merchant.merchant_id,
                    menu_item=merchant_pb2.MenuItem(
                        name="Margherita", price=eur(900), available=True
                    ),
                ),
                metadata=owner,
                timeout=30,
            )
        ).menu_item
        order = (
            await orders.CreateOrder(
                order_service_pb2.CreateOrderRequest(
                    request_id=uuid.uuid4().hex,
                    merchant_id=merchant.merchant_id,
                    items=[order_pb2.OrderItemInput(menu_item_id=item.menu_item_id, quantity=1)],
                    delivery_address="Mannerheimintie 2",
                    delivery_location=north(SHOP, 1200),
                    tip=eur(100),
                ),
                metadata=customer,
                timeout=30,
            )
        ).order

        # The courier comes on shift near the shop: available, GPS streaming, listening.
        await location.SetAvailability(
            location_service_pb2.SetAvailabilityRequest(
                request_id=uuid.uuid4().hex, status=common_pb2.DRIVER_STATUS_AVAILABLE
            ),
            metadata=driver,
            timeout=30,
        )

        async def fixes() -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
            for sequence in range(1, 100_000):
                yield location_service_pb2.StreamLocationRequest(
                    fix=location_pb2.LocationFix(
                        position=north(SHOP, 150),
                        accuracy_meters=5.0,
                        speed_mps=0.0,
                        device_time=_stamp(),
                        sequence=sequence,
                    )
                )
                await asyncio.sleep(1.0)

        gps = location.StreamLocation(fixes(), metadata=driver)
        await gps.read()  # the first ack: the courier is in the index
        offers = matching.StreamOffers(matching_service_pb2.StreamOffersRequest(), metadata=driver)

        ref = {"order_id": order.order_id}
        await orders.ConfirmOrder(
            order_service_pb2.ConfirmOrderRequest(**ref, request_id=uuid.uuid4().hex),
            metadata=owner,
            timeout=30,
        )
        # Ready: dispatch starts at once.
        await orders.MarkOrderReady(
            order_service_pb2.MarkOrderReadyRequest(**ref, request_id=uuid.uuid4().hex),
            metadata=owner,
            timeout=30,
        )
        async for message in offers:
            if (
                message.HasField("offer")
                and message.offer.order_id == order.order_id
                and message.offer.status == matching_pb2.OFFER_STATUS_PENDING
            ):
                await matching.AcceptOffer(
                    matching_service_pb2.AcceptOfferRequest(
                        offer_id=message.offer.offer_id, request_id=uuid.uuid4().hex
                    ),
                    metadata=driver,
                    timeout=30,
                )
                break
        offers.cancel()
        seen = await orders.GetOrder(
            order_service_pb2.GetOrderRequest(**ref), metadata=customer, timeout=30
        )
        assert seen.order.driver_id == driver_id

        # Stuck: nothing has happened to it for an hour.
        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            await conn.execute(
                "UPDATE orders SET updated_at = now() - interval '1 hour' WHERE id = $1::uuid",
                order.order_id,
            )
        finally:
            await conn.close()
        yield Scenario(order_id=order.order_id, driver_id=driver_id)
    finally:
        if gps is not None:
            gps.cancel()
        for channel in (order_ch, location_ch, matching_ch):
            await channel.close()


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = shlex.split(value)[0]
    return values


def _script(blocks: list[str]) -> str:
    """One bash script running ``blocks`` in order, each after a marker line; it stops at the
    first command that fails, saying which."""
    parts = [
        "set -eE -o pipefail",
        "trap 'echo \"__FAILED__ status $? at: $BASH_COMMAND\"' ERR",
    ]
    for number, block in enumerate(blocks):
        parts += [f"echo '__BLOCK__ {number}'", block]
    return "\n".join(parts) + "\n"


def _pgserver_bin() -> str:
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin")


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_docs_commands_work_on_a_running_mesh(tmp_path: Path) -> None:
    # Where a reader would be: the folder `delivery up` runs in, with the venv in it.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    data = tmp_path / ".delivery"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    metrics = f"127.0.0.1:{free_port()}"
    delivery = str(tmp_path / ".venv" / "bin" / "delivery")
    process, _ = await spawn(
        [delivery, "up", "--base-port", "0", "--data-dir", str(data)],
        {**env, "PYTHONUNBUFFERED": "1", "DELIVERY_MATCHING_METRICS_LISTEN": metrics},
        inherit_env=False,
        ready_timeout=180,
    )
    try:
        mesh_env = _env_file(data / ENV_FILE)
        assert mesh_env["MATCHING_METRICS"] == metrics
        readme, ops = readme_blocks(), operations_blocks()
        # Reruns must not break: the README's twice, and the operator's first steps again.
        again = ops[: next(i for i, b in enumerate(ops) if _key(b) == STUCK)]
        blocks = [*readme, *readme, *ops, *again]
        async with stuck_order(mesh_env) as scenario:
            bash = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                _script(blocks),
                cwd=tmp_path,
                env={**env, "PATH": f"{env.get('PATH', '')}:{_pgserver_bin()}"},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            raw, _ = await asyncio.wait_for(bash.communicate(), 300)
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 120)
    assert not (data / ENV_FILE).exists(), "the env file outlived the mesh"

    output = raw.decode(errors="replace")
    segments = re.split(r"^__BLOCK__ \d+\n", output, flags=re.MULTILINE)[1:]
    assert bash.returncode == 0, (
        f"block {len(segments) - 1} failed:\n{blocks[len(segments) - 1]}\n"
        f"--- its output:\n{segments[-1] if segments else output}"
    )
    assert len(segments) == len(blocks)
    seen: set[str] = set()
    for block, shown in zip(blocks, segments, strict=True):
        key = _key(block)
        expected = EXPECTED_AGAIN.get(key, EXPECTED[key]) if key in seen else EXPECTED[key]
        seen.add(key)
        for text in expected:
            wanted = text.replace("{order}", scenario.order_id)
            wanted = wanted.replace("{driver}", scenario.driver_id)
            assert wanted in shown, f"{wanted!r} not in the output of\n{block}\n---\n{shown}"
