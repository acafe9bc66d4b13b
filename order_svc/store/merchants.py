"""Merchants and menus in PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from mesh.errors import Aborted, FieldViolation, InvalidArgument, NotFound
from mesh.geo import EARTH_RADIUS_M, bounding_box, cell
from mesh.ids import canonical_uuid
from order_svc.domain.menus import HandoffPolicy, MenuItem, Merchant, Option, OptionGroup
from order_svc.domain.merchants import NewMerchant

#: The H3 resolution of ``merchants.h3_cell`` (about 1.4 km edges).
H3_RES = 7

_MERCHANT_COLUMNS = """
    id::text AS id, owner_user_id::text AS owner_user_id, name, description, address, lat, lng,
    is_open, delivery_radius_m, avg_prep_seconds, currency_code, handoff_policy,
    rating_avg::float8 AS rating_avg, rating_count, created_at, updated_at, menu_version,
    prep_observations, prep_deviation_seconds
"""

# The same formula as mesh.geo.haversine_m, with the search centre in $1 and $2.
_DISTANCE_SQL = f"""
    2 * {EARTH_RADIUS_M} * asin(least(1.0, sqrt(
        power(sin(radians(lat - $1::float8) / 2), 2)
        + cos(radians($1::float8)) * cos(radians(lat))
          * power(sin(radians(lng - $2::float8) / 2), 2)
    )))
"""

_LIST_NEAR_SQL = f"""
    SELECT * FROM (
        SELECT {_MERCHANT_COLUMNS}, id AS key_id, {_DISTANCE_SQL} AS distance_m
        FROM merchants
        WHERE lat BETWEEN $3::float8 AND $4::float8
          AND CASE WHEN $5::float8 <= $6::float8 THEN lng BETWEEN $5::float8 AND $6::float8
                   ELSE lng >= $5::float8 OR lng <= $6::float8 END
          AND (NOT $7::bool OR is_open)
    ) m
    WHERE distance_m <= $8::float8
      AND ($9::float8 IS NULL OR (distance_m, key_id) > ($9::float8, $10::uuid))
    ORDER BY distance_m, key_id
    LIMIT $11
"""

# One statement for items with their groups and options: a consistent snapshot in one round
# trip. ``{items}`` selects the wanted menu_items rows and fixes their order.
_ITEMS_SQL = """
    WITH items AS ({items})
    SELECT i.id::text AS id, i.merchant_id::text AS merchant_id, i.name, i.description,
           i.price_minor, i.available, i.updated_at,
           g.id::text AS group_id, g.name AS group_name, g.min_select, g.max_select,
           o.id::text AS option_id, o.name AS option_name, o.price_delta_minor,
           o.available AS option_available
    FROM items i
    LEFT JOIN menu_option_groups g ON g.menu_item_id = i.id
    LEFT JOIN menu_options o ON o.option_group_id = g.id
    ORDER BY {order}, g.position, g.id, o.position, o.id
