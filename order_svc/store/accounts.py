"""Users and driver profiles in PostgreSQL."""

from __future__ import annotations

import asyncpg

from mesh.auth import Role
from mesh.errors import AlreadyExists
from order_svc.domain.accounts import SignUp, User

_USER_COLUMNS = "id::text AS id, email, name, coalesce(phone, '') AS phone, role, created_at"


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        name=row["name"],
        phone=row["phone"],
        role=Role(row["role"]),
        created_at=row["created_at"],
    )


class AccountStore:
    """The ``users`` and ``drivers`` tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, sign_up: SignUp, password_hash: str) -> User:
        """Inserts the user (and driver profile) in one transaction; ALREADY_EXISTS on email."""
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    f"""
                    INSERT INTO users (email, password_hash, name, phone, role)
                    VALUES ($1, $2, $3, nullif($4, ''), $5)
                    RETURNING {_USER_COLUMNS}
                    """,
                    sign_up.email,
                    password_hash,
                    sign_up.name,
                    sign_up.phone,
                    sign_up.role.value,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(
                    "an account with this email exists", reason="EMAIL_TAKEN"
                ) from None
            assert row is not None
            if sign_up.role is Role.DRIVER:
                assert sign_up.vehicle_type is not None
                await conn.execute(
                    "INSERT INTO drivers (id, vehicle_type, license_plate)"
                    " VALUES ($1::uuid, $2, nullif($3, ''))",
                    row["id"],
                    sign_up.vehicle_type.value,
                    sign_up.license_plate,
                )
        return _user(row)

    async def credentials(self, email: str) -> tuple[User, str] | None:
        """The user with ``email`` and their password hash, if any."""
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE email = $1",
            email.strip().lower(),
        )
        return (_user(row), row["password_hash"]) if row else None

    async def get(self, user_id: str) -> User | None:
        """The user with ``user_id``, if any."""
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1::uuid", user_id
        )
        return _user(row) if row else None
