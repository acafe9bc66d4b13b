"""Orders over real gRPC, PostgreSQL and Redis: placement, idempotency, races, the lifecycle."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import duration_pb2

from delivery.common.v1 import common_pb2
from delivery.order.v1 import merchant_pb2, merchant_service_pb2, order_pb2, order_service_pb2
from mesh.geo import haversine_m
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.domain.pricing import FeeSchedule
from order_svc.server import build_server
from tests.integration.marketplace import Caller, Market, details, eur

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


async def _count_orders(stores: Stores, customer: Caller) -> int:
    assert stores.pool is not None
    return int(
        await stores.pool.fetchval(
            "SELECT count(*) FROM orders WHERE customer_id = $1::uuid", customer.user_id
        )
    )


async def test_prices_come_from_the_menu(market: Market, stores: Stores) -> None:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)
    request = market.order_request(shop, pizza, quantity=2, size="L", extras=("Olives", "Egg"))
    order = (await market.orders.CreateOrder(request, metadata=customer.metadata)).order

    unit = 900 + 250 + 80 + 120
    distance = haversine_m(
        shop.location.latitude,
        shop.location.longitude,
        request.delivery_location.latitude,
        request.delivery_location.longitude,
    )
    fee = FeeSchedule().fee(distance)
    assert order.items[0].unit_price == eur(900)
    assert order.items[0].line_total == eur(2 * unit)
    assert {o.name for o in order.items[0].options} == {"L", "Olives", "Egg"}
    assert order.subtotal == eur(2 * unit)
    assert order.delivery_fee == eur(fee) and fee == 199 + 60 * math.ceil(distance / 1000 - 1)
    assert order.total == eur(2 * unit + fee + 200)
    assert order.status == common_pb2.ORDER_STATUS_PENDING
    assert len(order.delivery_pin) == 4 and order.delivery_pin.isdigit()

    # A later price change does not touch the placed order.
    pizza.price.CopyFrom(eur(5000))
    await market.merchants.UpsertMenuItem(_upsert(shop, pizza), metadata=owner.metadata)
    again = await market.orders.GetOrder(
        order_service_pb2.GetOrderRequest(order_id=order.order_id), metadata=customer.metadata
    )
    assert again.order.total == order.total
    assert again.order.items[0].unit_price == eur(900)

    # The next order pays the new price, although the shop's menu was cached by the last one.
    newer = await market.orders.CreateOrder(
        market.order_request(shop, pizza, quantity=1, size="M", extras=()),
        metadata=customer.metadata,
    )
    assert newer.order.subtotal == eur(5000)

    # And a shop that closed takes no more orders, whatever the cache remembers.
    await market.merchants.SetMerchantOpen(
        merchant_service_pb2.SetMerchantOpenRequest(
            request_id=uuid.uuid4().hex, merchant_id=shop.merchant_id, open=False
        ),
        metadata=owner.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    assert details(caught.value)[0] == "MERCHANT_CLOSED"


def _upsert(shop: merchant_pb2.Merchant, item: merchant_pb2.MenuItem):
    return merchant_service_pb2.UpsertMenuItemRequest(
        request_id=uuid.uuid4().hex, merchant_id=shop.merchant_id, menu_item=item
    )


async def test_bad_orders_name_the_field_and_write_nothing(market: Market, stores: Stores) -> None:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)

    def bad(**change: object) -> order_service_pb2.CreateOrderRequest:
        request = market.order_request(shop, pizza)
        for path, value in change.items():
            target = request
            *parents, name = path.split("__")
            for parent in parents:
                target = getattr(target, parent)
            if isinstance(value, list):
                del getattr(target, name)[:]
                getattr(target, name).extend(value)
            else:
                setattr(target, name, value)
        return request

    cases = [
        (bad(delivery_location__latitude=float("nan")), "delivery_location.latitude"),
        (bad(delivery_location__longitude=181.0), "delivery_location.longitude"),
        (bad(tip__amount_minor=-1), "tip.amount_minor"),
        (bad(items=[]), "items"),
        (bad(request_id=""), "request_id"),
        (bad(merchant_id="not-a-uuid"), "merchant_id"),
    ]
    zero = market.order_request(shop, pizza)
    zero.items[0].quantity = 0
    cases.append((zero, "items[0].quantity"))
    absurd = market.order_request(shop, pizza)
    absurd.items[0].quantity = 100_000
    cases.append((absurd, "items[0].quantity"))
    unknown = market.order_request(shop, pizza)
    unknown.items[0].menu_item_id = str(uuid.uuid4())
    cases.append((unknown, "items[0].menu_item_id"))
    two_sizes = market.order_request(shop, pizza)
    two_sizes.items[0].options.extend(market.choose(pizza, "S"))
    cases.append((two_sizes, "items[0].options"))
    too_many = market.order_request(shop, pizza, extras=("Olives", "Basil", "Chili", "Egg"))
    cases.append((too_many, "items[0].options"))

    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await market.orders.CreateOrder(request, metadata=customer.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in details(caught.value)[1], (field, details(caught.value))
    assert await _count_orders(stores, customer) == 0

    far = market.order_request(shop, pizza, distance_m=8000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CreateOrder(far, metadata=customer.metadata)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(caught.value)[0] == "OUT_OF_DELIVERY_AREA"
    assert await _count_orders(stores, customer) == 0


async def test_only_customers_order(market: Market) -> None:
    owner = await market.sign_up(MERCHANT)
    shop, pizza = await market.shop(owner)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CreateOrder(market.order_request(shop, pizza), metadata=owner.metadata)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_fifty_concurrent_duplicates_create_one_order(market: Market, stores: Stores) -> None:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)
    request = market.order_request(shop, pizza)
    replies = await asyncio.gather(
        *(market.orders.CreateOrder(request, metadata=customer.metadata) for _ in range(50))
    )
    assert len({r.order.order_id for r in replies}) == 1
    assert len({r.SerializeToString() for r in replies}) == 1
    assert await _count_orders(stores, customer) == 1
    assert stores.pool is not None
    events = await stores.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE aggregate_id = $1::uuid", replies[0].order.order_id
    )
    assert events == 1

    # The same key with a different body is refused and changes nothing.
    changed = market.order_request(shop, pizza, quantity=3, request_id=request.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CreateOrder(changed, metadata=customer.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value) == ("IDEMPOTENCY_KEY_REUSED", ["request_id"])
    assert await _count_orders(stores, customer) == 1

    # Another customer may use the same request id: keys are per caller.
    other = await market.sign_up(CUSTOMER)
    mine = await market.orders.CreateOrder(request, metadata=other.metadata)
    assert mine.order.order_id != replies[0].order.order_id

    # After 24 h a key is forgotten and the same request id places a new order.
    await stores.pool.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"
        " WHERE caller_id = $1::uuid",
        customer.user_id,
    )
    later = await market.orders.CreateOrder(request, metadata=customer.metadata)
    assert later.order.order_id != replies[0].order.order_id
    assert await _count_orders(stores, customer) == 2


async def test_hundred_concurrent_conflicting_transitions_have_one_winner(
    market: Market, stores: Stores
) -> None:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)
    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    ).order
    ref = {"order_id": order.order_id}

    def attempt(i: int):
        # Confirm and reject both leave PENDING and nothing else: every pair conflicts.
        if i % 2 == 0:
            return market.orders.ConfirmOrder(
                order_service_pb2.ConfirmOrderRequest(**ref), metadata=owner.metadata
            )
        return market.orders.RejectOrder(
            order_service_pb2.RejectOrderRequest(
                **ref, reason=order_pb2.CANCEL_REASON_MERCHANT_TOO_BUSY
            ),
            metadata=owner.metadata,
        )

    results = await asyncio.gather(*(attempt(i) for i in range(100)), return_exceptions=True)
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    assert len(wins) == 1
    for loss in losses:
        assert isinstance(loss, grpc.aio.AioRpcError), loss
        assert loss.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)
        assert details(loss)[0] in ("ILLEGAL_TRANSITION", "CONCURRENT_CHANGE")
    assert stores.pool is not None
    row = await stores.pool.fetchrow(
        "SELECT status, version FROM orders WHERE id = $1::uuid", order.order_id
    )
    assert row["version"] == 2
    history = await stores.pool.fetchval(
        "SELECT count(*) FROM order_status_history WHERE order_id = $1::uuid", order.order_id
    )
    assert history == 2  # placed + the one winner


async def test_a_customer_cannot_read_another_customers_order(market: Market) -> None:
    owner = await market.sign_up(MERCHANT)
    alice = await market.sign_up(CUSTOMER)
    bob = await market.sign_up(CUSTOMER)
    stranger_shop = await market.sign_up(MERCHANT)
    courier = await market.sign_up(DRIVER)
    shop, pizza = await market.shop(owner)
    order = (
        await market.orders.CreateOrder(market.order_request(shop, pizza), metadata=alice.metadata)
    ).order
    for outsider in (bob, stranger_shop, courier):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await market.orders.GetOrder(
                order_service_pb2.GetOrderRequest(order_id=order.order_id),
                metadata=outsider.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # The merchant sees it, without the customer's PIN.
    seen = await market.orders.GetOrder(
        order_service_pb2.GetOrderRequest(order_id=order.order_id), metadata=owner.metadata
    )
    assert seen.order.order_id == order.order_id and seen.order.delivery_pin == ""
    listed = await market.orders.ListOrders(
        order_service_pb2.ListOrdersRequest(), metadata=bob.metadata
    )
    assert list(listed.orders) == []


async def _lifecycle_to_pickup(
    market: Market, *, handoff: int = merchant_pb2.HANDOFF_POLICY_PIN
) -> tuple[Caller, Caller, Caller, order_pb2.Order]:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    courier = await market.sign_up(DRIVER)
    shop, pizza = await market.shop(owner, handoff=handoff)
    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    ).order
    ref = {"order_id": order.order_id}
    confirmed = await market.orders.ConfirmOrder(
        order_service_pb2.ConfirmOrderRequest(
            **ref, expected_version=1, estimated_prep_duration=duration_pb2.Duration(seconds=600)
        ),
        metadata=owner.metadata,
    )
    assert confirmed.order.HasField("confirm_time")
    assert confirmed.order.estimated_prep_duration.seconds == 600
    await market.orders.StartPreparing(
        order_service_pb2.StartPreparingRequest(**ref), metadata=owner.metadata
    )
    # Dispatch runs while the merchant prepares: assignment is not a status.
    assigned = await market.orders.AssignCourier(
        order_service_pb2.AssignCourierRequest(**ref, driver_id=courier.user_id),
        metadata=market.matching,
    )
    assert assigned.order.status == common_pb2.ORDER_STATUS_PREPARING
    assert assigned.order.driver_id == courier.user_id
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await market.orders.PickUpOrder(
            order_service_pb2.PickUpOrderRequest(**ref), metadata=courier.metadata
        )
    assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await market.orders.MarkOrderReady(
        order_service_pb2.MarkOrderReadyRequest(**ref), metadata=owner.metadata
    )
    picked = await market.orders.PickUpOrder(
        order_service_pb2.PickUpOrderRequest(**ref), metadata=courier.metadata
    )
    assert picked.order.status == common_pb2.ORDER_STATUS_PICKED_UP
    assert picked.order.HasField("pickup_time")
    return owner, customer, courier, order


async def test_the_whole_lifecycle_with_pin_ratings_and_notifications(
    market: Market, stores: Stores
) -> None:
    _, customer, courier, order = await _lifecycle_to_pickup(market)
    ref = {"order_id": order.order_id}

    # Only an operator assigns couriers; a customer cannot.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.AssignCourier(
            order_service_pb2.AssignCourierRequest(**ref, driver_id=courier.user_id),
            metadata=customer.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CompleteDelivery(
            order_service_pb2.CompleteDeliveryRequest(
                **ref, pin="0000" if order.delivery_pin != "0000" else "1111"
            ),
            metadata=courier.metadata,
        )
    assert details(caught.value)[0] == "PIN_MISMATCH"
    done = await market.orders.CompleteDelivery(
        order_service_pb2.CompleteDeliveryRequest(**ref, pin=order.delivery_pin),
        metadata=courier.metadata,
    )
    assert done.order.status == common_pb2.ORDER_STATUS_DELIVERED
    assert done.order.HasField("delivery_time")

    # A delivered order is final.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CancelOrder(
            order_service_pb2.CancelOrderRequest(**ref, reason=order_pb2.CANCEL_REASON_OTHER),
            metadata=await _admin_metadata(market),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Ratings: once per order per direction; averages follow.
    rate = market.orders.RateOrder
    await rate(
        order_service_pb2.RateOrderRequest(**ref, target=order_pb2.RATING_TARGET_DRIVER, score=4),
        metadata=customer.metadata,
    )
    await rate(
        order_service_pb2.RateOrderRequest(**ref, target=order_pb2.RATING_TARGET_MERCHANT, score=5),
        metadata=customer.metadata,
    )
    await rate(
        order_service_pb2.RateOrderRequest(**ref, target=order_pb2.RATING_TARGET_CUSTOMER, score=3),
        metadata=courier.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rate(
            order_service_pb2.RateOrderRequest(
                **ref, target=order_pb2.RATING_TARGET_DRIVER, score=1
            ),
            metadata=customer.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rate(
            order_service_pb2.RateOrderRequest(
                **ref, target=order_pb2.RATING_TARGET_DRIVER, score=9
            ),
            metadata=customer.metadata,
        )
    assert details(caught.value)[1] == ["score"]
    assert stores.pool is not None
    driver_avg = await stores.pool.fetchval(
        "SELECT rating_avg FROM drivers WHERE id = $1::uuid", courier.user_id
    )
    assert float(driver_avg) == 4.0
    merchant_avg = await stores.pool.fetchval(
        "SELECT rating_avg FROM merchants WHERE id = $1::uuid", order.merchant_id
    )
    assert float(merchant_avg) == 5.0

    # Every party heard about every change it was party to.
    feed = await market.orders.ListNotifications(
        order_service_pb2.ListNotificationsRequest(page_size=3), metadata=customer.metadata
    )
    assert len(feed.notifications) == 3 and feed.next_page_token
    rest = await market.orders.ListNotifications(
        order_service_pb2.ListNotificationsRequest(page_size=100, page_token=feed.next_page_token),
        metadata=customer.metadata,
    )
    kinds = [n.type for n in [*feed.notifications, *rest.notifications]]
    assert kinds[::-1] == [
        order_pb2.NOTIFICATION_TYPE_ORDER_PLACED,
        order_pb2.NOTIFICATION_TYPE_ORDER_CONFIRMED,
        order_pb2.NOTIFICATION_TYPE_ORDER_PREPARING,
        order_pb2.NOTIFICATION_TYPE_COURIER_ASSIGNED,
        order_pb2.NOTIFICATION_TYPE_ORDER_READY_FOR_PICKUP,
        order_pb2.NOTIFICATION_TYPE_ORDER_PICKED_UP,
        order_pb2.NOTIFICATION_TYPE_ORDER_DELIVERED,
    ]
    courier_feed = await market.orders.ListNotifications(
        order_service_pb2.ListNotificationsRequest(page_size=100), metadata=courier.metadata
    )
    assert len(courier_feed.notifications) == 4  # assigned, ready, picked up, delivered
    marked = await market.orders.MarkNotificationsRead(
        order_service_pb2.MarkNotificationsReadRequest(), metadata=customer.metadata
    )
    assert marked.marked_count == 7
    unread = await market.orders.ListNotifications(
        order_service_pb2.ListNotificationsRequest(unread_only=True), metadata=customer.metadata
    )
    assert list(unread.notifications) == []

    events = await stores.pool.fetch(
        "SELECT event_type FROM outbox WHERE aggregate_id = $1::uuid ORDER BY id", order.order_id
    )
    assert [e["event_type"] for e in events] == [
        "order.created",
        "order.confirm",
        "order.start_preparing",
        "order.assign_courier",
        "order.mark_ready",
        "order.pick_up",
        "order.deliver",
    ]


async def _admin_metadata(market: Market) -> tuple[tuple[str, str], ...]:
    return (await market.admin()).metadata


async def test_photo_proof_of_delivery(market: Market, stores: Stores) -> None:
    _, _, courier, order = await _lifecycle_to_pickup(
        market, handoff=merchant_pb2.HANDOFF_POLICY_PHOTO
    )
    ref = {"order_id": order.order_id}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CompleteDelivery(
            order_service_pb2.CompleteDeliveryRequest(**ref, pin=order.delivery_pin),
            metadata=courier.metadata,
        )
    assert details(caught.value)[0] == "PHOTO_REQUIRED"
    too_big = order_pb2.ProofOfDelivery(
        photo=b"x" * (5 * 1024 * 1024 + 1),
        content_type="image/jpeg",
        location=order.delivery_location,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CompleteDelivery(
            order_service_pb2.CompleteDeliveryRequest(**ref, proof_of_delivery=too_big),
            metadata=courier.metadata,
        )
    assert details(caught.value)[1] == ["proof_of_delivery.photo"]
    photo = b"\xff\xd8\xff\xe0" + b"jpeg" * 1000
    done = await market.orders.CompleteDelivery(
        order_service_pb2.CompleteDeliveryRequest(
            **ref,
            proof_of_delivery=order_pb2.ProofOfDelivery(
                photo=photo, content_type="image/jpeg", location=order.delivery_location
            ),
        ),
        metadata=courier.metadata,
    )
    assert done.order.status == common_pb2.ORDER_STATUS_DELIVERED
    assert stores.pool is not None
    stored = await stores.pool.fetchrow(
        "SELECT kind, photo, lat FROM delivery_proofs WHERE order_id = $1::uuid", order.order_id
    )
    assert stored["kind"] == "photo" and bytes(stored["photo"]) == photo
    assert stored["lat"] == pytest.approx(order.delivery_location.latitude)


async def test_wrong_pins_lock_out_after_five(market: Market) -> None:
    _, _, courier, order = await _lifecycle_to_pickup(market)
    wrong = "0000" if order.delivery_pin != "0000" else "1111"
    request = order_service_pb2.CompleteDeliveryRequest(order_id=order.order_id, pin=wrong)
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await market.orders.CompleteDelivery(request, metadata=courier.metadata)
        assert details(caught.value)[0] == "PIN_MISMATCH"
    request.pin = order.delivery_pin
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CompleteDelivery(request, metadata=courier.metadata)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_cancellation_rules_and_who_pays(market: Market) -> None:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)

    async def place() -> order_pb2.Order:
        return (
            await market.orders.CreateOrder(
                market.order_request(shop, pizza), metadata=customer.metadata
            )
        ).order

    def cancel(order: order_pb2.Order, who: Caller):
        return market.orders.CancelOrder(
            order_service_pb2.CancelOrderRequest(
                order_id=order.order_id, reason=order_pb2.CANCEL_REASON_CUSTOMER_CHANGED_MIND
            ),
            metadata=who.metadata,
        )

    early = await place()
    cancelled = (await cancel(early, customer)).order
    assert cancelled.status == common_pb2.ORDER_STATUS_CANCELLED
    assert cancelled.cancellation.refund == early.total
    assert cancelled.cancellation.cancellation_fee.amount_minor == 0
    assert cancelled.cancellation.cancelled_by == common_pb2.ROLE_CUSTOMER
    assert cancelled.HasField("cancel_time")

    late = await place()
    for step in (market.orders.ConfirmOrder, market.orders.StartPreparing):
        request_type = (
            order_service_pb2.ConfirmOrderRequest
            if step == market.orders.ConfirmOrder
            else order_service_pb2.StartPreparingRequest
        )
        await step(request_type(order_id=late.order_id), metadata=owner.metadata)
    charged = (await cancel(late, customer)).order
    assert charged.cancellation.cancellation_fee == late.subtotal
    assert charged.cancellation.refund.amount_minor == (
        late.delivery_fee.amount_minor + late.tip.amount_minor
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.CancelOrder(
            order_service_pb2.CancelOrderRequest(order_id=late.order_id),
            metadata=customer.metadata,
        )
    assert details(caught.value)[1] == ["reason"]


async def test_problem_reports_are_appended(market: Market, stores: Stores) -> None:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)
    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    ).order
    report = await market.orders.ReportProblem(
        order_service_pb2.ReportProblemRequest(
            order_id=order.order_id,
            reason=order_pb2.PROBLEM_REASON_ORDER_LATE,
            description="still waiting",
        ),
        metadata=customer.metadata,
    )
    assert report.report.reason == order_pb2.PROBLEM_REASON_ORDER_LATE
    assert report.report.reporter_role == common_pb2.ROLE_CUSTOMER
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.ReportProblem(
            order_service_pb2.ReportProblemRequest(order_id=order.order_id),
            metadata=owner.metadata,
        )
    assert details(caught.value)[1] == ["reason"]
    assert stores.pool is not None
    with pytest.raises(Exception, match="append-only"):
        await stores.pool.execute("UPDATE problem_reports SET description = 'edited'")


async def test_admins_list_stuck_orders_and_reassign(market: Market, stores: Stores) -> None:
    admin = await market.admin()
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    first, second = await market.sign_up(DRIVER), await market.sign_up(DRIVER)
    shop, pizza = await market.shop(owner)
    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    ).order
    ref = {"order_id": order.order_id}
    await market.orders.ConfirmOrder(
        order_service_pb2.ConfirmOrderRequest(**ref), metadata=owner.metadata
    )
    await market.orders.AssignCourier(
        order_service_pb2.AssignCourierRequest(**ref, driver_id=first.user_id),
        metadata=market.matching,
    )
    # A second assignment of another courier loses: the order has one.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.AssignCourier(
            order_service_pb2.AssignCourierRequest(**ref, driver_id=second.user_id),
            metadata=market.matching,
        )
    assert details(caught.value)[0] == "COURIER_ALREADY_ASSIGNED"
    assert stores.pool is not None
    await stores.pool.execute(
        "UPDATE orders SET updated_at = now() - interval '2 hours' WHERE id = $1::uuid",
        order.order_id,
    )
    stuck = await market.orders.ListStuckOrders(
        order_service_pb2.ListStuckOrdersRequest(
            stuck_duration=duration_pb2.Duration(seconds=3600), page_size=100
        ),
        metadata=admin.metadata,
    )
    assert order.order_id in [s.order.order_id for s in stuck.stuck_orders]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.ListStuckOrders(
            order_service_pb2.ListStuckOrdersRequest(), metadata=customer.metadata
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    moved = await market.orders.ReassignOrder(
        order_service_pb2.ReassignOrderRequest(
            **ref, new_driver_id=second.user_id, reason="first courier crashed"
        ),
        metadata=admin.metadata,
    )
    assert moved.order.driver_id == second.user_id
    cleared = await market.orders.ReassignOrder(
        order_service_pb2.ReassignOrderRequest(**ref, reason="back to dispatch"),
        metadata=admin.metadata,
    )
    assert cleared.order.driver_id == ""


async def test_a_courier_who_is_only_offered_an_order_cannot_read_it(
    market: Market, stores: Stores
) -> None:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    courier = await market.sign_up(DRIVER)
    shop, pizza = await market.shop(owner)
    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    ).order
    request = order_service_pb2.GetOrderRequest(order_id=order.order_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.GetOrder(request, metadata=courier.metadata)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert stores.pool is not None
    # Offers are matching's to make; the row is what it would write.
    offer_id = await stores.pool.fetchval(
        "INSERT INTO driver_offers (order_id, driver_id, expires_at)"
        " VALUES ($1::uuid, $2::uuid, now() + interval '30 seconds') RETURNING id",
        order.order_id,
        courier.user_id,
    )
    # The Offer is what a courier decides on; the order (address, customer) is theirs to read
    # once assigned (tests/integration/test_order_contracts.py).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.GetOrder(request, metadata=courier.metadata)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await stores.pool.execute("UPDATE driver_offers SET status = 'expired' WHERE id = $1", offer_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.GetOrder(request, metadata=courier.metadata)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_retention_runs_for_admins_only(market: Market, stores: Stores) -> None:
    admin = await market.admin()
    customer = await market.sign_up(CUSTOMER)
    assert stores.pool is not None
    await stores.pool.execute(
        "INSERT INTO idempotency_keys (caller_id, operation, request_id, request_hash,"
        " expires_at) VALUES ($1::uuid, 'test', 'old', 'x', now() - interval '1 hour')",
        customer.user_id,
    )
    dry = await market.orders.RunRetention(
        order_service_pb2.RunRetentionRequest(dry_run=True), metadata=admin.metadata
    )
    counts = {r.table_name: r.rows_deleted for r in dry.results}
    assert counts["idempotency_keys"] >= 1
    done = await market.orders.RunRetention(
        order_service_pb2.RunRetentionRequest(), metadata=admin.metadata
    )
    assert {r.table_name: r.rows_deleted for r in done.results}["idempotency_keys"] >= 1
    left = await stores.pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE caller_id = $1::uuid", customer.user_id
    )
    assert left == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await market.orders.RunRetention(
            order_service_pb2.RunRetentionRequest(), metadata=customer.metadata
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
