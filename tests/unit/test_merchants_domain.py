"""Pure tests of merchant and menu validation and of who may change a merchant."""

from __future__ import annotations

import dataclasses
import itertools
import math
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.auth import Principal, Role
from mesh.errors import InvalidArgument, PermissionDenied
from order_svc.domain.menus import HandoffPolicy, Merchant
from order_svc.domain.merchants import (
    MenuItemInput,
    MoneyInput,
    OptionGroupInput,
    OptionInput,
    require_manager,
    resolve_owner,
    validate_menu_item,
    validate_menu_page_size,
    validate_nearby_query,
    validate_new_merchant,
)

OWNER = str(uuid.uuid4())
GOOD_MERCHANT = {
    "name": " Pizza Place ",
    "description": "Wood-fired.",
    "address": "1 Main St",
    "lat": 52.52,
    "lng": 13.405,
    "delivery_radius_m": 3000,
    "avg_prep_seconds": 900.0,
    "currency_code": "EUR",
    "handoff_policy": HandoffPolicy.PIN,
}


def _fields(caught: pytest.ExceptionInfo[InvalidArgument]) -> set[str]:
    return {v.field for v in caught.value.violations}


def _eur(amount: int) -> MoneyInput:
    return MoneyInput("EUR", amount)


def _option(name: str, delta: int = 0, option_id: str = "") -> OptionInput:
    return OptionInput(id=option_id, name=name, price_delta=_eur(delta), available=True)


def _group(
    name: str, low: int, high: int, *options: OptionInput, group_id: str = ""
) -> OptionGroupInput:
    return OptionGroupInput(
        id=group_id, name=name, min_select=low, max_select=high, options=options
    )


def _pizza(**changes: object) -> MenuItemInput:
    item = MenuItemInput(
        id="",
        name="Margherita",
        description="Tomato, mozzarella",
        price=_eur(900),
        available=True,
        option_groups=(
            _group("Size", 1, 1, _option("S", -100), _option("M"), _option("L", 250)),
            _group("Extras", 0, 3, *(_option(f"Extra {i}", 80) for i in range(5))),
        ),
    )
    return dataclasses.replace(item, **changes)  # type: ignore[arg-type]


def _merchant(owner: str = OWNER) -> Merchant:
    now = datetime.now(UTC)
    return Merchant(
        id=str(uuid.uuid4()),
        owner_user_id=owner,
        name="Shop",
        description="",
        address="1 Main St",
        lat=0.0,
        lng=0.0,
        is_open=False,
        delivery_radius_m=3000,
        avg_prep_seconds=600,
        currency_code="EUR",
        handoff_policy=HandoffPolicy.PIN,
        rating_avg=None,
        rating_count=0,
        created_at=now,
        updated_at=now,
    )


def test_a_valid_merchant_is_trimmed_and_kept() -> None:
    new = validate_new_merchant(**GOOD_MERCHANT)  # type: ignore[arg-type]
    assert new.name == "Pizza Place"
    assert new.avg_prep_seconds == 900
    assert new.handoff_policy is HandoffPolicy.PIN


def test_every_bad_merchant_field_is_named_at_once() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_new_merchant(
            name="  ",
            description="x" * 2001,
            address="",
            lat=math.nan,
            lng=181.0,
            delivery_radius_m=99,
            avg_prep_seconds=59.0,
            currency_code="eur",
            handoff_policy=None,
            request_id="r" * 201,
        )
    assert _fields(caught) == {
        "name",
        "description",
        "address",
        "location.latitude",
        "location.longitude",
        "delivery_radius_meters",
        "average_prep_duration",
        "currency_code",
        "handoff_policy",
        "request_id",
    }


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("delivery_radius_m", 100, True),
        ("delivery_radius_m", 50_000, True),
        ("delivery_radius_m", 50_001, False),
        ("avg_prep_seconds", 60.0, True),
        ("avg_prep_seconds", 10_800.0, True),
        ("avg_prep_seconds", 10_801.0, False),
        ("avg_prep_seconds", math.inf, False),
        ("currency_code", "USD", True),
        ("currency_code", "US", False),
        ("currency_code", "USDX", False),
    ],
)
def test_merchant_bounds(field: str, value: object, ok: bool) -> None:
    kwargs = {**GOOD_MERCHANT, field: value}
    if ok:
        validate_new_merchant(**kwargs)  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidArgument):
            validate_new_merchant(**kwargs)  # type: ignore[arg-type]