"""

_ITEMS_BY_ID_SQL = _ITEMS_SQL.format(
    items="SELECT * FROM menu_items WHERE merchant_id = $1::uuid AND id = ANY($2::uuid[])",
    order="i.id",
)

_ITEMS_PAGE_SQL = _ITEMS_SQL.format(
    items="""
        SELECT * FROM menu_items
        WHERE merchant_id = $1::uuid
          AND (NOT $2::bool OR available)
          AND ($3::text IS NULL OR (name, id) > ($3::text, $4::uuid))
        ORDER BY name, id
        LIMIT $5
    """,
    order="i.name, i.id",
)


def _merchant(row: asyncpg.Record) -> Merchant:
    return Merchant(
        id=row["id"],
        owner_user_id=row["owner_user_id"],
        name=row["name"],
        description=row["description"],
        address=row["address"],
        lat=row["lat"],
        lng=row["lng"],
        is_open=row["is_open"],
        delivery_radius_m=row["delivery_radius_m"],
        avg_prep_seconds=row["avg_prep_seconds"],
        currency_code=row["currency_code"],
        handoff_policy=HandoffPolicy(row["handoff_policy"]),
        rating_avg=row["rating_avg"],
        rating_count=row["rating_count"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        menu_version=row["menu_version"],
        prep_observations=row["prep_observations"],
        prep_deviation_seconds=row["prep_deviation_seconds"],
    )


def _menu_items(rows: Sequence[asyncpg.Record]) -> list[MenuItem]:
    """Folds the flat item x group x option rows of ``_ITEMS_SQL`` into items, keeping order."""
    heads: dict[str, asyncpg.Record] = {}
    groups: dict[str, dict[str, tuple[asyncpg.Record, list[Option]]]] = {}
    for row in rows:
        item_id = row["id"]
        if item_id not in heads:
            heads[item_id] = row
            groups[item_id] = {}
        if row["group_id"] is None:
            continue
        group = groups[item_id].setdefault(row["group_id"], (row, []))
        if row["option_id"] is not None:
            group[1].append(
                Option(
                    id=row["option_id"],
                    name=row["option_name"],
                    price_delta_minor=row["price_delta_minor"],
                    available=row["option_available"],
                )
            )
    return [
        MenuItem(
            id=item_id,
            merchant_id=head["merchant_id"],
            name=head["name"],
            description=head["description"],
            price_minor=head["price_minor"],
            available=head["available"],
            option_groups=tuple(
                OptionGroup(
                    id=group_id,
                    name=g["group_name"],
                    min_select=g["min_select"],
                    max_select=g["max_select"],
                    options=tuple(options),
                )
                for group_id, (g, options) in groups[item_id].items()
            ),
            updated_at=head["updated_at"],
        )
        for item_id, head in heads.items()
    ]


def _with_ids(item: MenuItem, item_id: str) -> MenuItem:
    """``item`` with every empty id filled by a fresh UUID, so callers learn the ids at once."""
    return MenuItem(
        id=item_id,
        merchant_id=item.merchant_id,
        name=item.name,
        description=item.description,
        price_minor=item.price_minor,
        available=item.available,
        option_groups=tuple(
            OptionGroup(
                id=g.id or str(uuid.uuid4()),
                name=g.name,
                min_select=g.min_select,
                max_select=g.max_select,
                options=tuple(
                    Option(
                        id=o.id or str(uuid.uuid4()),
                        name=o.name,
                        price_delta_minor=o.price_delta_minor,
                        available=o.available,
                    )
                    for o in g.options
                ),
            )
            for g in item.option_groups
        ),
    )


class MerchantStore:
    """The ``merchants``, ``menu_items``, ``menu_option_groups`` and ``menu_options`` tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        new: NewMerchant,
        *,
        owner_user_id: str,
        caller_id: str,
        request_id: str = "",
        request_hash: bytes = b"",
    ) -> Merchant:
        """Inserts a closed merchant; a retried ``request_id`` returns the first one.

        NOT_FOUND if the owner does not exist, INVALID_ARGUMENT if it is not a merchant account.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if request_id:
                earlier = await _claim_key(
                    conn, caller_id, "create_merchant", request_id, request_hash
                )
                if earlier is not None:
                    row = await conn.fetchrow(
                        f"SELECT {_MERCHANT_COLUMNS} FROM merchants WHERE id = $1::uuid", earlier
                    )
                    if row is None:
                        raise NotFound("the merchant was deleted", reason="MERCHANT_NOT_FOUND")
                    return _merchant(row)
            await _check_owner(conn, owner_user_id)
            row = await conn.fetchrow(
                f"""
                INSERT INTO merchants (owner_user_id, name, description, address, lat, lng,
                    h3_cell, delivery_radius_m, avg_prep_seconds, currency_code, handoff_policy)
                VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                RETURNING {_MERCHANT_COLUMNS}
                """,
                owner_user_id,
                new.name,
                new.description,
                new.address,
                new.lat,
                new.lng,
                cell(new.lat, new.lng, H3_RES),
                new.delivery_radius_m,
                new.avg_prep_seconds,
                new.currency_code,
                new.handoff_policy.value,
            )
            assert row is not None
            if request_id:
                await _complete_key(conn, caller_id, "create_merchant", request_id, row["id"])
        return _merchant(row)

    async def get(self, merchant_id: str) -> Merchant | None:
        """The merchant with ``merchant_id``; ``None`` if there is none or the id is malformed."""
        key = canonical_uuid(merchant_id)
        if key is None:
            return None
        row = await self._pool.fetchrow(
            f"SELECT {_MERCHANT_COLUMNS} FROM merchants WHERE id = $1::uuid", key
        )
        return _merchant(row) if row else None

    async def set_open(self, merchant_id: str, is_open: bool) -> Merchant:
        """Opens or closes a merchant; NOT_FOUND if there is none."""
        key = canonical_uuid(merchant_id)
        row = None
        if key is not None:
            row = await self._pool.fetchrow(
                f"UPDATE merchants SET is_open = $2 WHERE id = $1::uuid"
                f" RETURNING {_MERCHANT_COLUMNS}",
                key,
                is_open,
            )
        if row is None:
            raise _merchant_not_found(merchant_id)
        return _merchant(row)

    async def list_near(
        self,
        lat: float,
        lng: float,
        radius_m: float,
        *,
        open_only: bool,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[tuple[Merchant, float]]:
        """Merchants within ``radius_m`` of the point with their distances, nearest first.

        ``after`` is the ``(distance, id)`` of the last merchant of the previous page; ties in
        distance are broken by id, so pages neither repeat nor skip a merchant.
        """
        lat_min, lat_max, lng_min, lng_max = bounding_box(lat, lng, radius_m)
        after_distance, after_id = after if after else (None, None)
        rows = await self._pool.fetch(
            _LIST_NEAR_SQL,
            lat,
            lng,
            lat_min,
            lat_max,
            lng_min,
            lng_max,
            open_only,
            radius_m,
            after_distance,
            after_id,
            limit,
        )
        return [(_merchant(row), row["distance_m"]) for row in rows]

    async def upsert_menu_item(
        self,
        merchant_id: str,
        item: MenuItem,
        *,
        caller_id: str = "",
        request_id: str = "",
        request_hash: bytes = b"",
    ) -> MenuItem:
        """Creates (empty ``item.id``) or replaces a menu item with its groups and options.

        Group and option ids the caller sent are kept, so orders that reference them stay
        meaningful; NOT_FOUND if ``item.id`` is not an item of this merchant.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if request_id:
                earlier = await _claim_key(
                    conn, caller_id, "upsert_menu_item", request_id, request_hash
                )
                if earlier is not None:
                    found = _menu_items(await conn.fetch(_ITEMS_BY_ID_SQL, merchant_id, [earlier]))
                    if not found:
                        raise NotFound("the menu item was deleted", reason="MENU_ITEM_NOT_FOUND")
                    return found[0]
            item_id = await _write_item_row(conn, merchant_id, item)
            # Options go with their groups (ON DELETE CASCADE).
            await conn.execute(
                "DELETE FROM menu_option_groups WHERE menu_item_id = $1::uuid", item_id
            )
            await _refuse_foreign_ids(conn, item)
            await _insert_options(conn, _with_ids(item, item_id))
            if request_id:
                await _complete_key(conn, caller_id, "upsert_menu_item", request_id, item_id)
            rows = await conn.fetch(_ITEMS_BY_ID_SQL, merchant_id, [item_id])
        return _menu_items(rows)[0]

    async def list_menu_items(
        self,
        merchant_id: str,
        *,
        available_only: bool,
        limit: int,
        after: tuple[str, str] | None = None,
    ) -> list[MenuItem]:
        """A merchant's menu items ordered by name (then id), after the ``(name, id)`` cursor."""
        key = canonical_uuid(merchant_id)
        if key is None:
            return []
        after_name, after_id = after if after else (None, None)
        rows = await self._pool.fetch(
            _ITEMS_PAGE_SQL, key, available_only, after_name, after_id, limit
        )
        return _menu_items(rows)

    async def menu_items_for_order(
        self, merchant_id: str, item_ids: Sequence[str], *, conn: Any = None
    ) -> dict[str, MenuItem]:
        """:func:`menu_items_for_order` on ``conn`` (a transaction's connection) or the pool."""
        return await menu_items_for_order(conn or self._pool, merchant_id, item_ids)


