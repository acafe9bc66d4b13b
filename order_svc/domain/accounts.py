"""Accounts: who may sign up as what, and what a valid sign-up looks like."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from mesh.auth import Principal, Role
from mesh.errors import PermissionDenied, Validator

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9 ()-]{5,32}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256


class VehicleType(StrEnum):
    """What a courier drives; the strings stored in PostgreSQL."""

    BICYCLE = "bicycle"
    MOTORCYCLE = "motorcycle"
    CAR = "car"
    VAN = "van"


@dataclass(frozen=True, slots=True)
class User:
    """An account."""

    id: str
    email: str
    name: str
    phone: str
    role: Role
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SignUp:
    """A validated sign-up."""

    email: str
    password: str
    name: str
    phone: str
    role: Role
    vehicle_type: VehicleType | None
    license_plate: str


def validate_sign_up(
    *,
    email: str,
    password: str,
    name: str,
    phone: str,
    role: Role | None,
    vehicle_type: VehicleType | None,
    license_plate: str,
    caller: Principal | None,
) -> SignUp:
    """Checks every field of a sign-up and who may create which role.

    Anyone may sign up as a customer, driver or merchant; only an admin creates admins.
    """
    v = Validator()
    email = email.strip().lower()
    v.check(bool(_EMAIL.match(email)) and len(email) <= 254, "email", "must be an email address")
    v.check(
        MIN_PASSWORD <= len(password) <= MAX_PASSWORD,
        "password",
        f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters",
    )
    name = name.strip()
    v.check(1 <= len(name) <= 200, "name", "must be 1 to 200 characters")
    phone = phone.strip()
    v.check(not phone or bool(_PHONE.match(phone)), "phone", "must be a phone number")
    v.check(role is not None and role is not Role.SERVICE, "role", "must be set")
    if role is Role.DRIVER:
        v.check(vehicle_type is not None, "vehicle_type", "is required for drivers")
    else:
        v.check(vehicle_type is None, "vehicle_type", "is only for drivers")
    v.check(len(license_plate) <= 20, "license_plate", "must be at most 20 characters")
    v.raise_if_any()
    assert role is not None
    if role is Role.ADMIN and (caller is None or caller.role is not Role.ADMIN):
        raise PermissionDenied("only an admin can create an admin", reason="ADMIN_ONLY")
    return SignUp(email, password, name, phone, role, vehicle_type, license_plate.strip())


class Passwords:
    """argon2id hashing, off the event loop (each hash costs tens of milliseconds of CPU)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        # Verified against when the email is unknown, so both paths cost the same time.
        self._dummy = self._hasher.hash("not a real password")

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password``."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored_hash`` (``None``: an unknown account)."""

        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash or self._dummy, password) and (
                    stored_hash is not None
                )
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)
