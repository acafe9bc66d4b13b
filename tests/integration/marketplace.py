"""A small marketplace for order tests: people, an open shop with a menu, and their stubs."""

from __future__ import annotations

import contextlib
import math
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from delivery.common.v1 import common_pb2
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
from mesh.auth import Role, SessionStore, service_token
from mesh.geo import EARTH_RADIUS_M
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores, open_stores
from mesh.testing import bearer


@dataclass(frozen=True)
class Caller:
    """A signed-in user: their id and call metadata."""

    user_id: str
    metadata: tuple[tuple[str, str], ...]


def details(err: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """The ErrorInfo reason and the BadRequest field paths of an error."""
    status = rpc_status.from_call(err)
    assert status is not None, "the error carries no google.rpc.Status"
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def eur(amount: int) -> common_pb2.Money:
    """Euros in cents."""
    return common_pb2.Money(currency_code="EUR", amount_minor=amount)


def north(point: common_pb2.LatLng, metres: float) -> common_pb2.LatLng:
    """The point ``metres`` north of ``point``."""
    return common_pb2.LatLng(
        latitude=point.latitude + math.degrees(metres / EARTH_RADIUS_M), longitude=point.longitude
    )


@contextlib.asynccontextmanager
async def on_redis(
    store_settings: StoreSettings, stores: Stores, redis_url: str | None
) -> AsyncIterator[tuple[StoreSettings, Stores]]:
    """The test database with the Redis at ``redis_url`` (a ``redis+cluster://`` URL selects
    Redis Cluster), or the stores as they are if ``redis_url`` is None.

    Sessions live in Redis: servers that share callers must be built on the same one.
    """
    if redis_url is None:
        yield store_settings, stores
        return
    settings = replace(store_settings, redis_url=redis_url)
    async with open_stores(settings, postgres=False) as opened:
        yield settings, Stores(pool=stores.pool, redis=opened.redis)


class Market:
    """Stubs over one channel, and helpers that set up people and a shop."""

    def __init__(self, channel: grpc.aio.Channel, stores: Stores, settings: Settings) -> None:
        self.accounts = account_service_pb2_grpc.AccountServiceStub(channel)
        self.merchants = merchant_service_pb2_grpc.MerchantServiceStub(channel)
        self.orders = order_service_pb2_grpc.OrderServiceStub(channel)
        self._stores = stores
        self._settings = settings
        #: Every courier signed up here, for tests that must take them off shift afterwards.
        self.drivers: list[Caller] = []
        #: Metadata of the matching service, which assigns couriers.
        self.matching = bearer(service_token(settings.auth.service_secret, "matching"))

    async def sign_up(self, role: int, **fields: object) -> Caller:
        """A new user of ``role`` (drivers ride bicycles)."""
        if role == common_pb2.ROLE_DRIVER:
            fields.setdefault("vehicle_type", common_pb2.VEHICLE_TYPE_BICYCLE)
        signed = await self.accounts.SignUp(
            account_service_pb2.SignUpRequest(
                email=f"u-{uuid.uuid4().hex[:12]}@example.com",
                password="password123",
                name="Test",
                role=role,
                **fields,  # type: ignore[arg-type]
            )
        )
        caller = Caller(signed.user.user_id, bearer(signed.session_token))
        if role == common_pb2.ROLE_DRIVER:
            self.drivers.append(caller)
        return caller

    async def admin(self) -> Caller:
        """An admin, seeded the way an operator would (admins cannot sign themselves up)."""
        pool, redis = self._stores.pool, self._stores.redis
        assert pool is not None and redis is not None
        user_id = await pool.fetchval(
            "INSERT INTO users (email, password_hash, name, role)"
            " VALUES ($1, 'x', 'Root', 'admin') RETURNING id::text",
            f"admin-{uuid.uuid4().hex[:12]}@example.com",
        )
        sessions = SessionStore(redis, ttl_s=600, service_secret=self._settings.auth.service_secret)
        return Caller(user_id, bearer(await sessions.create(user_id, Role.ADMIN)))

    async def session_for(self, user_id: str, role: Role) -> Caller:
        """A session of a user made straight in the database (tests' rows)."""
        assert self._stores.redis is not None
        sessions = SessionStore(
            self._stores.redis, ttl_s=600, service_secret=self._settings.auth.service_secret
        )
        return Caller(user_id, bearer(await sessions.create(user_id, role)))

    async def shop(
        self,
        owner: Caller,
        *,
        handoff: int = merchant_pb2.HANDOFF_POLICY_PIN,
        location: common_pb2.LatLng | None = None,
    ) -> tuple[merchant_pb2.Merchant, merchant_pb2.MenuItem]:
        """An open pizzeria at ``location`` (somewhere random if none), with a pizza that has
        sizes and extras."""
        location = location or common_pb2.LatLng(
            latitude=random.uniform(-50, 50), longitude=random.uniform(-170, 170)
        )
        merchant = (
            await self.merchants.CreateMerchant(
                merchant_service_pb2.CreateMerchantRequest(
                    request_id=uuid.uuid4().hex,
                    name="Trattoria",
                    address="1 Main St",
                    location=location,
                    delivery_radius_meters=5000,
                    average_prep_duration=duration_pb2.Duration(seconds=900),
                    currency_code="EUR",
                    handoff_policy=handoff,
                ),
                metadata=owner.metadata,
            )
        ).merchant
        await self.merchants.SetMerchantOpen(
            merchant_service_pb2.SetMerchantOpenRequest(
                request_id=uuid.uuid4().hex, merchant_id=merchant.merchant_id, open=True
            ),
            metadata=owner.metadata,
        )
        pizza = (
            await self.merchants.UpsertMenuItem(
                merchant_service_pb2.UpsertMenuItemRequest(
                    request_id=uuid.uuid4().hex,
                    merchant_id=merchant.merchant_id,
                    menu_item=merchant_pb2.MenuItem(
                        name="Margherita",
                        price=eur(900),
                        available=True,
                        option_groups=[
                            merchant_pb2.OptionGroup(
                                name="Size",
                                min_select=1,
                                max_select=1,
                                options=[
                                    merchant_pb2.Option(
                                        name="S", price_delta=eur(-100), available=True
                                    ),
                                    merchant_pb2.Option(name="M", available=True),
                                    merchant_pb2.Option(
                                        name="L", price_delta=eur(250), available=True
                                    ),
                                ],
                            ),
                            merchant_pb2.OptionGroup(
                                name="Extras",
                                min_select=0,
                                max_select=3,
                                options=[
                                    merchant_pb2.Option(name=n, price_delta=eur(d), available=True)
                                    for n, d in (
                                        ("Olives", 80),
                                        ("Basil", 50),
                                        ("Chili", 30),
                                        ("Egg", 120),
                                    )
                                ],
                            ),
                        ],
                    ),
                ),
                metadata=owner.metadata,
            )
        ).menu_item
        return merchant, pizza

    @staticmethod
    def choose(
        item: merchant_pb2.MenuItem, size: str, *extras: str
    ) -> list[order_pb2.OptionChoice]:
        """Option choices by name."""
        chosen = []
        for group in item.option_groups:
            for option in group.options:
                if option.name == size or option.name in extras:
                    chosen.append(
                        order_pb2.OptionChoice(
                            option_group_id=group.option_group_id, option_id=option.option_id
                        )
                    )
        return chosen

    def order_request(
        self,
        merchant: merchant_pb2.Merchant,
        item: merchant_pb2.MenuItem,
        *,
        quantity: int = 2,
        size: str = "L",
        extras: tuple[str, ...] = ("Olives", "Egg"),
        distance_m: float = 1500,
        tip: int = 200,
        request_id: str | None = None,
    ) -> order_service_pb2.CreateOrderRequest:
        """A valid order of ``quantity`` pizzas delivered ``distance_m`` north of the shop."""
        return order_service_pb2.CreateOrderRequest(
            request_id=request_id or uuid.uuid4().hex,
            merchant_id=merchant.merchant_id,
            items=[
                order_pb2.OrderItemInput(
                    menu_item_id=item.menu_item_id,
                    quantity=quantity,
                    options=self.choose(item, size, *extras),
                )
            ],
            delivery_address="2 Side St, 3rd floor",
            delivery_location=north(merchant.location, distance_m),
            tip=eur(tip),
        )