async def menu_items_for_order(
    conn_or_pool: Any, merchant_id: str, item_ids: Sequence[str]
) -> dict[str, MenuItem]:
    """The named items of ``merchant_id`` with their groups and options, in one query.

    Keys are the ids as the caller gave them; ids that are malformed, unknown or another
    merchant's are absent. ``conn_or_pool`` is an asyncpg connection (say, inside the caller's
    transaction) or pool.
    """
    merchant_key = canonical_uuid(merchant_id)
    wanted = {given: canonical_uuid(given) for given in item_ids}
    keys = sorted({k for k in wanted.values() if k is not None})
    if merchant_key is None or not keys:
        return {}
    rows = await conn_or_pool.fetch(_ITEMS_BY_ID_SQL, merchant_key, keys)
    by_id = {item.id: item for item in _menu_items(rows)}
    return {given: by_id[key] for given, key in wanted.items() if key in by_id}


def _merchant_not_found(merchant_id: str) -> NotFound:
    return NotFound(
        "no merchant has this id",
        reason="MERCHANT_NOT_FOUND",
        metadata={"merchant_id": merchant_id},
    )


async def _check_owner(conn: asyncpg.Connection, owner_user_id: str) -> None:
    """Raises unless ``owner_user_id`` is an existing merchant-role account."""
    role = await conn.fetchval("SELECT role FROM users WHERE id = $1::uuid", owner_user_id)
    if role is None:
        raise NotFound(
            "no user has this id",
            reason="OWNER_NOT_FOUND",
            metadata={"owner_user_id": owner_user_id},
        )
    if role != "merchant":
        raise InvalidArgument(FieldViolation("owner_user_id", "must name a merchant-role user"))


