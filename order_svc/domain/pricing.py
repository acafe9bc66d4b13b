"""Order placement: validating what a customer asks for and pricing it from the menu.

Prices a client sends are never read: every amount comes from the merchant's menu as it is
when the order is placed, and is copied onto the order so later menu edits do not change it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mesh.errors import FailedPrecondition, Validator
from mesh.geo import haversine_m, validate_location
from mesh.ids import canonical_uuid
from order_svc.domain.menus import MenuItem, Merchant

# The limits CreateOrderRequest and OrderItemInput document.
MAX_LINES = 100
MAX_QUANTITY = 99
MAX_NOTE = 500
MAX_LINE_NOTE = 500
MAX_TIP_MINOR = 100_000
MAX_ADDRESS = 500
MAX_REQUEST_ID = 128


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """The delivery fee: a base amount plus a rate per started kilometre beyond the first."""

    #: Charged for every delivery, in minor units.
    base_minor: int = 199
    #: Added per started kilometre of straight-line distance beyond ``included_km``.
    per_km_minor: int = 60
    #: Kilometres the base amount covers.
    included_km: float = 1.0

    def fee(self, distance_m: float) -> int:
        """The fee for a delivery ``distance_m`` metres from the merchant."""
        extra_km = max(0.0, distance_m / 1000 - self.included_km)
        return self.base_minor + self.per_km_minor * math.ceil(extra_km)


@dataclass(frozen=True, slots=True)
class LineInput:
    """One requested line: an item, how many, and the chosen options."""

    menu_item_id: str
    quantity: int
    #: ``(option_group_id, option_id)`` pairs.
    options: tuple[tuple[str, str], ...]
    note: str = ""


@dataclass(frozen=True, slots=True)
class OrderInput:
    """A CreateOrder request as plain values (the caller is the customer)."""

    request_id: str
    merchant_id: str
    lines: tuple[LineInput, ...]
    delivery_address: str
    delivery_lat: float
    delivery_lng: float
    tip_minor: int
    #: The tip's currency as sent; empty means the merchant's.
    tip_currency: str
    note: str


@dataclass(frozen=True, slots=True)
class PricedOption:
    """A chosen option with its name and price copied from the menu."""

    option_group_id: str
    option_id: str
    group_name: str
    name: str
    price_delta_minor: int


@dataclass(frozen=True, slots=True)
class PricedLine:
    """A line with its prices fixed."""

    menu_item_id: str
    name: str
    quantity: int
    unit_price_minor: int
    options: tuple[PricedOption, ...]
    line_total_minor: int
    note: str


@dataclass(frozen=True, slots=True)
class PricedOrder:
    """Everything the order row and its lines need."""

    lines: tuple[PricedLine, ...]
    currency_code: str
    subtotal_minor: int
    delivery_fee_minor: int
    tip_minor: int
    total_minor: int
    distance_m: float


def validate_order_input(order: OrderInput) -> None:
    """Checks the request's shape; every bad field is reported at once as INVALID_ARGUMENT."""
    v = Validator()
    v.check(
        0 < len(order.request_id) <= MAX_REQUEST_ID,
        "request_id",
        f"is required (1 to {MAX_REQUEST_ID} characters) so a retry cannot order twice",
    )
    v.check(canonical_uuid(order.merchant_id) is not None, "merchant_id", "must be a merchant id")
    if v.check(bool(order.lines), "items", "must hold at least one item"):
        v.check(len(order.lines) <= MAX_LINES, "items", f"must hold at most {MAX_LINES} lines")
    for i, line in enumerate(order.lines[:MAX_LINES]):
        v.check(
            canonical_uuid(line.menu_item_id) is not None,
            f"items[{i}].menu_item_id",
            "must be a menu item id",
        )
        v.check(
            1 <= line.quantity <= MAX_QUANTITY,
            f"items[{i}].quantity",
            f"must be between 1 and {MAX_QUANTITY}",
        )
        v.check(
            len(set(line.options)) == len(line.options),
            f"items[{i}].options",
            "must not choose the same option twice",
        )
        v.check(
            len(line.note) <= MAX_LINE_NOTE,
            f"items[{i}].note",
            f"must be at most {MAX_LINE_NOTE} characters",
        )
    v.check(
        0 < len(order.delivery_address.strip()) <= MAX_ADDRESS,
        "delivery_address",
        f"is required (at most {MAX_ADDRESS} characters)",
    )
    validate_location(v, "delivery_location", order.delivery_lat, order.delivery_lng)
    v.check(order.tip_minor >= 0, "tip.amount_minor", "must not be negative")
    v.check(order.tip_minor <= MAX_TIP_MINOR, "tip.amount_minor", "is implausibly large")
    v.check(len(order.note) <= MAX_NOTE, "note", f"must be at most {MAX_NOTE} characters")
    v.raise_if_any()


