"""Merchants learn their preparation time from orders marked ready, over gRPC and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from delivery.common.v1 import common_pb2
from delivery.order.v1 import merchant_pb2, merchant_service_pb2, order_service_pb2
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.domain.orders import (
    PREP_OBSERVED_MAX_S,
    PREP_OBSERVED_MIN_S,
    PrepEstimate,
    learn_prep,
    observed_prep_seconds,
)
from order_svc.server import build_server
from tests.integration.marketplace import Market

CUSTOMER, MERCHANT = common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_MERCHANT
#: What Market.shop gives as the merchant's own estimate.
STATED = PrepEstimate(average_seconds=900, deviation_seconds=0, observations=0)


@pytest.fixture
async def market(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[Market]:
    settings = settings_for_test("order", store_settings)
    async with serving(build_server, settings, stores) as (_, channel):
        yield Market(channel, stores, settings)


class Kitchen:
    """A shop with its owner and a customer, making orders that took a chosen time."""

    def __init__(self, market: Market, stores: Stores) -> None:
        self.market = market
        assert stores.pool is not None
        self.pool = stores.pool

    async def open(self) -> Kitchen:
        self.owner = await self.market.sign_up(MERCHANT)
        self.customer = await self.market.sign_up(CUSTOMER)
        self.shop, self.pizza = await self.market.shop(self.owner)
        return self

    async def confirmed(self, took_s: float) -> str:
        """A new order, confirmed ``took_s`` seconds ago (as far as the database knows)."""
        order = (
            await self.market.orders.CreateOrder(
                self.market.order_request(self.shop, self.pizza),
                metadata=self.customer.metadata,
            )
        ).order
        await self.market.orders.ConfirmOrder(
            order_service_pb2.ConfirmOrderRequest(order_id=order.order_id),
            metadata=self.owner.metadata,
        )
        await self.pool.execute(
            "UPDATE orders SET confirmed_at = now() - make_interval(secs => $2)"
            " WHERE id = $1::uuid",
            order.order_id,
            took_s,
        )
        return order.order_id

    async def mark_ready(self, order_id: str) -> int:
        """Marks the order ready; the preparation it took, as the rule sees it."""
        await self.market.orders.MarkOrderReady(
            order_service_pb2.MarkOrderReadyRequest(order_id=order_id),
            metadata=self.owner.metadata,
        )
        row = await self.pool.fetchrow(
            "SELECT confirmed_at, ready_at FROM orders WHERE id = $1::uuid", order_id
        )
        assert row is not None
        return observed_prep_seconds(row["confirmed_at"], row["ready_at"])

    async def prepared(self, took_s: float) -> int:
        return await self.mark_ready(await self.confirmed(took_s))

    async def merchant(self) -> merchant_pb2.Merchant:
        return (
            await self.market.merchants.GetMerchant(
                merchant_service_pb2.GetMerchantRequest(merchant_id=self.shop.merchant_id),
                metadata=self.customer.metadata,
            )
        ).merchant

    async def menu_version(self) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT menu_version FROM merchants WHERE id = $1::uuid", self.shop.merchant_id
            )
        )


def _shown(merchant: merchant_pb2.Merchant) -> PrepEstimate:
    assert merchant.average_prep_duration.nanos == 0
    assert merchant.prep_deviation_duration.nanos == 0
    return PrepEstimate(
        average_seconds=merchant.average_prep_duration.seconds,
        deviation_seconds=merchant.prep_deviation_duration.seconds,
        observations=merchant.prep_observation_count,
    )


async def test_a_new_merchant_shows_its_own_estimate(market: Market, stores: Stores) -> None:
    kitchen = await Kitchen(market, stores).open()
    assert _shown(await kitchen.merchant()) == STATED
    assert _shown(kitchen.shop) == STATED


async def test_the_average_moves_toward_real_preparations(market: Market, stores: Stores) -> None:
    kitchen = await Kitchen(market, stores).open()
    version = await kitchen.menu_version()
    expected = STATED
    for took in (1500, 1500, 1200, 1800):
        seen = await kitchen.prepared(took)
        # The database's clock ran on between the two stamps; a second or two, not more.
        assert took <= seen <= took + 5
        expected = learn_prep(expected, seen)
        assert _shown(await kitchen.merchant()) == expected
    # Written out, a fifth of the way each time (give or take the seconds the test took):
    # 900 -> 1020 -> 1116 -> 1133 -> 1266; misses 600, 480, 84, 667 -> 600, 576, 478, 516.
    assert abs(expected.average_seconds - 1266) <= 5
    assert abs(expected.deviation_seconds - 516) <= 5
    assert expected.observations == 4
    # Learning is not a change of the shop: orders priced from the cached shop still place.
    assert await kitchen.menu_version() == version
    await market.orders.CreateOrder(
        market.order_request(kitchen.shop, kitchen.pizza), metadata=kitchen.customer.metadata
    )


async def test_absurd_preparations_are_clamped(market: Market, stores: Stores) -> None:
    kitchen = await Kitchen(market, stores).open()
    # Forgotten on the counter overnight: counts as three hours.
    assert await kitchen.prepared(14 * 3600) == PREP_OBSERVED_MAX_S
    after_night = _shown(await kitchen.merchant())
    assert after_night == learn_prep(STATED, PREP_OBSERVED_MAX_S)
    assert after_night.average_seconds == 900 + (PREP_OBSERVED_MAX_S - 900) // 5
    # Marked ready the moment it was confirmed (or with the clock stepped back): one minute.
    assert await kitchen.prepared(-600) == PREP_OBSERVED_MIN_S
    assert _shown(await kitchen.merchant()) == learn_prep(after_night, PREP_OBSERVED_MIN_S)


async def test_only_marking_ready_teaches(market: Market, stores: Stores) -> None:
    kitchen = await Kitchen(market, stores).open()
    other = await Kitchen(market, stores).open()
    order_id = await kitchen.confirmed(1200)
    await market.orders.StartPreparing(
        order_service_pb2.StartPreparingRequest(order_id=order_id), metadata=kitchen.owner.metadata
    )
    assert _shown(await kitchen.merchant()) == STATED
    seen = await kitchen.mark_ready(order_id)
    assert _shown(await kitchen.merchant()) == learn_prep(STATED, seen)
    # Another shop learns nothing from it.
    assert _shown(await other.merchant()) == STATED


async def test_an_unconfirmed_order_cannot_be_marked_ready(market: Market, stores: Stores) -> None:
    kitchen = await Kitchen(market, stores).open()
    pending = (
        await market.orders.CreateOrder(
            market.order_request(kitchen.shop, kitchen.pizza), metadata=kitchen.customer.metadata
        )
    ).order
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await market.orders.MarkOrderReady(
            order_service_pb2.MarkOrderReadyRequest(order_id=pending.order_id),
            metadata=kitchen.owner.metadata,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _shown(await kitchen.merchant()) == STATED


async def test_orders_made_ready_together_all_count(market: Market, stores: Stores) -> None:
    kitchen = await Kitchen(market, stores).open()
    orders = [await kitchen.confirmed(took) for took in (600, 700, 800, 900, 1000, 1100)]
    seen = await asyncio.gather(*(kitchen.mark_ready(order_id) for order_id in orders))
    shown = _shown(await kitchen.merchant())
    assert shown.observations == len(orders)
    # Whatever order the statements took, each moved the average toward its own preparation.
    assert min(seen) <= shown.average_seconds <= max(*seen, STATED.average_seconds)