async def _claim_key(
    conn: asyncpg.Connection, caller_id: str, operation: str, request_id: str, request_hash: bytes
) -> str | None:
    """Claims an idempotency key in the caller's transaction; the earlier result's id if taken.

    A concurrent duplicate blocks on the primary key until the first commits or rolls back,
    so exactly one of them does the work.
    """
    claimed = await conn.fetchval(
        """
        INSERT INTO idempotency_keys (caller_id, operation, request_id, request_hash)
        VALUES ($1::uuid, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1
        """,
        caller_id,
        operation,
        request_id,
        request_hash,
    )
    if claimed:
        return None
    row = await conn.fetchrow(
        """
        SELECT request_hash, status, resource_id::text AS resource_id FROM idempotency_keys
        WHERE caller_id = $1::uuid AND operation = $2 AND request_id = $3
        """,
        caller_id,
        operation,
        request_id,
    )
    assert row is not None
    if bytes(row["request_hash"]) != request_hash:
        raise InvalidArgument(
            FieldViolation("request_id", "was already used for a different request"),
            reason="IDEMPOTENCY_KEY_REUSED",
        )
    if row["status"] != "completed" or row["resource_id"] is None:
        # Keys are claimed and completed in one transaction, so this is a leftover of a bug.
        raise Aborted("the first request with this request_id has not finished")
    return str(row["resource_id"])


async def _complete_key(
    conn: asyncpg.Connection, caller_id: str, operation: str, request_id: str, resource_id: str
) -> None:
    """Marks a claimed key done; retries replay the resource's current state from its id."""
    await conn.execute(
        """
        UPDATE idempotency_keys
        SET status = 'completed', response = ''::bytea, resource_id = $4::uuid,
            completed_at = now()
        WHERE caller_id = $1::uuid AND operation = $2 AND request_id = $3
        """,
        caller_id,
        operation,
        request_id,
        resource_id,
    )


