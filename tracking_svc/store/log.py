"""The per-order tracking log in Redis: what a resuming watcher must not miss.

Each order has a log of the updates every watcher must see exactly once, in order: status and
courier changes and the notices that come from events (arrivals, no courier found). Positions,
estimates and staleness are not logged: a resuming watcher gets only the latest of those.

An entry's log number ``L`` comes from a per-order counter seeded with the clock in
milliseconds when the log is created. So numbers only grow, even when Redis loses the log and
it is created again (an order sees far fewer than one logged change per millisecond): a client
resuming from a number of the lost log is simply behind, and is sent a fresh snapshot.

Keys carry the order id as a Redis Cluster hash tag, so one order's keys live on one node and
the append is one script.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from mesh.events import as_text

logger = logging.getLogger(__name__)

#: The channel every append is announced on, by the append itself: ``<order id> <L>``.
UPDATES_CHANNEL = "trk:updates"


def state_key(order_id: str) -> str:
    """The hash: ``seq`` (last L), ``base`` (the seed), ``ver``/``st``/``drv`` (last status)."""
    return f"trk:{{{order_id}}}"


def log_key(order_id: str) -> str:
    """The sorted set of entries, scored by L, members ``<L>|<payload>``."""
    return f"trk:{{{order_id}}}:log"


def seen_key(order_id: str) -> str:
    """The event ids already logged (events arrive at least once)."""
    return f"trk:{{{order_id}}}:ev"


# KEYS: state, log, seen. ARGV: event id ('' = none), now ms, version (0 = not a status entry),
# status, driver, payload, max entries, ttl s, order id, channel. Returns the new L, or 0 if
# nothing was logged (a duplicate event or a status older than one logged already). The
# announcement is published by the script, so no append goes unannounced.
_APPEND = """
if ARGV[1] ~= '' and redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return 0 end
local version = tonumber(ARGV[3])
if version > 0 then
  local current = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
  if version <= current then return 0 end
end
if redis.call('HEXISTS', KEYS[1], 'seq') == 0 then
  redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'base', ARGV[2])
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
if version > 0 then
  redis.call('HSET', KEYS[1], 'ver', ARGV[3], 'st', ARGV[4], 'drv', ARGV[5])
end
redis.call('ZADD', KEYS[2], seq, seq .. '|' .. ARGV[6])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[7])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1) end
local ttl = tonumber(ARGV[8])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('PUBLISH', ARGV[10], ARGV[9] .. ' ' .. seq)
return seq
"""

# KEYS: state. ARGV: now ms, version, status, driver, ttl s. Creates the log's state from the
# system of record when there is none (an order placed before tracking ran, or a Redis that
# lost its data), or its status when only notices were logged; returns the state either way.
_SEED = """
if redis.call('HEXISTS', KEYS[1], 'seq') == 0 then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'base', ARGV[1], 'ver', ARGV[2], 'st', ARGV[3],
             'drv', ARGV[4])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
elseif redis.call('HEXISTS', KEYS[1], 'ver') == 0 then
  redis.call('HSET', KEYS[1], 'ver', ARGV[2], 'st', ARGV[3], 'drv', ARGV[4])
end
return redis.call('HMGET', KEYS[1], 'seq', 'base', 'ver', 'st', 'drv')
"""


@dataclass(frozen=True, slots=True)
class LogState:
    """Where an order's log stands."""

    #: The newest L.
    seq: int
    #: The seed: every entry of this log has an L above it.
    base: int
    #: The order version, status and courier of the newest logged status entry.
    version: int
    status: str
    driver_id: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One logged update: its number and the serialized ``TrackOrderResponse`` (no sequence)."""

    seq: int
    payload: bytes


def _decode_member(raw: bytes | str) -> Entry:
    data = raw if isinstance(raw, bytes) else raw.encode()
    head, _, payload = data.partition(b"|")
    return Entry(int(head), payload)


def decode_announcement(text: str) -> tuple[str, int] | None:
    """The order id and L of an announcement; ``None`` if unreadable."""
    order_id, _, seq = text.partition(" ")
    try:
        return order_id, int(seq)
    except ValueError:
        return None


class TrackingLog:
    """Appends to and reads the per-order logs."""

    def __init__(self, redis: Redis, *, max_entries: int = 500, ttl_s: int = 7 * 24 * 3600):
        self._redis = redis
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._append = redis.register_script(_APPEND)
        self._seed = redis.register_script(_SEED)

    async def append(
        self,
        order_id: str,
        payload: bytes,
        *,
        now_ms: int,
        event_id: str = "",
        version: int = 0,
        status: str = "",
        driver_id: str = "",
        ttl_s: int | None = None,
    ) -> Entry | None:
        """Logs one entry and announces it; ``None`` if it was a duplicate or stale status.

        ``version`` > 0 marks a status entry: it is logged only if newer than the last one.
        """
        keys = [state_key(order_id), log_key(order_id), seen_key(order_id)]
        args: list[str | int | bytes] = [
            event_id,
            now_ms,
            version,
            status,
            driver_id,
            payload,
            self._max_entries,
            ttl_s or self._ttl_s,
            order_id,
            UPDATES_CHANNEL,
        ]
        seq = int(await self._append(keys=keys, args=args))
        return Entry(seq, payload) if seq else None

    async def seed(
        self, order_id: str, *, now_ms: int, version: int, status: str, driver_id: str
    ) -> LogState:
        """The log's state, created from the given (system of record) state if missing."""
        raw = await self._seed(
            keys=[state_key(order_id)], args=[now_ms, version, status, driver_id, self._ttl_s]
        )
        return _state(raw)

    async def state(self, order_id: str) -> LogState | None:
        """The log's state, or ``None`` if the order has no log."""
        raw = await self._redis.hmget(state_key(order_id), ["seq", "base", "ver", "st", "drv"])
        if raw[0] is None:
            return None
        return _state(raw)

    async def after(self, order_id: str, seq: int) -> list[Entry]:
        """The retained entries with L above ``seq``, in order."""
        raw = await self._redis.zrangebyscore(log_key(order_id), f"({seq}", "+inf")
        return [_decode_member(m) for m in raw]  # type: ignore[arg-type]

    async def oldest(self, order_id: str) -> int | None:
        """The L of the oldest retained entry, or ``None`` if none is."""
        raw = await self._redis.zrange(log_key(order_id), 0, 0, withscores=True)
        return int(raw[0][1]) if raw else None


def _state(raw: Sequence[bytes | str | None]) -> LogState:
    seq, base, ver, st, drv = (as_text(v) if v is not None else "" for v in raw)
    return LogState(int(seq), int(base or seq), int(ver or 0), st, drv)
