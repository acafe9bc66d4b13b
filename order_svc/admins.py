"""Admin accounts, made by an operator who can reach the database (``delivery admin create``)."""

from __future__ import annotations

import asyncpg

from mesh.auth import Principal, Role
from mesh.errors import AlreadyExists, FailedPrecondition, Unavailable
from order_svc.domain.accounts import Passwords, User, validate_sign_up
from order_svc.store.accounts import AccountStore

#: Who makes an admin here: whoever can write the database holds every right already, so the
#: rule that only an admin creates admins is met by the operator standing in for one.
_OPERATOR = Principal(subject="delivery admin create", role=Role.ADMIN)


async def create_admin(
    database_url: str, *, email: str, name: str, password: str
) -> tuple[User, bool]:
    """Creates an admin account, or finds the admin that has ``email``; returns the account and
    whether it was created now.

    SignUp refuses ROLE_ADMIN unless an admin calls it, so the first admin is made here. Running
    it again for the same admin changes nothing (its password stays as it was); an email taken
    by an account of another role is refused with ALREADY_EXISTS, as accounts never change role.
    Bad input is INVALID_ARGUMENT with SignUp's field violations; a database that cannot be
    reached is UNAVAILABLE, one without the schema FAILED_PRECONDITION.
    """
    sign_up = validate_sign_up(
        email=email,
        password=password,
        name=name,
        phone="",
        role=Role.ADMIN,
        vehicle_type=None,
        license_plate="",
        caller=_OPERATOR,
    )
    try:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    except (OSError, asyncpg.PostgresError) as error:
        raise Unavailable(
            f"cannot reach the database: {error}", reason="DATABASE_UNREACHABLE"
        ) from None
    try:
        accounts = AccountStore(pool)
        try:
            found = await accounts.credentials(sign_up.email)
        except asyncpg.UndefinedTableError:
            raise FailedPrecondition(
                "the database has no schema yet: run `delivery migrate` (`delivery up` does)",
                reason="NO_SCHEMA",
            ) from None
        if found is not None:
            user, _ = found
            if user.role is Role.ADMIN:
                return user, False
            raise AlreadyExists(
                f"{sign_up.email} belongs to a {user.role.value} account; choose another email",
                reason="EMAIL_TAKEN",
            )
        user = await accounts.create(sign_up, await Passwords().hash(sign_up.password))
        return user, True
    finally:
        await pool.close()