def price_order(
    order: OrderInput,
    merchant: Merchant,
    menu: Mapping[str, MenuItem],
    fees: FeeSchedule,
) -> PricedOrder:
    """Prices ``order`` from ``menu`` (the merchant's items it names) and checks it can be placed.

    INVALID_ARGUMENT for what the request got wrong (an item not on this menu, options that
    break a group's rules, a tip in another currency); FAILED_PRECONDITION for what the
    merchant's state forbids now (closed, out of its delivery area, an item unavailable).
    """
    v = Validator()
    if order.tip_currency and order.tip_currency != merchant.currency_code:
        v.add("tip.currency_code", f"must be {merchant.currency_code}, the merchant's currency")
    lines: list[PricedLine] = []
    unavailable: list[str] = []
    for i, line in enumerate(order.lines):
        item = menu.get(line.menu_item_id)
        if item is None or item.merchant_id != merchant.id:
            v.add(f"items[{i}].menu_item_id", "is not on this merchant's menu")
            continue
        if not item.available:
            unavailable.append(item.name)
        options = _price_options(v, f"items[{i}].options", item, line.options, unavailable)
        unit = item.price_minor + sum(o.price_delta_minor for o in options)
        if unit < 0:
            v.add(f"items[{i}].options", "make the price negative")
        lines.append(
            PricedLine(
                menu_item_id=item.id,
                name=item.name,
                quantity=line.quantity,
                unit_price_minor=item.price_minor,
                options=options,
                line_total_minor=unit * line.quantity,
                note=line.note,
            )
        )
    v.raise_if_any()
    if not merchant.is_open:
        raise FailedPrecondition(
            f"{merchant.name} is closed", reason="MERCHANT_CLOSED", metadata={"id": merchant.id}
        )
    distance = haversine_m(merchant.lat, merchant.lng, order.delivery_lat, order.delivery_lng)
    if distance > merchant.delivery_radius_m:
        raise FailedPrecondition(
            f"the address is {distance / 1000:.1f} km away; {merchant.name} delivers within "
            f"{merchant.delivery_radius_m / 1000:.1f} km",
            reason="OUT_OF_DELIVERY_AREA",
            metadata={
                "distance_m": str(round(distance)),
                "radius_m": str(merchant.delivery_radius_m),
            },
        )
    if unavailable:
        raise FailedPrecondition(
            "not available right now: " + ", ".join(sorted(set(unavailable))),
            reason="ITEM_UNAVAILABLE",
        )
    subtotal = sum(line.line_total_minor for line in lines)
    fee = fees.fee(distance)
    return PricedOrder(
        lines=tuple(lines),
        currency_code=merchant.currency_code,
        subtotal_minor=subtotal,
        delivery_fee_minor=fee,
        tip_minor=order.tip_minor,
        total_minor=subtotal + fee + order.tip_minor,
        distance_m=distance,
    )


def _price_options(
    v: Validator,
    field: str,
    item: MenuItem,
    chosen: Sequence[tuple[str, str]],
    unavailable: list[str],
) -> tuple[PricedOption, ...]:
    groups = {g.id: g for g in item.option_groups}
    picked: dict[str, list[PricedOption]] = {g.id: [] for g in item.option_groups}
    for group_id, option_id in chosen:
        group = groups.get(group_id)
        option = next((o for o in group.options if o.id == option_id), None) if group else None
        if group is None or option is None:
            v.add(field, f"option {option_id} of group {group_id} is not offered for {item.name}")
            continue
        if not option.available:
            unavailable.append(f"{item.name} ({option.name})")
        picked[group.id].append(
            PricedOption(group.id, option.id, group.name, option.name, option.price_delta_minor)
        )
    for group in item.option_groups:
        count = len(picked[group.id])
        if not group.min_select <= count <= group.max_select:
            if group.min_select == group.max_select:
                rule = f"exactly {group.min_select}"
            else:
                rule = f"between {group.min_select} and {group.max_select}"
            v.add(field, f"{group.name}: choose {rule}, got {count}")
    return tuple(o for group in item.option_groups for o in picked[group.id])