def test_a_missing_location_is_required() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_new_merchant(**{**GOOD_MERCHANT, "lat": None, "lng": None})  # type: ignore[arg-type]
    assert _fields(caught) == {"location"}


def test_merchants_own_what_they_create_and_admins_name_the_owner() -> None:
    me = str(uuid.uuid4())
    assert resolve_owner(Principal(me, Role.MERCHANT), "") == me
    assert resolve_owner(Principal(me, Role.MERCHANT), me.upper()) == me
    assert resolve_owner(Principal(me, Role.ADMIN), OWNER) == OWNER
    with pytest.raises(PermissionDenied):
        resolve_owner(Principal(me, Role.MERCHANT), OWNER)
    for role in (Role.CUSTOMER, Role.DRIVER, Role.SERVICE):
        with pytest.raises(PermissionDenied):
            resolve_owner(Principal(me, role), "")
    for owner in ("", "not-a-uuid"):
        with pytest.raises(InvalidArgument) as caught:
            resolve_owner(Principal(me, Role.ADMIN), owner)
        assert _fields(caught) == {"owner_user_id"}


def test_only_the_owner_or_an_admin_manages_a_merchant() -> None:
    merchant = _merchant()
    require_manager(Principal(OWNER, Role.MERCHANT), merchant)
    require_manager(Principal(str(uuid.uuid4()), Role.ADMIN), merchant)
    for principal in (
        Principal(str(uuid.uuid4()), Role.MERCHANT),
        Principal(OWNER, Role.CUSTOMER),
        Principal("matching", Role.SERVICE),
    ):
        with pytest.raises(PermissionDenied):
            require_manager(principal, merchant)


def test_a_valid_menu_item_keeps_its_groups_in_order() -> None:
    given_id = str(uuid.uuid4())
    item = validate_menu_item(_pizza(id=given_id.upper()), merchant_id="m", currency_code="EUR")
    assert item.id == given_id
    assert item.merchant_id == "m"
    assert [g.name for g in item.option_groups] == ["Size", "Extras"]
    assert [o.price_delta_minor for o in item.option_groups[0].options] == [-100, 0, 250]
    assert all(o.id == "" for g in item.option_groups for o in g.options)


