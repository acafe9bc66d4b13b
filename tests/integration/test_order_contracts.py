"""OrderService against its contract (protos/delivery/order/v1/order_service.proto), over real
gRPC, PostgreSQL and Redis: bounded refusals, the documented status codes, who rates whom,
what a merely offered courier may read, and a page of orders read in a constant number of
statements."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from delivery.common.v1 import common_pb2
from delivery.order.v1 import merchant_pb2, order_pb2, order_service_pb2
from mesh.settings import StoreSettings
from mesh.stores import Stores, db_pool
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server
from tests.integration.marketplace import Caller, Market, details, north
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


def _pool(stores: Stores) -> asyncpg.Pool:
    assert stores.pool is not None
    return stores.pool


async def _refused(call: Any, request: Any, who: Caller) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, metadata=who.metadata)
    return caught.value


def _violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(err)
    assert status is not None
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [(v.field, v.description) for v in bad.field_violations]
    return found


# --- MarkNotificationsRead: the documented maximum, and a bounded refusal ----------------------


async def test_mark_read_refuses_more_than_500_ids_and_marks_nothing(
    market: Market, stores: Stores
) -> None:
    _, customer, _, _ = await _lifecycle_to_pickup(market)
    unread = "SELECT count(*) FROM notifications WHERE recipient_id = $1::uuid AND read_at IS NULL"
    before = await _pool(stores).fetchval(unread, customer.user_id)
    assert before > 0
    ids = [
        n.notification_id
        for n in (
            await market.orders.ListNotifications(
                order_service_pb2.ListNotificationsRequest(page_size=100),
                metadata=customer.metadata,
            )
        ).notifications
    ]
    # 501 well-formed ids, the caller's own among them: over the limit, so nothing happens.
    too_many = ids + [str(10**15 + i) for i in range(501 - len(ids))]
    err = await _refused(
        market.orders.MarkNotificationsRead,
        order_service_pb2.MarkNotificationsReadRequest(notification_ids=too_many),
        customer,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = _violations(err)
    assert field == "notification_ids" and "500" in description and "501" in description
    assert await _pool(stores).fetchval(unread, customer.user_id) == before

    # Exactly 500 is allowed: unknown ids are ignored, the caller's own are marked.
    at_most = ids + [str(10**15 + i) for i in range(500 - len(ids))]
    marked = await market.orders.MarkNotificationsRead(
        order_service_pb2.MarkNotificationsReadRequest(notification_ids=at_most),
        metadata=customer.metadata,
    )
    assert marked.marked_count == before
    assert await _pool(stores).fetchval(unread, customer.user_id) == 0


async def test_many_malformed_ids_get_a_small_invalid_argument(market: Market) -> None:
    customer = await market.sign_up(CUSTOMER)
    # 200,000 malformed ids used to build one violation each: a 10 MB trailer the client saw as
    # RESOURCE_EXHAUSTED. The limit answers first, in one violation.
    err = await _refused(
        market.orders.MarkNotificationsRead,
        order_service_pb2.MarkNotificationsReadRequest(notification_ids=["x"] * 200_000),
        customer,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in _violations(err)] == ["notification_ids"]

    # Within the limit, malformed ids are named up to five, then counted.
    ids = ["7"] * 500
    for i in (3, 10, 11, 12, 40, 41, 499):
        ids[i] = f"not-an-id-{i}"
    err = await _refused(
        market.orders.MarkNotificationsRead,
        order_service_pb2.MarkNotificationsReadRequest(notification_ids=ids),
        customer,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(err)
    assert [f for f, _ in violations] == [
        "notification_ids[3]",
        "notification_ids[10]",
        "notification_ids[11]",
        "notification_ids[12]",
        "notification_ids[40]",
        "notification_ids",
    ]
    assert "7" in violations[-1][1]
    assert len(err.details() or "") < 1000


# --- the documented status codes -----------------------------------------------------------


async def test_a_wrong_pin_is_invalid_argument_and_attempts_stay_limited(
    market: Market, stores: Stores
) -> None:
    _, _, courier, order = await _lifecycle_to_pickup(market)
    wrong = "0000" if order.delivery_pin != "0000" else "1111"
    request = order_service_pb2.CompleteDeliveryRequest(order_id=order.order_id, pin=wrong)
    for _ in range(5):
        err = await _refused(market.orders.CompleteDelivery, request, courier)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err) == ("PIN_MISMATCH", ["pin"])
    request.pin = order.delivery_pin
    err = await _refused(market.orders.CompleteDelivery, request, courier)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = await _pool(stores).fetchval(
        "SELECT status FROM orders WHERE id = $1::uuid", order.order_id
    )
    assert status == "picked_up"


async def test_a_proof_the_policy_does_not_allow_is_invalid_argument(market: Market) -> None:
    _, _, courier, photo_only = await _lifecycle_to_pickup(
        market, handoff=merchant_pb2.HANDOFF_POLICY_PHOTO
    )
    err = await _refused(
        market.orders.CompleteDelivery,
        order_service_pb2.CompleteDeliveryRequest(
            order_id=photo_only.order_id, pin=photo_only.delivery_pin
        ),
        courier,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err)[0] == "PHOTO_REQUIRED"

    _, _, courier, pin_only = await _lifecycle_to_pickup(market)
    photo = order_pb2.ProofOfDelivery(
        photo=b"\xff\xd8\xff\xe0jpeg",
        content_type="image/jpeg",
        location=pin_only.delivery_location,
    )
    err = await _refused(
        market.orders.CompleteDelivery,
        order_service_pb2.CompleteDeliveryRequest(
            order_id=pin_only.order_id, proof_of_delivery=photo
        ),
        courier,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err)[0] == "PIN_REQUIRED"


async def test_a_problem_of_reason_other_needs_a_description(
    market: Market, stores: Stores
) -> None:
    _, customer, _, order = await _lifecycle_to_pickup(market)
    err = await _refused(
        market.orders.ReportProblem,
        order_service_pb2.ReportProblemRequest(
            order_id=order.order_id,
            request_id=uuid.uuid4().hex,
            reason=order_pb2.PROBLEM_REASON_OTHER,
            description="  ",
        ),
        customer,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err)[1] == ["description"]
    count = "SELECT count(*) FROM problem_reports WHERE order_id = $1::uuid"
    assert await _pool(stores).fetchval(count, order.order_id) == 0
    await market.orders.ReportProblem(
        order_service_pb2.ReportProblemRequest(
            order_id=order.order_id,
            request_id=uuid.uuid4().hex,
            reason=order_pb2.PROBLEM_REASON_OTHER,
            description="the bag was open",
        ),
        metadata=customer.metadata,
    )
    assert await _pool(stores).fetchval(count, order.order_id) == 1


async def test_stuck_orders_need_a_positive_threshold_and_page_by_50_and_500(
    market: Market, stores: Stores
) -> None:
    admin = await market.admin()
    for threshold in (None, duration_pb2.Duration(seconds=-5), duration_pb2.Duration()):
        err = await _refused(
            market.orders.ListStuckOrders,
            order_service_pb2.ListStuckOrdersRequest(stuck_duration=threshold),
            admin,
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err)[1] == ["stuck_duration"]
    # At least 501 stuck orders: 0 means 50 and 600 is treated as 500.
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)
    for _ in range(3):
        await asyncio.gather(
            *(
                market.orders.CreateOrder(
                    market.order_request(shop, pizza), metadata=customer.metadata
                )
                for _ in range(20)
            )
        )
    # The rows are copied in SQL to reach 501 without 501 placements.
    order_id = await _pool(stores).fetchval(
        "SELECT id FROM orders WHERE customer_id = $1::uuid LIMIT 1", customer.user_id
    )
    await _pool(stores).execute(
        """
        INSERT INTO orders (id, customer_id, merchant_id, status, version, delivery_address,
                            delivery_lat, delivery_lng, currency_code, subtotal_minor,
                            delivery_fee_minor, tip_minor, total_minor, delivery_pin,
                            handoff_policy, created_at, updated_at)
        SELECT gen_random_uuid(), customer_id, merchant_id, status, version, delivery_address,
               delivery_lat, delivery_lng, currency_code, subtotal_minor, delivery_fee_minor,
               tip_minor, total_minor, delivery_pin, handoff_policy, created_at, updated_at
          FROM orders, generate_series(1, 450) WHERE id = $1
        """,
        order_id,
    )
    await _pool(stores).execute(
        "UPDATE orders SET updated_at = now() - interval '2 hours' WHERE customer_id = $1::uuid",
        customer.user_id,
    )
    hour = duration_pb2.Duration(seconds=3600)
    default = await market.orders.ListStuckOrders(
        order_service_pb2.ListStuckOrdersRequest(stuck_duration=hour), metadata=admin.metadata
    )
    assert len(default.stuck_orders) == 50 and default.next_page_token
    most = await market.orders.ListStuckOrders(
        order_service_pb2.ListStuckOrdersRequest(stuck_duration=hour, page_size=600),
        metadata=admin.metadata,
    )
    assert len(most.stuck_orders) == 500 and most.next_page_token
    # The copies are cleaned away: other tests list stuck orders too.
    await _pool(stores).execute("DELETE FROM orders WHERE customer_id = $1::uuid", customer.user_id)


# --- ratings: who rates whom, when, once ----------------------------------------------------


async def test_every_direction_the_contract_allows_rates_once(
    market: Market, stores: Stores
) -> None:
    owner, customer, courier, order = await _lifecycle_to_pickup(market)

    def rating(target: Any, score: int) -> order_service_pb2.RateOrderRequest:
        return order_service_pb2.RateOrderRequest(
            order_id=order.order_id, request_id=uuid.uuid4().hex, target=target, score=score
        )

    driver_t, merchant_t, customer_t = (
        order_pb2.RATING_TARGET_DRIVER,
        order_pb2.RATING_TARGET_MERCHANT,
        order_pb2.RATING_TARGET_CUSTOMER,
    )
    # When: only once delivered.
    err = await _refused(market.orders.RateOrder, rating(driver_t, 2), owner)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(err)[0] == "NOT_DELIVERED"
    await market.orders.CompleteDelivery(
        order_service_pb2.CompleteDeliveryRequest(order_id=order.order_id, pin=order.delivery_pin),
        metadata=courier.metadata,
    )

    # Who rates whom: every allowed direction succeeds.
    allowed = [
        (customer, driver_t, 4, common_pb2.ROLE_CUSTOMER, courier.user_id),
        (customer, merchant_t, 5, common_pb2.ROLE_CUSTOMER, order.merchant_id),
        (courier, customer_t, 3, common_pb2.ROLE_DRIVER, customer.user_id),
        (courier, merchant_t, 1, common_pb2.ROLE_DRIVER, order.merchant_id),
        (owner, driver_t, 2, common_pb2.ROLE_MERCHANT, courier.user_id),
    ]
    for who, target, score, role, target_id in allowed:
        given = (await market.orders.RateOrder(rating(target, score), metadata=who.metadata)).rating
        assert (given.rater_id, given.rater_role, given.target, given.target_id, given.score) == (
            who.user_id,
            role,
            target,
            target_id,
            score,
        )

    # ... and no other: a target the caller may not rate is INVALID_ARGUMENT.
    for who, target in (
        (owner, customer_t),
        (owner, merchant_t),
        (courier, driver_t),
        (customer, customer_t),
        (await market.admin(), driver_t),
    ):
        err = await _refused(market.orders.RateOrder, rating(target, 3), who)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (who, target)
        assert details(err) == ("RATING_NOT_ALLOWED", ["target"])

    # Once: a second rating of the same target is ALREADY_EXISTS, whatever its score.
    for who, target, score, _, _ in allowed:
        for second in (score % 5 + 1, score):
            err = await _refused(market.orders.RateOrder, rating(target, second), who)
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS

    rows = await _pool(stores).fetch(
        "SELECT rater_role, target, score FROM ratings WHERE order_id = $1::uuid"
        " ORDER BY rater_role, target",
        order.order_id,
    )
    assert [tuple(r) for r in rows] == [
        ("customer", "driver", 4),
        ("customer", "merchant", 5),
        ("driver", "customer", 3),
        ("driver", "merchant", 1),
        ("merchant", "driver", 2),
    ]
    # A courier's average is every rating they got; a merchant's, its customers' (Merchant's
    # rating_average), so the courier's 1 for the shop is kept but not averaged in.
    driver = await _pool(stores).fetchrow(
        "SELECT rating_avg, rating_count FROM drivers WHERE id = $1::uuid", courier.user_id
    )
    assert (float(driver["rating_avg"]), driver["rating_count"]) == (3.0, 2)
    shop = await _pool(stores).fetchrow(
        "SELECT rating_avg, rating_count FROM merchants WHERE id = $1::uuid", order.merchant_id
    )
    assert (float(shop["rating_avg"]), shop["rating_count"]) == (5.0, 1)


# --- what a courier who is only offered an order may read ----------------------------------


async def test_an_offered_courier_reads_nothing_of_the_order_until_assigned(
    market: Market, stores: Stores
) -> None:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    courier = await market.sign_up(DRIVER)
    other = await market.sign_up(DRIVER)
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
    get = order_service_pb2.GetOrderRequest(**ref)

    async def listed(who: Caller) -> list[order_pb2.Order]:
        page = await market.orders.ListOrders(
            order_service_pb2.ListOrdersRequest(page_size=100), metadata=who.metadata
        )
        return [o for o in page.orders if o.order_id == order.order_id]

    async def feed_about_order(who: Caller) -> list[order_pb2.Notification]:
        page = await market.orders.ListNotifications(
            order_service_pb2.ListNotificationsRequest(page_size=100), metadata=who.metadata
        )
        return [n for n in page.notifications if n.order_id == order.order_id]

    # Offers are matching's to make; these rows are what it writes (pending, then declined).
    offer_id = await _pool(stores).fetchval(
        "INSERT INTO driver_offers (order_id, driver_id, expires_at)"
        " VALUES ($1::uuid, $2::uuid, now() + interval '5 minutes') RETURNING id",
        order.order_id,
        courier.user_id,
    )
    for state in ("pending", "declined"):
        await _pool(stores).execute(
            "UPDATE driver_offers SET status = $2,"
            " responded_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END WHERE id = $1",
            offer_id,
            state,
        )
        err = await _refused(market.orders.GetOrder, get, courier)
        assert err.code() == grpc.StatusCode.NOT_FOUND, state
        assert details(err)[0] == "ORDER_NOT_FOUND"
        assert await listed(courier) == []
        assert await feed_about_order(courier) == []

    # Assigned (accepting is matching's AssignCourier): now the address and the customer.
    await _pool(stores).execute(
        "UPDATE driver_offers SET status = 'accepted', responded_at = now() WHERE id = $1", offer_id
    )
    await market.orders.AssignCourier(
        order_service_pb2.AssignCourierRequest(**ref, driver_id=courier.user_id),
        metadata=market.matching,
    )
    seen = (await market.orders.GetOrder(get, metadata=courier.metadata)).order
    assert seen.delivery_address == order.delivery_address
    assert seen.customer_id == customer.user_id and seen.delivery_pin == ""
    [in_list] = await listed(courier)
    assert in_list.delivery_address == order.delivery_address
    assert [n.type for n in await feed_about_order(courier)] == [
        order_pb2.NOTIFICATION_TYPE_COURIER_ASSIGNED
    ]

    # Taken off the order, the courier loses it again.
    admin = await market.admin()
    await market.orders.ReassignOrder(
        order_service_pb2.ReassignOrderRequest(**ref, new_driver_id=other.user_id, reason="x"),
        metadata=admin.metadata,
    )
    err = await _refused(market.orders.GetOrder, get, courier)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await listed(courier) == []
    assert (await market.orders.GetOrder(get, metadata=other.metadata)).order.delivery_address


# --- a page of orders in a constant number of statements -----------------------------------


async def test_a_page_of_orders_reads_its_lines_in_one_statement(
    store_settings: StoreSettings, stores: Stores
) -> None:
    statements: list[str] = []
    # A pool as the service makes it, every connection of it logging what it runs.
    sized = dataclasses.replace(store_settings, db_pool_min=4, db_pool_max=4)
    async with db_pool(sized) as pool:
        held = [await pool.acquire() for _ in range(4)]
        for conn in held:
            conn.add_query_logger(lambda q: statements.append(q.query))
        for conn in held:
            await pool.release(conn)
        await _page_reads(store_settings, stores, pool, statements)


async def _page_reads(
    store_settings: StoreSettings, stores: Stores, pool: asyncpg.Pool, statements: list[str]
) -> None:
    settings = settings_for_test("order", store_settings)
    build = functools.partial(build_server, relay=False)
    async with serving(build, settings, Stores(pool=pool, redis=stores.redis)) as (_, ch):
        market = Market(ch, Stores(pool=pool, redis=stores.redis), settings)
        owner = await market.sign_up(MERCHANT)
        customer = await market.sign_up(CUSTOMER)
        admin = await market.admin()
        shop, pizza = await market.shop(owner)
        placed = []
        for n in range(6):
            request = market.order_request(shop, pizza, quantity=n + 1)
            # Several lines, with and without options.
            request.items.add(
                menu_item_id=pizza.menu_item_id,
                quantity=1,
                options=market.choose(pizza, "S"),
                note=f"line two of {n}",
            )
            request.items.add(
                menu_item_id=pizza.menu_item_id,
                quantity=2,
                options=market.choose(pizza, "M", "Basil", "Chili", "Olives"),
            )
            order = (await market.orders.CreateOrder(request, metadata=customer.metadata)).order
            assert len(order.items) == 3
            placed.append(order)

        async def count(call: Any, request: Any, who: Caller) -> tuple[Any, int]:
            statements.clear()
            response = await call(request, metadata=who.metadata)
            return response, len(statements)

        small, small_n = await count(
            market.orders.ListOrders, order_service_pb2.ListOrdersRequest(page_size=2), customer
        )
        large, large_n = await count(
            market.orders.ListOrders, order_service_pb2.ListOrdersRequest(page_size=6), customer
        )
        assert small_n == large_n == 2, statements  # the orders, then every line of them
        assert sum("order_items" in s for s in statements) == 1
        # The same answer as before: each order as it was placed (the customer sees the PIN).
        assert list(large.orders) == placed[::-1]
        assert list(small.orders) == placed[:-3:-1]
        one = await market.orders.GetOrder(
            order_service_pb2.GetOrderRequest(order_id=placed[0].order_id),
            metadata=customer.metadata,
        )
        assert one.order == placed[0]

        # ListStuckOrders the same way; these six are made the longest stuck of all.
        await _pool(stores).execute(
            "UPDATE orders SET updated_at = now() - interval '100 years'"
            " WHERE customer_id = $1::uuid",
            customer.user_id,
        )
        old = duration_pb2.Duration(seconds=365 * 86400)
        few, few_n = await count(
            market.orders.ListStuckOrders,
            order_service_pb2.ListStuckOrdersRequest(stuck_duration=old, page_size=2),
            admin,
        )
        many, many_n = await count(
            market.orders.ListStuckOrders,
            order_service_pb2.ListStuckOrdersRequest(stuck_duration=old, page_size=6),
            admin,
        )
        assert few_n == many_n == 2, statements
        stuck = [s.order for s in many.stuck_orders]
        # Admins do not see the PIN; everything else is as placed.
        as_placed = {o.order_id: o for o in placed}
        assert len(stuck) == 6
        for seen in stuck:
            expected = order_pb2.Order()
            expected.CopyFrom(as_placed[seen.order_id])
            expected.delivery_pin = ""
            expected.update_time.CopyFrom(seen.update_time)
            assert seen == expected
        assert [s.order.order_id for s in few.stuck_orders] == [o.order_id for o in stuck[:2]]
        await _pool(stores).execute(
            "DELETE FROM orders WHERE customer_id = $1::uuid", customer.user_id
        )


async def test_create_order_takes_the_documented_limits(market: Market, stores: Stores) -> None:
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)

    def with_lines(count: int, quantity: int = 1) -> order_service_pb2.CreateOrderRequest:
        request = market.order_request(shop, pizza, quantity=quantity)
        while len(request.items) < count:
            request.items.add().CopyFrom(request.items[0])
        return request

    # At most 100 lines of 1 to 99 units each, a note of at most 500 characters.
    biggest = with_lines(100, quantity=99)
    biggest.note = "n" * 500
    order = (await market.orders.CreateOrder(biggest, metadata=customer.metadata)).order
    assert len(order.items) == 100 and {i.quantity for i in order.items} == {99}
    for request, field in (
        (with_lines(101), "items"),
        (with_lines(1, quantity=100), "items[0].quantity"),
        (market.order_request(shop, pizza), "note"),
    ):
        if field == "note":
            request.note = "n" * 501
        err = await _refused(market.orders.CreateOrder, request, customer)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err)[1] == [field]
    placed = "SELECT count(*) FROM orders WHERE customer_id = $1::uuid"
    assert await _pool(stores).fetchval(placed, customer.user_id) == 1


async def test_the_verbs_answer_the_codes_the_contract_documents(
    market: Market, stores: Stores
) -> None:
    owner = await market.sign_up(MERCHANT)
    stranger = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    courier, second = await market.sign_up(DRIVER), await market.sign_up(DRIVER)
    admin = await market.admin()
    shop, pizza = await market.shop(owner)
    matching = Caller("", market.matching)

    async def code(call: Any, request: Any, who: Caller) -> tuple[grpc.StatusCode, str]:
        err = await _refused(call, request, who)
        return err.code(), details(err)[0]

    C = grpc.StatusCode
    # CreateOrder: PERMISSION_DENIED for other roles, NOT_FOUND for an unknown merchant.
    assert (await code(market.orders.CreateOrder, market.order_request(shop, pizza), courier))[
        0
    ] is C.PERMISSION_DENIED
    unknown_shop = market.order_request(shop, pizza)
    unknown_shop.merchant_id = str(uuid.uuid4())
    assert (await code(market.orders.CreateOrder, unknown_shop, customer))[0] is C.NOT_FOUND
    # ListOrders: INVALID_ARGUMENT for an unspecified status in the filter.
    unspecified = order_service_pb2.ListOrdersRequest(
        statuses=[common_pb2.ORDER_STATUS_UNSPECIFIED]
    )
    assert (await code(market.orders.ListOrders, unspecified, customer))[0] is C.INVALID_ARGUMENT

    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    ).order
    ref = {"order_id": order.order_id}
    assign = order_service_pb2.AssignCourierRequest(**ref, driver_id=courier.user_id)
    # A state change the current state does not allow: FAILED_PRECONDITION with a reason.
    assert await code(market.orders.AssignCourier, assign, matching) == (
        C.FAILED_PRECONDITION,
        "ILLEGAL_TRANSITION",
    )
    # A stale expected_version: ABORTED. An order the caller may not see: NOT_FOUND.
    stale = order_service_pb2.ConfirmOrderRequest(**ref, expected_version=order.version + 5)
    assert (await code(market.orders.ConfirmOrder, stale, owner))[0] is C.ABORTED
    confirm = order_service_pb2.ConfirmOrderRequest(**ref)
    assert (await code(market.orders.ConfirmOrder, confirm, stranger))[0] is C.NOT_FOUND
    assert (await code(market.orders.ConfirmOrder, confirm, customer))[0] is C.PERMISSION_DENIED
    await market.orders.ConfirmOrder(confirm, metadata=owner.metadata)

    # AssignCourier: the same assignment again succeeds and changes nothing; another courier
    # is FAILED_PRECONDITION COURIER_ALREADY_ASSIGNED.
    first = (await market.orders.AssignCourier(assign, metadata=market.matching)).order
    again = (await market.orders.AssignCourier(assign, metadata=market.matching)).order
    assert again.version == first.version and again.driver_id == courier.user_id
    other = order_service_pb2.AssignCourierRequest(**ref, driver_id=second.user_id)
    assert await code(market.orders.AssignCourier, other, matching) == (
        C.FAILED_PRECONDITION,
        "COURIER_ALREADY_ASSIGNED",
    )
    # ReassignOrder: INVALID_ARGUMENT if new_driver_id is not a courier.
    not_a_courier = order_service_pb2.ReassignOrderRequest(**ref, new_driver_id=customer.user_id)
    err = await _refused(market.orders.ReassignOrder, not_a_courier, admin)
    assert err.code() is C.INVALID_ARGUMENT and details(err)[1] == ["new_driver_id"]
    # Couriers cannot cancel; they report a problem instead.
    cancel = order_service_pb2.CancelOrderRequest(**ref, reason=order_pb2.CANCEL_REASON_OTHER)
    assert (await code(market.orders.CancelOrder, cancel, courier))[0] is C.PERMISSION_DENIED
    # RateOrder: FAILED_PRECONDITION while the order is not delivered.
    rate = order_service_pb2.RateOrderRequest(**ref, target=order_pb2.RATING_TARGET_DRIVER, score=5)
    assert await code(market.orders.RateOrder, rate, customer) == (
        C.FAILED_PRECONDITION,
        "NOT_DELIVERED",
    )

    await market.orders.MarkOrderReady(
        order_service_pb2.MarkOrderReadyRequest(**ref), metadata=owner.metadata
    )
    await market.orders.PickUpOrder(
        order_service_pb2.PickUpOrderRequest(**ref), metadata=courier.metadata
    )
    # CompleteDelivery: INVALID_ARGUMENT for a missing proof.
    no_proof = order_service_pb2.CompleteDeliveryRequest(**ref)
    err = await _refused(market.orders.CompleteDelivery, no_proof, courier)
    assert err.code() is C.INVALID_ARGUMENT and details(err)[1] == ["proof"]
    # ReassignOrder: FAILED_PRECONDITION once picked up.
    away = order_service_pb2.ReassignOrderRequest(**ref, new_driver_id=second.user_id)
    assert (await code(market.orders.ReassignOrder, away, admin))[0] is C.FAILED_PRECONDITION
    row = await _pool(stores).fetchrow(
        "SELECT status, driver_id::text AS driver_id FROM orders WHERE id = $1::uuid",
        order.order_id,
    )
    assert (row["status"], row["driver_id"]) == ("picked_up", courier.user_id)


async def test_a_rating_retried_with_its_request_id_is_answered_once(
    market: Market, stores: Stores
) -> None:
    _, customer, courier, order = await _lifecycle_to_pickup(market)
    await market.orders.CompleteDelivery(
        order_service_pb2.CompleteDeliveryRequest(order_id=order.order_id, pin=order.delivery_pin),
        metadata=courier.metadata,
    )
    request = order_service_pb2.RateOrderRequest(
        order_id=order.order_id,
        request_id=uuid.uuid4().hex,
        target=order_pb2.RATING_TARGET_DRIVER,
        score=4,
        comment="quick",
    )
    # Racing retries of one request: every one is answered with the one rating stored.
    answers = await asyncio.gather(
        *(market.orders.RateOrder(request, metadata=customer.metadata) for _ in range(8))
    )
    assert len({a.rating.rating_id for a in answers}) == 1
    assert answers[0].rating.score == 4
    # The request id reused for another rating is refused as such.
    reused = order_service_pb2.RateOrderRequest()
    reused.CopyFrom(request)
    reused.score = 5
    err = await _refused(market.orders.RateOrder, reused, customer)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err) == ("IDEMPOTENCY_KEY_REUSED", ["request_id"])
    count = "SELECT count(*) FROM ratings WHERE order_id = $1::uuid"
    assert await _pool(stores).fetchval(count, order.order_id) == 1


async def test_an_over_long_request_id_is_invalid_argument_not_internal(
    market: Market, stores: Stores
) -> None:
    owner, customer, courier, order = await _lifecycle_to_pickup(market)
    long_id = "r" * 300
    ref: dict[str, Any] = {"order_id": order.order_id, "request_id": long_id}
    for call, request, who in (
        (
            market.orders.CompleteDelivery,
            order_service_pb2.CompleteDeliveryRequest(**ref, pin=order.delivery_pin),
            courier,
        ),
        (
            market.orders.ReportProblem,
            order_service_pb2.ReportProblemRequest(
                **ref, reason=order_pb2.PROBLEM_REASON_ORDER_LATE
            ),
            customer,
        ),
        (
            market.orders.CancelOrder,
            order_service_pb2.CancelOrderRequest(**ref, reason=order_pb2.CANCEL_REASON_OTHER),
            owner,
        ),
    ):
        err = await _refused(call, request, who)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, call
        assert details(err)[1] == ["request_id"]
    row = await _pool(stores).fetchrow(
        "SELECT status, (SELECT count(*) FROM problem_reports p WHERE p.order_id = o.id) AS n"
        " FROM orders o WHERE id = $1::uuid",
        order.order_id,
    )
    assert (row["status"], row["n"]) == ("picked_up", 0)


async def test_a_delivery_photo_must_be_taken_near_the_delivery_location(
    market: Market, stores: Stores
) -> None:
    _, _, courier, order = await _lifecycle_to_pickup(
        market, handoff=merchant_pb2.HANDOFF_POLICY_PHOTO
    )

    def photo_at(metres_north: float) -> order_service_pb2.CompleteDeliveryRequest:
        return order_service_pb2.CompleteDeliveryRequest(
            order_id=order.order_id,
            proof_of_delivery=order_pb2.ProofOfDelivery(
                photo=b"\xff\xd8\xff\xe0jpeg",
                content_type="image/jpeg",
                location=north(order.delivery_location, metres_north),
            ),
        )

    err = await _refused(market.orders.CompleteDelivery, photo_at(2000), courier)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err) == ("PHOTO_TOO_FAR", ["proof_of_delivery.location"])
    status = "SELECT status FROM orders WHERE id = $1::uuid"
    assert await _pool(stores).fetchval(status, order.order_id) == "picked_up"
    done = await market.orders.CompleteDelivery(photo_at(100), metadata=courier.metadata)
    assert done.order.status == common_pb2.ORDER_STATUS_DELIVERED
