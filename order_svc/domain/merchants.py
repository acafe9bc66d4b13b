"""Merchants and menus: what valid input looks like and who may change what."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mesh.auth import Principal, Role
from mesh.errors import FieldViolation, InvalidArgument, PermissionDenied, Validator
from mesh.geo import snap_near_zero, validate_location
from mesh.ids import canonical_uuid
from order_svc.domain.menus import HandoffPolicy, MenuItem, Merchant, Option, OptionGroup

_CURRENCY = re.compile(r"^[A-Z]{3}$")
MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_ADDRESS = 500
MAX_REQUEST_ID = 200
MIN_RADIUS_M = 100
MAX_RADIUS_M = 50_000
MIN_PREP_S = 60
MAX_PREP_S = 3 * 3600
#: Prices and deltas stay below this many minor units, so order totals cannot overflow.
PRICE_LIMIT = 10**9
MAX_GROUPS = 20
MAX_OPTIONS = 50


@dataclass(frozen=True, slots=True)
class NewMerchant:
    """A validated CreateMerchant request."""

    name: str
    description: str
    address: str
    lat: float
    lng: float
    delivery_radius_m: int
    avg_prep_seconds: int
    currency_code: str
    handoff_policy: HandoffPolicy


@dataclass(frozen=True, slots=True)
class MoneyInput:
    """An amount as the client sent it, before its currency is checked."""

    currency_code: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class OptionInput:
    """One option as the client sent it."""

    id: str
    name: str
    price_delta: MoneyInput | None
    available: bool


@dataclass(frozen=True, slots=True)
class OptionGroupInput:
    """One option group as the client sent it."""

    id: str
    name: str
    min_select: int
    max_select: int
    options: tuple[OptionInput, ...]


@dataclass(frozen=True, slots=True)
class MenuItemInput:
    """A menu item as the client sent it; empty ids ask the server to assign one."""

    id: str
    name: str
    description: str
    price: MoneyInput | None
    available: bool
    option_groups: tuple[OptionGroupInput, ...]


def check_request_id(v: Validator, request_id: str) -> None:
    """Records a violation if an idempotency key is too long to store."""
    v.check(len(request_id) <= MAX_REQUEST_ID, "request_id", "must be at most 200 characters")


def _check_text(v: Validator, value: str, field: str, *, required: bool, limit: int) -> str:
    value = value.strip()
    if required:
        v.check(1 <= len(value) <= limit, field, f"must be 1 to {limit} characters")
    else:
        v.check(len(value) <= limit, field, f"must be at most {limit} characters")
    return value


def validate_new_merchant(
    *,
    name: str,
    description: str,
    address: str,
    lat: float | None,
    lng: float | None,
    delivery_radius_m: int,
    avg_prep_seconds: float,
    currency_code: str,
    handoff_policy: HandoffPolicy | None,
    request_id: str = "",
) -> NewMerchant:
    """Checks every field of a new merchant; INVALID_ARGUMENT names each bad one."""
    v = Validator()
    check_request_id(v, request_id)
    name = _check_text(v, name, "name", required=True, limit=MAX_NAME)
    description = _check_text(v, description, "description", required=False, limit=MAX_DESCRIPTION)
    address = _check_text(v, address, "address", required=True, limit=MAX_ADDRESS)
    validate_location(v, "location", lat, lng)
    v.check(
        MIN_RADIUS_M <= delivery_radius_m <= MAX_RADIUS_M,
        "delivery_radius_meters",
        f"must be {MIN_RADIUS_M} to {MAX_RADIUS_M} meters",
    )
    v.check(
        math.isfinite(avg_prep_seconds) and MIN_PREP_S <= avg_prep_seconds <= MAX_PREP_S,
        "average_prep_duration",
        "must be 1 minute to 3 hours",
    )
    v.check(
        bool(_CURRENCY.match(currency_code)),
        "currency_code",
        "must be an ISO 4217 code of three upper-case letters",
    )
    v.check(handoff_policy is not None, "handoff_policy", "must be a known handoff policy")
    v.raise_if_any()
    assert lat is not None and lng is not None and handoff_policy is not None
    return NewMerchant(
        name=name,
        description=description,
        address=address,
        # The store's distance SQL underflows on coordinates this near 0 (see snap_near_zero).
        lat=snap_near_zero(lat),
        lng=snap_near_zero(lng),
        delivery_radius_m=delivery_radius_m,
        avg_prep_seconds=round(avg_prep_seconds),
        currency_code=currency_code,
        handoff_policy=handoff_policy,
    )


def resolve_owner(caller: Principal, owner_user_id: str) -> str:
    """Who will own a new merchant: a merchant owns what it creates, an admin names the owner."""
    caller.require(Role.MERCHANT, Role.ADMIN)
    if caller.role is Role.ADMIN:
        if not owner_user_id:
            raise InvalidArgument(
                FieldViolation("owner_user_id", "is required when an admin creates a merchant")
            )
        owner = canonical_uuid(owner_user_id)
        if owner is None:
            raise InvalidArgument(FieldViolation("owner_user_id", "must be a user id"))
        return owner
    if owner_user_id and canonical_uuid(owner_user_id) != caller.subject:
        raise PermissionDenied(
            "a merchant can only create merchants it owns itself", reason="OWNER_NOT_SELF"
        )
    return caller.subject


def require_manager(caller: Principal, merchant: Merchant) -> None:
    """Raises PERMISSION_DENIED unless the caller owns ``merchant`` or is an admin."""
    if caller.role is Role.ADMIN:
        return
    if caller.role is Role.MERCHANT and caller.subject == merchant.owner_user_id:
        return
    raise PermissionDenied(
        "only the merchant's owner or an admin may change it",
        reason="NOT_MERCHANT_OWNER",
        metadata={"merchant_id": merchant.id},
    )


def _check_money(
    v: Validator, money: MoneyInput | None, field: str, currency_code: str, *, required: bool
) -> int:
    """The amount of ``money`` after checking its currency and magnitude (0 if absent)."""
    if money is None:
        v.check(not required, field, "is required")
        return 0
    # An unset delta arrives as an empty currency and zero; any real amount names its currency.
    if money.currency_code or money.amount_minor or required:
        v.check(
            money.currency_code == currency_code,
            f"{field}.currency_code",
            f"must be the merchant's currency {currency_code}",
        )
    amount = money.amount_minor
    if required:
        v.check(0 <= amount < PRICE_LIMIT, f"{field}.amount_minor", "must be 0 to 10^9 - 1")
    else:
        v.check(
            -PRICE_LIMIT < amount < PRICE_LIMIT,
            f"{field}.amount_minor",
            "must be above -10^9 and below 10^9",
        )
    return amount


def _check_id(v: Validator, value: str, field: str, seen: set[str]) -> str:
    """The canonical form of an optional id; records malformed and repeated ids."""
    if not value:
        return ""
    canonical = canonical_uuid(value)
    if not v.check(canonical is not None, field, "must be empty or an id the server assigned"):
        return ""
    assert canonical is not None
    v.check(canonical not in seen, field, "must be unique within the menu item")
    seen.add(canonical)
    return canonical


def _cheapest_and_dearest(group: OptionGroup) -> tuple[int, int]:
    """The least and greatest total delta a valid choice from ``group`` can add."""
    deltas = sorted(o.price_delta_minor for o in group.options)
    cheapest = sum(deltas[: group.min_select]) + sum(
        d for d in deltas[group.min_select : group.max_select] if d < 0
    )
    ascending_from_top = deltas[::-1]
    dearest = sum(ascending_from_top[: group.min_select]) + sum(
        d for d in ascending_from_top[group.min_select : group.max_select] if d > 0
    )
    return cheapest, dearest


def _validate_group(
    v: Validator,
    group: OptionGroupInput,
    field: str,
    currency_code: str,
    seen_ids: set[str],
) -> OptionGroup:
    group_id = _check_id(v, group.id, f"{field}.option_group_id", seen_ids)
    name = _check_text(v, group.name, f"{field}.name", required=True, limit=MAX_NAME)
    count = len(group.options)
    v.check(count <= MAX_OPTIONS, f"{field}.options", f"must hold at most {MAX_OPTIONS} options")
    v.check(
        0 <= group.min_select <= group.max_select,
        f"{field}.min_select",
        "must be between 0 and max_select",
    )
    v.check(
        1 <= group.max_select <= count,
        f"{field}.max_select",
        "must be at least 1 and at most the number of options",
    )
    options: list[Option] = []
    names: set[str] = set()
    for i, option in enumerate(group.options):
        at = f"{field}.options[{i}]"
        option_name = _check_text(v, option.name, f"{at}.name", required=True, limit=MAX_NAME)
        v.check(
            option_name.casefold() not in names,
            f"{at}.name",
            "must be unique within the option group",
        )
        names.add(option_name.casefold())
        options.append(
            Option(
                id=_check_id(v, option.id, f"{at}.option_id", seen_ids),
                name=option_name,
                price_delta_minor=_check_money(
                    v, option.price_delta, f"{at}.price_delta", currency_code, required=False
                ),
                available=option.available,
            )
        )
    return OptionGroup(
        id=group_id,
        name=name,
        min_select=group.min_select,
        max_select=group.max_select,
        options=tuple(options),
    )


def validate_menu_item(
    item: MenuItemInput, *, merchant_id: str, currency_code: str, field: str = "menu_item"
) -> MenuItem:
    """Checks a menu item against its merchant's currency; INVALID_ARGUMENT names each bad field.

    Ids in the result are canonical, and empty where the server must assign one.
    """
    v = Validator()
    item_id = ""
    if item.id:
        item_id = canonical_uuid(item.id) or ""
        v.check(
            bool(item_id), f"{field}.menu_item_id", "must be empty or an id the server assigned"
        )
    name = _check_text(v, item.name, f"{field}.name", required=True, limit=MAX_NAME)
    description = _check_text(
        v, item.description, f"{field}.description", required=False, limit=MAX_DESCRIPTION
    )
    price = _check_money(v, item.price, f"{field}.price", currency_code, required=True)
    v.check(
        len(item.option_groups) <= MAX_GROUPS,
        f"{field}.option_groups",
        f"must hold at most {MAX_GROUPS} groups",
    )
    seen_ids: set[str] = set()
    group_names: set[str] = set()
    groups: list[OptionGroup] = []
    for i, group in enumerate(item.option_groups):
        at = f"{field}.option_groups[{i}]"
        checked = _validate_group(v, group, at, currency_code, seen_ids)
        v.check(
            checked.name.casefold() not in group_names,
            f"{at}.name",
            "must be unique within the menu item",
        )
        group_names.add(checked.name.casefold())
        groups.append(checked)
    if not v.violations:
        _check_price_range(v, price, groups, f"{field}.option_groups")
    v.raise_if_any()
    return MenuItem(
        id=item_id,
        merchant_id=merchant_id,
        name=name,
        description=description,
        price_minor=price,
        available=item.available,
        option_groups=tuple(groups),
    )


def _check_price_range(v: Validator, price: int, groups: Sequence[OptionGroup], field: str) -> None:
    """Records a violation if some valid choice of options costs below zero or too much."""
    bounds = [_cheapest_and_dearest(g) for g in groups]
    v.check(
        price + sum(low for low, _ in bounds) >= 0,
        field,
        "negative price deltas must not make the cheapest choice cost less than zero",
    )
    v.check(
        price + sum(high for _, high in bounds) < PRICE_LIMIT,
        field,
        "the dearest choice of options must cost below 10^9 minor units",
    )


DEFAULT_SEARCH_RADIUS_M = 5_000.0
MAX_SEARCH_RADIUS_M = 50_000.0
DEFAULT_MERCHANT_PAGE = 20
MAX_MERCHANT_PAGE = 100
DEFAULT_MENU_PAGE = 50
MAX_MENU_PAGE = 200


@dataclass(frozen=True, slots=True)
class NearbyQuery:
    """A validated ListMerchants query."""

    lat: float
    lng: float
    radius_m: float
    open_only: bool
    page_size: int

    def fingerprint(self) -> str:
        """A short digest of what the query selects, so a page token cannot cross queries."""
        text = f"{self.lat!r},{self.lng!r},{self.radius_m!r},{self.open_only}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_page_size(v: Validator, page_size: int, *, default: int, maximum: int) -> int:
    """The page size to use: 0 means ``default``, above ``maximum`` means ``maximum``."""
    v.check(page_size >= 0, "page_size", "must not be negative")
    return min(page_size or default, maximum) if page_size > 0 else default


def validate_nearby_query(
    *, lat: float | None, lng: float | None, radius_m: float, open_only: bool, page_size: int
) -> NearbyQuery:
    """Checks a proximity search: a valid centre, a radius up to 50 km (0 means 5 km)."""
    v = Validator()
    validate_location(v, "location", lat, lng)
    radius = radius_m or DEFAULT_SEARCH_RADIUS_M
    v.check(
        math.isfinite(radius) and 0 < radius <= MAX_SEARCH_RADIUS_M,
        "radius_meters",
        "must be positive and at most 50000 meters",
    )
    size = check_page_size(v, page_size, default=DEFAULT_MERCHANT_PAGE, maximum=MAX_MERCHANT_PAGE)
    v.raise_if_any()
    assert lat is not None and lng is not None
    return NearbyQuery(
        lat=snap_near_zero(lat),
        lng=snap_near_zero(lng),
        radius_m=radius,
        open_only=open_only,
        page_size=size,
    )


def validate_menu_page_size(page_size: int) -> int:
    """The ListMenuItems page size: 0 means 50, above 200 means 200."""
    v = Validator()
    size = check_page_size(v, page_size, default=DEFAULT_MENU_PAGE, maximum=MAX_MENU_PAGE)
    v.raise_if_any()
    return size