def test_an_unset_delta_is_zero_and_needs_no_currency() -> None:
    plain = OptionInput(id="", name="Plain", price_delta=None, available=True)
    empty = OptionInput(id="", name="Empty", price_delta=MoneyInput("", 0), available=True)
    item = validate_menu_item(
        _pizza(option_groups=(_group("Style", 0, 2, plain, empty),)),
        merchant_id="m",
        currency_code="EUR",
    )
    assert [o.price_delta_minor for o in item.option_groups[0].options] == [0, 0]


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (_pizza(name=""), "menu_item.name"),
        (_pizza(price=None), "menu_item.price"),
        (_pizza(price=_eur(-1)), "menu_item.price.amount_minor"),
        (_pizza(price=_eur(10**9)), "menu_item.price.amount_minor"),
        (_pizza(price=MoneyInput("USD", 100)), "menu_item.price.currency_code"),
        (_pizza(id="nope"), "menu_item.menu_item_id"),
        (
            _pizza(option_groups=(_group("Size", 2, 1, _option("S"), _option("M")),)),
            "menu_item.option_groups[0].min_select",
        ),
        (
            _pizza(option_groups=(_group("Size", 0, 0, _option("S")),)),
            "menu_item.option_groups[0].max_select",
        ),
        (
            _pizza(option_groups=(_group("Size", 1, 1), _group("More", 0, 1, _option("a")))),
            "menu_item.option_groups[0].max_select",
        ),
        (
            _pizza(
                option_groups=(_group("A", 0, 1, _option("x")), _group("B", 0, 4, _option("y")))
            ),
            "menu_item.option_groups[1].max_select",
        ),
        (
            _pizza(option_groups=(_group("Size", 1, 1, _option("S"), _option(" s ")),)),
            "menu_item.option_groups[0].options[1].name",
        ),
        (
            _pizza(
                option_groups=(
                    _group("Size", 0, 1, _option("S")),
                    _group("size", 0, 1, _option("x")),
                )
            ),
            "menu_item.option_groups[1].name",
        ),
        (
            _pizza(
                option_groups=(
                    _group("Size", 0, 1, OptionInput("", "S", MoneyInput("USD", 5), True)),
                )
            ),
            "menu_item.option_groups[0].options[0].price_delta.currency_code",
        ),
        (
            _pizza(option_groups=(_group("Size", 0, 1, _option("S", option_id="x")),)),
            "menu_item.option_groups[0].options[0].option_id",
        ),
        (
            _pizza(option_groups=tuple(_group(f"G{i}", 0, 1, _option("x")) for i in range(21))),
            "menu_item.option_groups",
        ),
        (
            _pizza(option_groups=(_group("Many", 0, 1, *(_option(f"o{i}") for i in range(51))),)),
            "menu_item.option_groups[0].options",
        ),
    ],
)
def test_bad_menu_items_name_the_field(item: MenuItemInput, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_menu_item(item, merchant_id="m", currency_code="EUR")
    assert field in _fields(caught)


def test_ids_must_be_unique_across_the_item() -> None:
    same = str(uuid.uuid4())
    item = _pizza(
        option_groups=(
            _group("A", 0, 1, _option("x", option_id=same), group_id=str(uuid.uuid4())),
            _group("B", 0, 1, _option("y", option_id=same)),
        )
    )
    with pytest.raises(InvalidArgument) as caught:
        validate_menu_item(item, merchant_id="m", currency_code="EUR")
    assert _fields(caught) == {"menu_item.option_groups[1].options[0].option_id"}


def test_negative_deltas_must_not_make_the_cheapest_choice_negative() -> None:
    # Two discounts of 60 may both be chosen: 100 - 120 < 0.
    discounts = _group("Discounts", 0, 2, _option("a", -60), _option("b", -60), _option("c", 10))
    with pytest.raises(InvalidArgument) as caught:
        validate_menu_item(
            _pizza(price=_eur(100), option_groups=(discounts,)),
            merchant_id="m",
            currency_code="EUR",
        )
    assert _fields(caught) == {"menu_item.option_groups"}
    # Only one may be chosen: 100 - 60 >= 0.
    one = dataclasses.replace(discounts, max_select=1)
    validate_menu_item(
        _pizza(price=_eur(100), option_groups=(one,)), merchant_id="m", currency_code="EUR"
    )


deltas = st.lists(st.integers(min_value=-500, max_value=500), min_size=1, max_size=5)


@given(
    st.integers(min_value=0, max_value=2000),
    st.lists(st.tuples(deltas, st.integers(0, 5), st.integers(1, 5)), min_size=0, max_size=3),
)
def test_the_cheapest_choice_rule_matches_brute_force(
    price: int, groups: list[tuple[list[int], int, int]]
) -> None:
    inputs = []
    choices = []
    for n, (values, low, high) in enumerate(groups):
        high = min(high, len(values))
        low = min(low, high)
        options = [_option(f"o{i}", d) for i, d in enumerate(values)]
        inputs.append(_group(f"g{n}", low, high, *options))
        choices.append(
            [
                sum(combo)
                for k in range(low, high + 1)
                for combo in itertools.combinations(values, k)
            ]
        )
    cheapest = price + sum(min(c) for c in choices)
    item = _pizza(price=_eur(price), option_groups=tuple(inputs))
    if cheapest >= 0:
        validate_menu_item(item, merchant_id="m", currency_code="EUR")
    else:
        with pytest.raises(InvalidArgument):
            validate_menu_item(item, merchant_id="m", currency_code="EUR")


def test_nearby_query_defaults_and_bounds() -> None:
    query = validate_nearby_query(lat=1.0, lng=2.0, radius_m=0.0, open_only=True, page_size=0)
    assert (query.radius_m, query.page_size) == (5000.0, 20)
    assert (
        validate_nearby_query(
            lat=1.0, lng=2.0, radius_m=10.0, open_only=False, page_size=500
        ).page_size
        == 100
    )
    with pytest.raises(InvalidArgument) as caught:
        validate_nearby_query(lat=None, lng=None, radius_m=50_001.0, open_only=False, page_size=-1)
    assert _fields(caught) == {"location", "radius_meters", "page_size"}
    with pytest.raises(InvalidArgument):
        validate_nearby_query(lat=1.0, lng=2.0, radius_m=-5.0, open_only=False, page_size=1)
    assert query.fingerprint() != dataclasses.replace(query, open_only=False).fingerprint()
    assert query.fingerprint() == dataclasses.replace(query, page_size=7).fingerprint()


def test_menu_page_size() -> None:
    assert [validate_menu_page_size(n) for n in (0, 1, 200, 201)] == [50, 1, 200, 200]
    with pytest.raises(InvalidArgument):
        validate_menu_page_size(-1)
