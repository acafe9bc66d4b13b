"""Offers: one order offered to one courier for a limited time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class OfferStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


#: Why an answer to an offer that is no longer pending is refused (ErrorInfo reasons).
NOT_PENDING_REASONS = {
    OfferStatus.ACCEPTED: "OFFER_ALREADY_ACCEPTED",
    OfferStatus.DECLINED: "OFFER_DECLINED",
    OfferStatus.EXPIRED: "OFFER_EXPIRED",
    OfferStatus.WITHDRAWN: "OFFER_WITHDRAWN",
}


@dataclass(frozen=True, slots=True)
class Offer:
    """A ``driver_offers`` row."""

    offer_id: str
    order_id: str
    driver_id: str
    status: OfferStatus
    attempt: int
    score: float | None
    #: The score's terms by name (normalised value and weight), for operators.
    factors: dict[str, tuple[float, float]]
    stacked: bool
    offered_at: datetime
    expires_at: datetime
    #: When the courier answered, or the offer expired or was withdrawn.
    responded_at: datetime | None
    decline_reason: str | None
