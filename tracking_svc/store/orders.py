"""What tracking needs to know of an order, read through order_svc's store (the owner's read
function for this hot path) and the courier's vehicle from the drivers table."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from order_svc.domain.orders import Order
from order_svc.store.orders import OrderStore
from tracking_svc.domain.travel import Point, Vehicle


@dataclass(slots=True)
class OrderFacts:
    """One order as tracking follows it; the status fields change as the log is applied."""

    order_id: str
    customer_id: str
    merchant_id: str
    merchant_owner_id: str
    driver_id: str
    status: str
    version: int
    merchant: Point
    door: Point
    #: The preparation time to expect from confirmation, in seconds.
    prep_s: float
    confirmed_at: float | None
    ready_at: float | None
    picked_up_at: float | None
    delivered_at: float | None
    created_at: float
    updated_at: float
    vehicle: Vehicle

    def absorb(self, fresh: OrderFacts) -> None:
        """Takes the times and estimates of a fresher read (the status stays the log's)."""
        self.prep_s = fresh.prep_s
        self.confirmed_at = fresh.confirmed_at
        self.ready_at = fresh.ready_at
        self.picked_up_at = fresh.picked_up_at
        self.delivered_at = fresh.delivered_at
        self.updated_at = fresh.updated_at
        if fresh.driver_id == self.driver_id:
            self.vehicle = fresh.vehicle


def _epoch(value: object) -> float | None:
    return None if value is None else value.timestamp()  # type: ignore[attr-defined]


class OrderReader:
    """Reads orders for tracking."""

    def __init__(self, pool: asyncpg.Pool, *, default_vehicle: Vehicle = Vehicle.MOTORCYCLE):
        self._pool = pool
        self._orders = OrderStore(pool)
        self._default_vehicle = default_vehicle

    async def load(self, driver_id: str) -> list[Carried]:
        """The courier's active orders."""
        return await courier_load(self._pool, driver_id)

    async def facts(self, order_id: str) -> OrderFacts | None:
        """The order's facts, or ``None`` if there is no such order."""
        order = await self._orders.get(order_id)
        if order is None:
            return None
        row = await self._pool.fetchrow(
            """
            SELECT (SELECT avg_prep_seconds FROM merchants WHERE id = $1::uuid) AS avg_prep,
                   (SELECT vehicle_type FROM drivers WHERE id = $2::uuid) AS vehicle
            """,
            order.merchant_id,
            order.driver_id,
        )
        return self._facts(order, row["avg_prep"], row["vehicle"])

    def _facts(self, order: Order, avg_prep: int | None, vehicle: str | None) -> OrderFacts:
        # The merchant's learned average where there is one; its estimate at confirmation else.
        prep = avg_prep or order.estimated_prep_seconds or 900
        try:
            kind = Vehicle(vehicle) if vehicle else self._default_vehicle
        except ValueError:
            kind = self._default_vehicle
        return OrderFacts(
            order_id=order.id,
            customer_id=order.customer_id or "",
            merchant_id=order.merchant_id or "",
            merchant_owner_id=order.merchant_owner_id or "",
            driver_id=order.driver_id or "",
            status=order.status.value,
            version=order.version,
            merchant=Point(order.merchant_lat or 0.0, order.merchant_lng or 0.0),
            door=Point(order.delivery_lat, order.delivery_lng),
            prep_s=float(prep),
            confirmed_at=_epoch(order.confirmed_at),
            ready_at=_epoch(order.ready_at),
            picked_up_at=_epoch(order.picked_up_at),
            delivered_at=_epoch(order.delivered_at),
            created_at=order.created_at.timestamp(),
            updated_at=order.updated_at.timestamp(),
            vehicle=kind,
        )


@dataclass(frozen=True, slots=True)
class Carried:
    """One of the orders a courier has: where to collect and drop it, and when it is ready."""

    order_id: str
    status: str
    merchant: Point
    door: Point
    #: Epoch seconds the food is expected ready (``None`` once it is or once picked up).
    ready_at: float | None


async def courier_load(pool: asyncpg.Pool, driver_id: str) -> list[Carried]:
    """The courier's active orders (those assigned to them and not yet final)."""
    rows = await pool.fetch(
        """
        SELECT o.id::text AS id, o.status, m.lat, m.lng, o.delivery_lat, o.delivery_lng,
               CASE WHEN o.status IN ('ready_for_pickup', 'picked_up') THEN NULL
                    ELSE extract(epoch FROM coalesce(o.confirmed_at, now())
                         + make_interval(secs => coalesce(o.estimated_prep_seconds,
                                                           m.avg_prep_seconds)))
               END AS ready_at
          FROM orders o JOIN merchants m ON m.id = o.merchant_id
         WHERE o.driver_id = $1::uuid
           AND o.status IN ('pending', 'confirmed', 'preparing', 'ready_for_pickup', 'picked_up')
        """,
        driver_id,
    )
    return [
        Carried(
            r["id"],
            r["status"],
            Point(r["lat"], r["lng"]),
            Point(r["delivery_lat"], r["delivery_lng"]),
            float(r["ready_at"]) if r["ready_at"] is not None else None,
        )
        for r in rows
    ]
