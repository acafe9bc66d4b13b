"""Driver state: durable status in PostgreSQL, live position and presence in a Redis hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis

from location_svc.domain.fixes import Fix, Jumps
from location_svc.domain.presence import DriverStatus
from mesh.ids import canonical_uuid


@dataclass(slots=True)
class DriverRecord:
    """What location_svc knows about one driver."""

    driver_id: str
    status: DriverStatus
    vehicle: str
    #: The newest believed fix, if any.
    last: Fix | None
    #: The shard the driver is indexed under (empty if none).
    shard: str
    #: The shard whose position hash holds the driver's position (empty if none yet).
    pos_shard: str
    #: When the newest fix was received, in ms since the epoch.
    received_ms: int
    #: Whether a StreamLocation stream is open; ``None`` if the driver never opened one
    #: (a gRPC-web client reporting with ReportLocations).
    stream_open: bool | None
    #: The run of consistent impossible jumps ReportLocations saw last (see Jumps).
    jumps: Jumps | None = None


def driver_key(driver_id: str) -> str:
    """The metadata HASH of a driver (its own hash tag: drivers spread over the cluster)."""
    return f"drv:{{{driver_id}}}"


def position_key(shard: str) -> str:
    """The hash of positions of every driver last seen in ``shard`` (field: driver id)."""
    return f"loc:{{{shard}}}:pos"


def pack_position(fix: Fix, received_ms: int) -> bytes:
    """The compact form of a position stored in the driver hash and published to watchers."""
    # Bytes formatting: a third faster than an f-string and encode, once per fix.
    return b"%.7f,%.7f,%d,%.1f,%.1f,%.2f,%d,%d" % (
        fix.lat,
        fix.lng,
        fix.device_time_ms,
        fix.accuracy_m,
        fix.heading_deg,
        fix.speed_mps,
        received_ms,
        fix.sequence,
    )


#: The slot a driver is filed in if stream ARGV[1] is still their newest, else false.
_STREAM_SLOT = """
if redis.call('HGET', KEYS[1], 'so') ~= ARGV[1] then return false end
return redis.call('HGET', KEYS[1], 'sh') or ''
"""
#: Marks stream ARGV[1] closed and the driver filed nowhere, if it is still their newest.
_CLOSE_STREAM = """
if redis.call('HGET', KEYS[1], 'so') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'so', '0', 'sh', '')
end
return 0
"""


def pack_jumps(jumps: Jumps) -> bytes:
    """The stored form of a run of jumps (its count and both ends)."""
    assert jumps.first is not None and jumps.last is not None
    return b"%d;%s;%s" % (jumps.count, pack_position(jumps.first, 0), pack_position(jumps.last, 0))


def unpack_jumps(raw: bytes) -> Jumps:
    """The inverse of :func:`pack_jumps`; an empty run for anything unreadable."""
    try:
        count, first, last = raw.split(b";")
        return Jumps(unpack_position(first)[0], unpack_position(last)[0], int(count))
    except ValueError:
        return Jumps()


def unpack_position(raw: bytes) -> tuple[Fix, int]:
    """The inverse of :func:`pack_position`: the fix and its receive time."""
    lat, lng, t, acc, hdg, spd, rx, seq = raw.decode().split(",")
    return (
        Fix(float(lat), float(lng), float(acc), float(hdg), float(spd), int(t), int(seq)),
        int(rx),
    )


class DriverStore:
    """Reads and writes driver state; the Redis hash is a cache PostgreSQL can rebuild."""

    def __init__(self, redis: Redis, pool: asyncpg.Pool) -> None:
        self._redis = redis
        self._pool = pool

    async def load(self, driver_id: str) -> DriverRecord | None:
        """The driver's state, seeded from PostgreSQL when Redis has none; ``None`` if unknown."""
        if canonical_uuid(driver_id) is None:
            return None
        # The client returns bytes (decode_responses=False); typed stubs allow str too.
        fields: dict[bytes, bytes] = await self._redis.hgetall(driver_key(driver_id))  # type: ignore[assignment]
        if fields and b"st" in fields:
            last, received = (None, 0)
            pos_shard = fields.get(b"ps", b"").decode()
            if pos_shard:
                packed = await self._redis.hget(position_key(pos_shard), driver_id)
                if packed is not None:
                    last, received = unpack_position(bytes(packed))  # type: ignore[arg-type]
            return DriverRecord(
                driver_id=driver_id,
                status=DriverStatus(fields[b"st"].decode()),
                vehicle=fields.get(b"veh", b"bicycle").decode(),
                last=last,
                shard=fields.get(b"sh", b"").decode(),
                pos_shard=pos_shard,
                received_ms=received,
                # "0" when closed, else the open stream's token ("1" before tokens).
                stream_open=None if b"so" not in fields else fields[b"so"] != b"0",
                jumps=unpack_jumps(fields[b"jr"]) if b"jr" in fields else None,
            )
        row = await self._pool.fetchrow(
            "SELECT status, vehicle_type FROM drivers WHERE id = $1::uuid", driver_id
        )
        if row is None:
            return None
        await self._redis.hset(
            driver_key(driver_id), mapping={"st": row["status"], "veh": row["vehicle_type"]}
        )
        return DriverRecord(
            driver_id, DriverStatus(row["status"]), row["vehicle_type"], None, "", "", 0, None
        )

    async def set_status(
        self, driver_id: str, status: DriverStatus, vehicle: str | None
    ) -> datetime | None:
        """Stores a new status (and vehicle) durably, then in Redis; ``None`` if no such driver."""
        updated = await self._pool.fetchval(
            """
            UPDATE drivers SET status = $2, vehicle_type = coalesce($3, vehicle_type)
             WHERE id = $1::uuid RETURNING updated_at
            """,
            driver_id,
            status.value,
            vehicle,
        )
        if updated is None:
            return None
        fields = {"st": status.value, **({"veh": vehicle} if vehicle else {})}
        await self._redis.hset(driver_key(driver_id), mapping=fields)  # type: ignore[arg-type]
        return updated if isinstance(updated, datetime) else datetime.now(UTC)

    def queue_positions(
        self, pipe: object, items: list[tuple[str, bytes, str, str, str, str]]
    ) -> None:
        """Queues position writes, one HSET per shard for the whole tick.

        Each item is ``(driver_id, packed, pos_shard, previous_pos_shard, index_shard,
        previous_index_shard)``. Positions live in a hash per shard (``loc:{<shard>}:pos``), so
        a tick's fixes cost one command per shard rather than one per driver; the driver's
        own hash changes only when a shard does.
        """
        by_shard: dict[str, list[bytes | str]] = {}
        for driver_id, packed, shard, previous, index_shard, previous_index in items:
            by_shard.setdefault(shard, []).extend((driver_id, packed))
            if shard != previous or index_shard != previous_index:
                if previous and previous != shard:
                    pipe.hdel(position_key(previous), driver_id)  # type: ignore[attr-defined]
                pipe.hset(  # type: ignore[attr-defined]
                    driver_key(driver_id), mapping={"ps": shard, "sh": index_shard}
                )
        for shard, args in by_shard.items():
            pipe.execute_command("HSET", position_key(shard), *args)  # type: ignore[attr-defined]

    async def set_shard(self, driver_id: str, shard: str) -> None:
        """Records which shard the driver is indexed under (empty: none)."""
        await self._redis.hset(driver_key(driver_id), "sh", shard)

    async def open_stream(self, driver_id: str, token: str) -> None:
        """Records that the driver's GPS stream ``token`` is open and is their newest."""
        await self._redis.hset(driver_key(driver_id), "so", token)

    async def stream_slot(self, driver_id: str, token: str) -> str | None:
        """The index slot of the driver if their GPS stream ``token`` is still their newest
        ("" if filed nowhere); ``None`` if a newer one opened (a reconnect, maybe on another
        instance), whose fixes are the ones that count now."""
        slot = await self._redis.eval(_STREAM_SLOT, 1, driver_key(driver_id), token)  # type: ignore[misc]
        return None if slot is None else bytes(slot).decode()

    def queue_close_stream(self, pipe: object, driver_id: str, token: str) -> None:
        """Queues the mark that stream ``token`` closed (and the driver is filed nowhere), unless
        a newer stream of theirs opened since."""
        pipe.eval(_CLOSE_STREAM, 1, driver_key(driver_id), token)  # type: ignore[attr-defined]

    async def set_jumps(self, driver_id: str, jumps: Jumps) -> None:
        """Stores the run of consistent impossible jumps ReportLocations saw (none: removed)."""
        if jumps.count:
            await self._redis.hset(driver_key(driver_id), "jr", pack_jumps(jumps))
        else:
            await self._redis.hdel(driver_key(driver_id), "jr")  # type: ignore[misc]