async def _write_item_row(conn: asyncpg.Connection, merchant_id: str, item: MenuItem) -> str:
    """Inserts or updates the ``menu_items`` row and returns its id."""
    if not item.id:
        item_id = await conn.fetchval(
            """
            INSERT INTO menu_items (merchant_id, name, description, price_minor, available)
            VALUES ($1::uuid, $2, $3, $4, $5) RETURNING id::text
            """,
            merchant_id,
            item.name,
            item.description,
            item.price_minor,
            item.available,
        )
        return str(item_id)
    item_id = await conn.fetchval(
        """
        UPDATE menu_items SET name = $3, description = $4, price_minor = $5, available = $6
        WHERE id = $1::uuid AND merchant_id = $2::uuid RETURNING id::text
        """,
        item.id,
        merchant_id,
        item.name,
        item.description,
        item.price_minor,
        item.available,
    )
    if item_id is None:
        raise NotFound(
            "the merchant has no menu item with this id",
            reason="MENU_ITEM_NOT_FOUND",
            metadata={"menu_item_id": item.id},
        )
    return str(item_id)


async def _insert_options(conn: asyncpg.Connection, item: MenuItem) -> None:
    """Inserts the item's groups and options in display order (every id already assigned)."""
    groups = item.option_groups
    await conn.execute(
        """
        INSERT INTO menu_option_groups (id, menu_item_id, name, min_select, max_select, position)
        SELECT g.id, $1::uuid, g.name, g.min_select, g.max_select, g.position
        FROM unnest($2::uuid[], $3::text[], $4::int[], $5::int[], $6::int[])
             AS g(id, name, min_select, max_select, position)
        """,
        item.id,
        [g.id for g in groups],
        [g.name for g in groups],
        [g.min_select for g in groups],
        [g.max_select for g in groups],
        list(range(len(groups))),
    )
    options = [(g.id, i, o) for g in groups for i, o in enumerate(g.options)]
    await conn.execute(
        """
        INSERT INTO menu_options (id, option_group_id, name, price_delta_minor, available, position)
        SELECT o.id, o.group_id, o.name, o.price_delta_minor, o.available, o.position
        FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::bool[], $6::int[])
             AS o(id, group_id, name, price_delta_minor, available, position)
        """,
        [o.id for _, _, o in options],
        [group_id for group_id, _, _ in options],
        [o.name for _, _, o in options],
        [o.price_delta_minor for _, _, o in options],
        [o.available for _, _, o in options],
        [position for _, position, _ in options],
    )


async def _refuse_foreign_ids(conn: asyncpg.Connection, item: MenuItem) -> None:
    """INVALID_ARGUMENT naming each group or option id that belongs to another menu item.

    Runs after the item's own groups are deleted, so any row still holding an id is foreign.
    """
    group_ids = [g.id for g in item.option_groups if g.id]
    option_ids = [o.id for g in item.option_groups for o in g.options if o.id]
    if not group_ids and not option_ids:
        return
    taken = await conn.fetch(
        """
        SELECT id::text AS id FROM menu_option_groups WHERE id = ANY($1::uuid[])
        UNION ALL
        SELECT id::text AS id FROM menu_options WHERE id = ANY($2::uuid[])
        """,
        group_ids,
        option_ids,
    )
    if not taken:
        return
    used = {row["id"] for row in taken}
    violations = []
    for i, group in enumerate(item.option_groups):
        at = f"menu_item.option_groups[{i}]"
        if group.id and group.id in used:
            violations.append(FieldViolation(f"{at}.option_group_id", "belongs to another item"))
        violations.extend(
            FieldViolation(f"{at}.options[{j}].option_id", "belongs to another item")
            for j, option in enumerate(group.options)
            if option.id and option.id in used
        )
    raise InvalidArgument(violations)
