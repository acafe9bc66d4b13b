"""Merchants and their menus as plain values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class HandoffPolicy(StrEnum):
    """How a courier must prove delivery; the strings stored in PostgreSQL."""

    PIN = "pin"
    PHOTO = "photo"
    PIN_OR_PHOTO = "pin_or_photo"


@dataclass(frozen=True, slots=True)
class Merchant:
    """A shop that prepares orders."""

    id: str
    owner_user_id: str
    name: str
    description: str
    address: str
    lat: float
    lng: float
    is_open: bool
    delivery_radius_m: int
    avg_prep_seconds: int
    currency_code: str
    handoff_policy: HandoffPolicy
    rating_avg: float | None
    rating_count: int
    created_at: datetime
    updated_at: datetime
    #: Bumped whenever something that prices or admits an order changes (not by ratings, nor by
    #: the learned preparation time).
    menu_version: int = 1
    #: How many preparations ``avg_prep_seconds`` was learned from (0: the merchant's estimate).
    prep_observations: int = 0
    #: How far ``avg_prep_seconds`` typically misses an order, in seconds.
    prep_deviation_seconds: int = 0


@dataclass(frozen=True, slots=True)
class Option:
    """One choice within an option group (size L, extra cheese)."""

    id: str
    name: str
    price_delta_minor: int
    available: bool


@dataclass(frozen=True, slots=True)
class OptionGroup:
    """A set of options of which a customer picks between ``min_select`` and ``max_select``."""

    id: str
    name: str
    min_select: int
    max_select: int
    options: tuple[Option, ...]


@dataclass(frozen=True, slots=True)
class MenuItem:
    """Something a merchant sells, with its option groups."""

    id: str
    merchant_id: str
    name: str
    description: str
    price_minor: int
    available: bool
    option_groups: tuple[OptionGroup, ...]
    updated_at: datetime | None = None
