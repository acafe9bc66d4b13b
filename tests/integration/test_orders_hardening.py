"""Retries, abuse and malformed input against OrderService: answered, refused, never INTERNAL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from delivery.common.v1 import common_pb2
from delivery.order.v1 import merchant_service_pb2, order_pb2, order_service_pb2
from mesh.auth import service_token
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import bearer, serving, settings_for_test
from order_svc.server import build_server
from tests.integration.marketplace import Market, details
from tests.integration.test_orders import _lifecycle_to_pickup

CUSTOMER, DRIVER, MERCHANT = (
    common_pb2.ROLE_CUSTOMER,
    common_pb2.ROLE_DRIVER,
    common_pb2.ROLE_MERCHANT,
)


@pytest.fixture
async def market(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[Market]:
    settings = settings_for_test("order", store_settings)
    async with serving(build_server, settings, stores) as (_, channel):
        yield Market(channel, stores, settings)


async def _placed(market: Market):
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)
    request = market.order_request(shop, pizza)
    order = (await market.orders.CreateOrder(request, metadata=customer.metadata)).order
    return owner, customer, shop, request, order


async def test_service_tokens_need_the_secret_a_known_name_and_the_right_service(
    market: Market,
) -> None:
    owner, _, _, _, order = await _placed(market)
    await market.orders.ConfirmOrder(
        order_service_pb2.ConfirmOrderRequest(order_id=order.order_id), metadata=owner.metadata
    )
    courier = await market.sign_up(DRIVER)
    request = order_service_pb2.AssignCourierRequest(
        order_id=order.order_id, driver_id=courier.user_id
    )
    for token in (
        service_token("dev-only-insecure-service-secret", "matching"),  # a guessable secret
        service_token(market._settings.auth.service_secret, "anything"),  # not a service
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await market.orders.AssignCourier(request, metadata=bearer(token))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    tracking = bearer(service_token(market._settings.auth.service_secret, "tracking"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.AssignCourier(request, metadata=tracking)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_concurrent_pin_guesses_stop_at_the_limit(market: Market) -> None:
    _, _, courier, order = await _lifecycle_to_pickup(market)
    wrong = "0000" if order.delivery_pin != "0000" else "1111"
    request = order_service_pb2.CompleteDeliveryRequest(order_id=order.order_id, pin=wrong)
    results = await asyncio.gather(
        *(market.orders.CompleteDelivery(request, metadata=courier.metadata) for _ in range(20)),
        return_exceptions=True,
    )
    reasons = [details(r)[0] for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(reasons) == 20
    assert reasons.count("PIN_MISMATCH") == 5
    assert reasons.count("PIN_ATTEMPTS_EXCEEDED") == 15


async def test_a_create_retry_gets_its_order_even_after_the_shop_closed(
    market: Market, stores: Stores
) -> None:
    owner, customer, shop, request, order = await _placed(market)
    await market.merchants.SetMerchantOpen(
        merchant_service_pb2.SetMerchantOpenRequest(
            request_id=uuid.uuid4().hex, merchant_id=shop.merchant_id, open=False
        ),
        metadata=owner.metadata,
    )
    again = await market.orders.CreateOrder(request, metadata=customer.metadata)
    assert again.order.order_id == order.order_id
    assert stores.pool is not None
    count = await stores.pool.fetchval(
        "SELECT count(*) FROM orders WHERE customer_id = $1::uuid", customer.user_id
    )
    assert count == 1


async def test_transition_retries_are_answered_and_reused_keys_refused(
    market: Market, stores: Stores
) -> None:
    owner, customer, _, _, order = await _placed(market)
    confirm = order_service_pb2.ConfirmOrderRequest(order_id=order.order_id, request_id="confirm-1")
    first = await market.orders.ConfirmOrder(confirm, metadata=owner.metadata)
    retry = await market.orders.ConfirmOrder(confirm, metadata=owner.metadata)
    assert retry.order.version == first.order.version == 2
    assert retry.order.status == common_pb2.ORDER_STATUS_CONFIRMED
    other = order_service_pb2.ConfirmOrderRequest(
        order_id=order.order_id, request_id="confirm-1", expected_version=1
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.ConfirmOrder(other, metadata=owner.metadata)
    assert details(caught.value)[0] == "IDEMPOTENCY_KEY_REUSED"
    assert stores.pool is not None
    events = await stores.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE aggregate_id = $1::uuid", order.order_id
    )
    assert events == 2  # placed + one confirmation

    report = order_service_pb2.ReportProblemRequest(
        order_id=order.order_id,
        request_id="problem-1",
        reason=order_pb2.PROBLEM_REASON_ORDER_LATE,
        description="late",
    )
    one = await market.orders.ReportProblem(report, metadata=customer.metadata)
    two = await market.orders.ReportProblem(report, metadata=customer.metadata)
    assert one.report.problem_id == two.report.problem_id
    reports = await stores.pool.fetchval(
        "SELECT count(*) FROM problem_reports WHERE order_id = $1::uuid", order.order_id
    )
    assert reports == 1


async def test_assigning_the_same_courier_again_changes_nothing(
    market: Market, stores: Stores
) -> None:
    owner, _, _, _, order = await _placed(market)
    courier = await market.sign_up(DRIVER)
    await market.orders.ConfirmOrder(
        order_service_pb2.ConfirmOrderRequest(order_id=order.order_id), metadata=owner.metadata
    )
    request = order_service_pb2.AssignCourierRequest(
        order_id=order.order_id, driver_id=courier.user_id
    )
    first = await market.orders.AssignCourier(request, metadata=market.matching)
    second = await market.orders.AssignCourier(request, metadata=market.matching)
    assert first.order.version == second.order.version


async def test_reassigning_announces_the_new_courier(market: Market, stores: Stores) -> None:
    owner, _, _, _, order = await _placed(market)
    admin = await market.admin()
    first, second = await market.sign_up(DRIVER), await market.sign_up(DRIVER)
    ref = {"order_id": order.order_id}
    await market.orders.ConfirmOrder(
        order_service_pb2.ConfirmOrderRequest(**ref), metadata=owner.metadata
    )
    await market.orders.AssignCourier(
        order_service_pb2.AssignCourierRequest(**ref, driver_id=first.user_id),
        metadata=market.matching,
    )
    await market.orders.ReassignOrder(
        order_service_pb2.ReassignOrderRequest(**ref, new_driver_id=second.user_id),
        metadata=admin.metadata,
    )
    await market.orders.ReassignOrder(
        order_service_pb2.ReassignOrderRequest(**ref), metadata=admin.metadata
    )
    assert stores.pool is not None
    kinds = await stores.pool.fetch(
        "SELECT event_type FROM outbox WHERE aggregate_id = $1::uuid ORDER BY id", order.order_id
    )
    assert [k["event_type"] for k in kinds][-3:] == [
        "order.assign_courier",
        "order.assign_courier",
        "order.reassign_courier",
    ]


async def test_malformed_input_is_invalid_argument_not_internal(market: Market) -> None:
    owner, customer, _, _, order = await _placed(market)
    braces = "{" + order.order_id + "}"
    cases = [
        (
            market.orders.GetOrder,
            order_service_pb2.GetOrderRequest(order_id=braces),
            customer,
            "order_id",
        ),
        (
            market.orders.ListOrders,
            order_service_pb2.ListOrdersRequest(page_token="bm90LWEtZGF0ZR9hYmM"),
            customer,
            "page_token",
        ),
        (
            market.orders.ListNotifications,
            order_service_pb2.ListNotificationsRequest(page_token="MjM0NTY3ODkwMTIzNDU2Nzg5MDEy"),
            customer,
            "page_token",
        ),
        (
            market.orders.MarkNotificationsRead,
            order_service_pb2.MarkNotificationsReadRequest(notification_ids=["9" * 25]),
            customer,
            "notification_ids[0]",
        ),
        (
            market.orders.ReportProblem,
            order_service_pb2.ReportProblemRequest(order_id=order.order_id, reason=99),
            customer,
            "reason",
        ),
        (
            market.orders.RateOrder,
            order_service_pb2.RateOrderRequest(order_id=order.order_id, target=99, score=3),
            customer,
            "target",
        ),
    ]
    for call, request, who, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, metadata=who.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, caught.value)
        assert field in details(caught.value)[1], (field, details(caught.value))

    long_note = market.order_request(*(await market.shop(owner)))
    long_note.items[0].note = "x" * 700
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CreateOrder(long_note, metadata=customer.metadata)
    assert details(caught.value)[1] == ["items[0].note"]
