"""The merchant service over real gRPC, PostgreSQL and Redis."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from delivery.common.v1 import common_pb2
from delivery.order.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    merchant_pb2,
    merchant_service_pb2,
    merchant_service_pb2_grpc,
)
from mesh.auth import Role, SessionStore
from mesh.geo import EARTH_RADIUS_M, haversine_m
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import bearer, serving, settings_for_test
from order_svc.server import build_server
from order_svc.store.merchants import MerchantStore
from tests.integration.marketplace import Caller
from tests.integration.marketplace import details as _details

M = TypeVar("M", bound=Message)


@pytest.fixture
async def channel(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[grpc.aio.Channel]:
    settings = settings_for_test("order", store_settings)
    async with serving(build_server, settings, stores) as (_, opened):
        yield opened


@pytest.fixture
def merchants(channel: grpc.aio.Channel) -> merchant_service_pb2_grpc.MerchantServiceStub:
    return merchant_service_pb2_grpc.MerchantServiceStub(channel)


async def _sign_up(channel: grpc.aio.Channel, role: common_pb2.Role) -> Caller:
    accounts = account_service_pb2_grpc.AccountServiceStub(channel)
    signed = await accounts.SignUp(
        account_service_pb2.SignUpRequest(
            email=f"m-{uuid.uuid4().hex[:12]}@example.com",
            password="password123",
            name="Test",
            role=role,
        )
    )
    return Caller(signed.user.user_id, bearer(signed.session_token))


async def _admin(stores: Stores, store_settings: StoreSettings) -> Caller:
    # Admins cannot sign themselves up, so the test seeds one the way an operator would.
    assert stores.pool is not None and stores.redis is not None
    user_id = await stores.pool.fetchval(
        "INSERT INTO users (email, password_hash, name, role) VALUES ($1, 'x', 'Root', 'admin')"
        " RETURNING id::text",
        f"admin-{uuid.uuid4().hex[:12]}@example.com",
    )
    settings = settings_for_test("order", store_settings)
    sessions = SessionStore(stores.redis, ttl_s=600, service_secret=settings.auth.service_secret)
    return Caller(user_id, bearer(await sessions.create(user_id, Role.ADMIN)))


def _set(message: M, **fields: object) -> M:
    """``message`` with ``fields`` set (message-typed fields by copy)."""
    for name, value in fields.items():
        if isinstance(value, Message):
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _north(lat: float, lng: float, metres: float) -> common_pb2.LatLng:
    return common_pb2.LatLng(latitude=lat + math.degrees(metres / EARTH_RADIUS_M), longitude=lng)


def _far_away() -> tuple[float, float]:
    """A random spot, so searches see only the merchants this test created there."""
    return random.uniform(-60, 60), random.uniform(-170, 170)


def _create_request(
    location: common_pb2.LatLng, **fields: object
) -> merchant_service_pb2.CreateMerchantRequest:
    request = merchant_service_pb2.CreateMerchantRequest(
        name="Trattoria",
        description="Pasta and pizza",
        address="1 Main St",
        location=location,
        delivery_radius_meters=4000,
        average_prep_duration=duration_pb2.Duration(seconds=900),
        currency_code="EUR",
    )
    return _set(request, **fields)


def _eur(amount: int) -> common_pb2.Money:
    return common_pb2.Money(currency_code="EUR", amount_minor=amount)


def _pizza(**fields: object) -> merchant_pb2.MenuItem:
    item = merchant_pb2.MenuItem(
        name="Margherita",
        description="Tomato, mozzarella, basil",
        price=_eur(900),
        available=True,
        option_groups=[
            merchant_pb2.OptionGroup(
                name="Size",
                min_select=1,
                max_select=1,
                options=[
                    merchant_pb2.Option(name="S", price_delta=_eur(-100), available=True),
                    merchant_pb2.Option(name="M", available=True),
                    merchant_pb2.Option(name="L", price_delta=_eur(250), available=True),
                ],
            ),
            merchant_pb2.OptionGroup(
                name="Extras",
                min_select=0,
                max_select=3,
                options=[
                    merchant_pb2.Option(name=name, price_delta=_eur(delta), available=True)
                    for name, delta in (("Olives", 80), ("Basil", 50), ("Chili", 30), ("Egg", 120))
                ],
            ),
        ],
    )
    return _set(item, **fields)


async def _create(
    merchants: merchant_service_pb2_grpc.MerchantServiceStub,
    caller: Caller,
    location: common_pb2.LatLng,
    **fields: object,
) -> merchant_pb2.Merchant:
    response = await merchants.CreateMerchant(
        _create_request(location, **fields), metadata=caller.metadata
    )
    return response.merchant


async def test_a_merchant_creates_a_closed_merchant_it_owns(
    channel: grpc.aio.Channel, merchants: merchant_service_pb2_grpc.MerchantServiceStub
) -> None:
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    created = await _create(merchants, owner, common_pb2.LatLng(latitude=52.52, longitude=13.405))
    assert created.owner_user_id == owner.user_id
    assert not created.open
    assert created.handoff_policy == merchant_pb2.HANDOFF_POLICY_PIN
    assert created.average_prep_duration.seconds == 900
    assert created.rating_average == 0
    customer = await _sign_up(channel, common_pb2.ROLE_CUSTOMER)
    got = await merchants.GetMerchant(
        merchant_service_pb2.GetMerchantRequest(merchant_id=created.merchant_id),
        metadata=customer.metadata,
    )
    assert got.merchant == created


async def test_customers_cannot_create_and_unknown_ids_are_not_found(
    channel: grpc.aio.Channel, merchants: merchant_service_pb2_grpc.MerchantServiceStub
) -> None:
    customer = await _sign_up(channel, common_pb2.ROLE_CUSTOMER)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(merchants, customer, common_pb2.LatLng(latitude=1, longitude=1))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for merchant_id in ("not-a-uuid", str(uuid.uuid4()), ""):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await merchants.GetMerchant(
                merchant_service_pb2.GetMerchantRequest(merchant_id=merchant_id),
                metadata=customer.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchants.GetMerchant(merchant_service_pb2.GetMerchantRequest(merchant_id="x"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_merchant_input_names_each_field(
    channel: grpc.aio.Channel, merchants: merchant_service_pb2_grpc.MerchantServiceStub
) -> None:
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    request = _create_request(
        common_pb2.LatLng(latitude=91, longitude=0),
        name="",
        delivery_radius_meters=0,
        currency_code="euro",
    )
    request.ClearField("average_prep_duration")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchants.CreateMerchant(request, metadata=owner.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_details(caught.value)[1]) == {
        "name",
        "location.latitude",
        "delivery_radius_meters",
        "average_prep_duration",
        "currency_code",
    }


async def test_an_admin_creates_for_a_merchant_owner_only(
    channel: grpc.aio.Channel,
    merchants: merchant_service_pb2_grpc.MerchantServiceStub,
    stores: Stores,
    store_settings: StoreSettings,
) -> None:
    admin = await _admin(stores, store_settings)
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    customer = await _sign_up(channel, common_pb2.ROLE_CUSTOMER)
    here = common_pb2.LatLng(latitude=10, longitude=10)
    created = await _create(merchants, admin, here, owner_user_id=owner.user_id)
    assert created.owner_user_id == owner.user_id
    for owner_id, code in (
        (str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND),
        (customer.user_id, grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _create(merchants, admin, here, owner_user_id=owner_id)
        assert caught.value.code() == code
    # A merchant cannot create on someone else's behalf.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(merchants, customer, here, owner_user_id=owner.user_id)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    other = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(merchants, other, here, owner_user_id=owner.user_id)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_retried_create_returns_the_same_merchant(
    channel: grpc.aio.Channel, merchants: merchant_service_pb2_grpc.MerchantServiceStub
) -> None:
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    here = common_pb2.LatLng(latitude=20, longitude=20)
    request_id = str(uuid.uuid4())
    first = await _create(merchants, owner, here, request_id=request_id)
    again = await _create(merchants, owner, here, request_id=request_id)
    assert again.merchant_id == first.merchant_id
    other = await _create(merchants, owner, here, request_id=str(uuid.uuid4()))
    assert other.merchant_id != first.merchant_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(merchants, owner, here, request_id=request_id, name="Another name")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(caught.value) == ("IDEMPOTENCY_KEY_REUSED", ["request_id"])
    # Keys are per caller: another merchant's identical key is a new request.
    stranger = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    theirs = await _create(merchants, stranger, here, request_id=request_id)
    assert theirs.merchant_id != first.merchant_id


async def test_only_the_owner_or_an_admin_opens_and_edits_the_menu(
    channel: grpc.aio.Channel,
    merchants: merchant_service_pb2_grpc.MerchantServiceStub,
    stores: Stores,
    store_settings: StoreSettings,
) -> None:
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    other = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    customer = await _sign_up(channel, common_pb2.ROLE_CUSTOMER)
    shop = await _create(merchants, owner, common_pb2.LatLng(latitude=30, longitude=30))
    for intruder in (other, customer):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await merchants.SetMerchantOpen(
                merchant_service_pb2.SetMerchantOpenRequest(
                    merchant_id=shop.merchant_id, open=True
                ),
                metadata=intruder.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await merchants.UpsertMenuItem(
                merchant_service_pb2.UpsertMenuItemRequest(
                    merchant_id=shop.merchant_id, menu_item=_pizza()
                ),
                metadata=intruder.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    opened = await merchants.SetMerchantOpen(
        merchant_service_pb2.SetMerchantOpenRequest(merchant_id=shop.merchant_id, open=True),
        metadata=owner.metadata,
    )
    assert opened.merchant.open
    admin = await _admin(stores, store_settings)
    closed = await merchants.SetMerchantOpen(
        merchant_service_pb2.SetMerchantOpenRequest(merchant_id=shop.merchant_id, open=False),
        metadata=admin.metadata,
    )
    assert not closed.merchant.open
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchants.SetMerchantOpen(
            merchant_service_pb2.SetMerchantOpenRequest(merchant_id=str(uuid.uuid4()), open=True),
            metadata=admin.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_upsert_a_menu_item_read_it_back_and_update_it(
    channel: grpc.aio.Channel,
    merchants: merchant_service_pb2_grpc.MerchantServiceStub,
    stores: Stores,
) -> None:
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    shop = await _create(merchants, owner, common_pb2.LatLng(latitude=40, longitude=40))
    created = (
        await merchants.UpsertMenuItem(
            merchant_service_pb2.UpsertMenuItemRequest(
                merchant_id=shop.merchant_id, menu_item=_pizza(), request_id="pizza-1"
            ),
            metadata=owner.metadata,
        )
    ).menu_item
    assert created.menu_item_id and created.merchant_id == shop.merchant_id
    assert created.update_time.seconds > 0
    size, extras = created.option_groups
    assert (size.name, size.min_select, size.max_select) == ("Size", 1, 1)
    assert [(o.name, o.price_delta.amount_minor) for o in size.options] == [
        ("S", -100),
        ("M", 0),
        ("L", 250),
    ]
    assert (extras.min_select, extras.max_select, len(extras.options)) == (0, 3, 4)
    assert all(o.option_id and o.price_delta.currency_code == "EUR" for o in size.options)

    customer = await _sign_up(channel, common_pb2.ROLE_CUSTOMER)
    listed = await merchants.ListMenuItems(
        merchant_service_pb2.ListMenuItemsRequest(merchant_id=shop.merchant_id),
        metadata=customer.metadata,
    )
    assert list(listed.menu_items) == [created]
    assert not listed.next_page_token

    # A retry of the create is not a second pizza.
    retried = await merchants.UpsertMenuItem(
        merchant_service_pb2.UpsertMenuItemRequest(
            merchant_id=shop.merchant_id, menu_item=_pizza(), request_id="pizza-1"
        ),
        metadata=owner.metadata,
    )
    assert retried.menu_item.menu_item_id == created.menu_item_id

    # Update: new price, drop the extras, keep the size ids, add one size.
    update = merchant_pb2.MenuItem()
    update.CopyFrom(created)
    update.price.amount_minor = 1000
    del update.option_groups[1]
    update.option_groups[0].options.append(
        merchant_pb2.Option(name="XL", price_delta=_eur(400), available=False)
    )
    updated = (
        await merchants.UpsertMenuItem(
            merchant_service_pb2.UpsertMenuItemRequest(
                merchant_id=shop.merchant_id, menu_item=update
            ),
            metadata=owner.metadata,
        )
    ).menu_item
    assert updated.menu_item_id == created.menu_item_id
    assert updated.price.amount_minor == 1000
    assert [g.option_group_id for g in updated.option_groups] == [size.option_group_id]
    kept = [o.option_id for o in updated.option_groups[0].options]
    assert kept[:3] == [o.option_id for o in size.options] and kept[3]
    assert not updated.option_groups[0].options[3].available

    # Order placement reads the same item, with its options, by id.
    store = MerchantStore(stores.pool)
    found = await store.menu_items_for_order(
        shop.merchant_id, [created.menu_item_id, str(uuid.uuid4()), "junk"]
    )
    assert list(found) == [created.menu_item_id]
    assert [o.name for o in found[created.menu_item_id].option_groups[0].options] == [
        "S",
        "M",
        "L",
        "XL",
    ]
    other_shop = await _create(merchants, owner, common_pb2.LatLng(latitude=40, longitude=40))
    assert await store.menu_items_for_order(other_shop.merchant_id, [created.menu_item_id]) == {}

    # Another item cannot take over this item's option ids.
    thief = _pizza()
    thief.option_groups[0].option_group_id = size.option_group_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchants.UpsertMenuItem(
            merchant_service_pb2.UpsertMenuItemRequest(
                merchant_id=shop.merchant_id, menu_item=thief
            ),
            metadata=owner.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(caught.value)[1] == ["menu_item.option_groups[0].option_group_id"]

    # An item of another merchant, or an unknown one, is not found.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merchants.UpsertMenuItem(
            merchant_service_pb2.UpsertMenuItemRequest(
                merchant_id=other_shop.merchant_id, menu_item=update
            ),
            metadata=owner.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_menu_items_name_the_field(
    channel: grpc.aio.Channel, merchants: merchant_service_pb2_grpc.MerchantServiceStub
) -> None:
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    shop = await _create(merchants, owner, common_pb2.LatLng(latitude=45, longitude=45))
    cases: list[tuple[merchant_pb2.MenuItem, str]] = []
    too_many = _pizza()
    too_many.option_groups[0].max_select = 4
    cases.append((too_many, "menu_item.option_groups[0].max_select"))
    inverted = _pizza()
    inverted.option_groups[1].min_select = 3
    inverted.option_groups[1].max_select = 2
    cases.append((inverted, "menu_item.option_groups[1].min_select"))
    cases.append((_pizza(price=_eur(-1)), "menu_item.price.amount_minor"))
    cases.append(
        (
            _pizza(price=common_pb2.Money(currency_code="USD", amount_minor=5)),
            "menu_item.price.currency_code",
        )
    )
    cases.append((_pizza(name=""), "menu_item.name"))
    for item, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await merchants.UpsertMenuItem(
                merchant_service_pb2.UpsertMenuItemRequest(
                    merchant_id=shop.merchant_id, menu_item=item
                ),
                metadata=owner.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reason, fields = _details(caught.value)
        assert reason == "INVALID_ARGUMENT"
        assert field in fields, (field, fields)


async def test_menu_items_page_by_name(
    channel: grpc.aio.Channel, merchants: merchant_service_pb2_grpc.MerchantServiceStub
) -> None:
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    shop = await _create(merchants, owner, common_pb2.LatLng(latitude=46, longitude=46))
    names = ["Tiramisu", "Bruschetta", "Calzone", "Arancini", "Diavola"]
    for i, name in enumerate(names):
        await merchants.UpsertMenuItem(
            merchant_service_pb2.UpsertMenuItemRequest(
                merchant_id=shop.merchant_id,
                menu_item=_pizza(name=name, available=i % 2 == 0),
            ),
            metadata=owner.metadata,
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await merchants.ListMenuItems(
            merchant_service_pb2.ListMenuItemsRequest(
                merchant_id=shop.merchant_id, page_size=2, page_token=token
            ),
            metadata=owner.metadata,
        )
        seen += [item.name for item in page.menu_items]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(names)
    available = await merchants.ListMenuItems(
        merchant_service_pb2.ListMenuItemsRequest(
            merchant_id=shop.merchant_id, available_only=True
        ),
        metadata=owner.metadata,
    )
    assert [i.name for i in available.menu_items] == ["Calzone", "Diavola", "Tiramisu"]


async def test_list_merchants_nearest_first_across_pages(
    channel: grpc.aio.Channel, merchants: merchant_service_pb2_grpc.MerchantServiceStub
) -> None:
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    customer = await _sign_up(channel, common_pb2.ROLE_CUSTOMER)
    lat, lng = _far_away()
    # Two merchants share a spot, so the order must break ties in distance.
    distances = [3500, 100, 2200, 900, 900, 4900, 7000, 1500]
    created = {}
    for i, metres in enumerate(distances):
        shop = await _create(merchants, owner, _north(lat, lng, metres), name=f"Shop {i}")
        created[shop.merchant_id] = metres
        if i % 2 == 0:
            await merchants.SetMerchantOpen(
                merchant_service_pb2.SetMerchantOpenRequest(
                    merchant_id=shop.merchant_id, open=True
                ),
                metadata=owner.metadata,
            )
    centre = common_pb2.LatLng(latitude=lat, longitude=lng)

    async def everything(
        radius_meters: float = 0.0, open_only: bool = False
    ) -> list[merchant_pb2.NearbyMerchant]:
        found: list[merchant_pb2.NearbyMerchant] = []
        token = ""
        while True:
            page = await merchants.ListMerchants(
                merchant_service_pb2.ListMerchantsRequest(
                    location=centre,
                    radius_meters=radius_meters,
                    open_only=open_only,
                    page_size=3,
                    page_token=token,
                ),
                metadata=customer.metadata,
            )
            assert len(page.merchants) <= 3
            found += page.merchants
            token = page.next_page_token
            if not token:
                return found

    within_5km = await everything()
    ids = [m.merchant.merchant_id for m in within_5km]
    assert len(ids) == len(set(ids)) == 7
    assert set(ids) == {m for m, d in created.items() if d <= 5000}
    got = [m.distance_meters for m in within_5km]
    assert got == sorted(got)
    for found in within_5km:
        expected = haversine_m(
            lat, lng, found.merchant.location.latitude, found.merchant.location.longitude
        )
        assert found.distance_meters == pytest.approx(expected, abs=0.01)
        assert found.distance_meters == pytest.approx(created[found.merchant.merchant_id], abs=1)

    wider = await everything(radius_meters=10_000)
    assert {m.merchant.merchant_id for m in wider} == set(created)
    narrow = await everything(radius_meters=1000)
    assert len(narrow) == 3

    open_now = await everything(open_only=True)
    assert all(m.merchant.open for m in open_now)
    assert {m.merchant.merchant_id for m in open_now} == {
        m.merchant.merchant_id for m in within_5km if m.merchant.open
    }
    assert len(open_now) == 3


async def test_list_merchants_refuses_bad_queries_and_tokens(
    channel: grpc.aio.Channel, merchants: merchant_service_pb2_grpc.MerchantServiceStub
) -> None:
    owner = await _sign_up(channel, common_pb2.ROLE_MERCHANT)
    lat, lng = _far_away()
    for metres in (10, 20):
        await _create(merchants, owner, _north(lat, lng, metres))
    centre = common_pb2.LatLng(latitude=lat, longitude=lng)
    first = await merchants.ListMerchants(
        merchant_service_pb2.ListMerchantsRequest(location=centre, page_size=1),
        metadata=owner.metadata,
    )
    assert first.next_page_token
    bad_requests = [
        (merchant_service_pb2.ListMerchantsRequest(), "location"),
        (
            merchant_service_pb2.ListMerchantsRequest(location=centre, radius_meters=50_001),
            "radius_meters",
        ),
        (
            merchant_service_pb2.ListMerchantsRequest(location=centre, page_token="%%%"),
            "page_token",
        ),
        (
            merchant_service_pb2.ListMerchantsRequest(
                location=centre, open_only=True, page_token=first.next_page_token
            ),
            "page_token",
        ),
    ]
    for request, field in bad_requests:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await merchants.ListMerchants(request, metadata=owner.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _details(caught.value)[1] == [field]
