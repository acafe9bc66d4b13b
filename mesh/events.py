"""Domain events on Redis Streams: stream names, the entry layout, and a consumer-group reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import grpc
from google.protobuf.message import DecodeError, Message
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

logger = logging.getLogger(__name__)

# The fields of one stream entry. Values are bytes on the wire; ``payload`` is the serialized
# protobuf exactly as the producer stored it in its outbox.
#: The outbox id of the event as a decimal string; the same event published twice has the same id.
FIELD_EVENT_ID = "event_id"
#: The event type, e.g. ``order.confirmed``.
FIELD_TYPE = "type"
#: The id of the aggregate (order, driver) the event is about.
FIELD_AGGREGATE_ID = "aggregate_id"
#: The serialized protobuf message.
FIELD_PAYLOAD = "payload"
#: When the event happened (the outbox row's commit-time clock), RFC 3339 in UTC.
FIELD_OCCURRED_AT = "occurred_at"
#: Optional JSON object of string headers (request id, trace context); absent when empty.
FIELD_HEADERS = "headers"

#: Events that must never be consumed twice are deduplicated this long, in seconds.
DEFAULT_DEDUPE_TTL_S = 24 * 3600

#: Handler attempts on one entry before it is moved to the dead-letter stream.
DEFAULT_MAX_ATTEMPTS = 5
#: Approximate length the dead-letter streams are trimmed to.
DEAD_LETTER_MAXLEN = 100_000
# Fields a dead-letter entry adds to the event's own.
#: The consumer group whose handler gave up on the event.
FIELD_DEAD_GROUP = "dead_group"
#: The entry id the event had in its stream.
FIELD_DEAD_ENTRY_ID = "dead_entry_id"
#: How many times the handler failed on it.
FIELD_DEAD_ATTEMPTS = "dead_attempts"
#: The last error, as text (at most 1,000 characters).
FIELD_DEAD_ERROR = "dead_error"


def stream_for(aggregate_type: str) -> str:
    """The stream that carries the events of ``aggregate_type``: ``events:{order}``.

    The braces are a Redis Cluster hash tag: the stream and every key derived from it (the
    consumers' dedupe records) hash to one slot, so a consumer can pipeline its dedupe writes
    and acks to one node.
    """
    if not aggregate_type or any(c in aggregate_type for c in "{}"):
        raise ValueError(f"invalid aggregate type {aggregate_type!r}")
    return f"events:{{{aggregate_type}}}"


def dead_letter_stream(stream: str) -> str:
    """Where consumers of ``stream`` put the events their handler kept failing on:
    ``events:{order}:dead``, in the same hash slot. One stream for every group; each entry
    names its group (:data:`FIELD_DEAD_GROUP`)."""
    return f"{stream}:dead"


def dedupe_key(stream: str, group: str, event_id: str) -> str:
    """The record that says ``group`` has processed ``event_id`` of ``stream``.

    It carries the stream's hash tag (see :func:`stream_for`) so it lives next to the stream.
    """
    return f"dedupe:{stream}:{group}:{event_id}"


def entry_fields(
    *,
    event_id: int | str,
    event_type: str,
    aggregate_id: str,
    payload: bytes,
    occurred_at: datetime,
    headers: Mapping[str, str] | None = None,
) -> dict[FieldT, EncodableT]:
    """The fields of the stream entry that publishes one event (see the ``FIELD_*`` names)."""
    fields: dict[FieldT, EncodableT] = {
        FIELD_EVENT_ID: str(event_id),
        FIELD_TYPE: event_type,
        FIELD_AGGREGATE_ID: aggregate_id,
        FIELD_PAYLOAD: payload,
        FIELD_OCCURRED_AT: occurred_at.isoformat(),
    }
    if headers:
        fields[FIELD_HEADERS] = json.dumps(dict(headers), separators=(",", ":"))
    return fields


@dataclass(frozen=True, slots=True)
class Event:
    """One event as a consumer sees it."""

    #: The stream it was read from.
    stream: str
    #: The Redis entry id; a republished event has a new entry id but the same ``event_id``.
    entry_id: str
    #: The producer's event id (its outbox id, decimal); the key for deduplication.
    event_id: str
    #: The event type, e.g. ``order.confirmed``.
    type: str
    #: The aggregate the event is about.
    aggregate_id: str
    #: The serialized protobuf message.
    payload: bytes
    #: When the event happened.
    occurred_at: datetime
    #: Headers the producer attached.
    headers: Mapping[str, str] = field(default_factory=dict)


def as_text(value: bytes | str) -> str:
    """A Redis reply item as text (clients may hand back bytes or str)."""
    return value.decode() if isinstance(value, bytes) else value


def parse_payload(event: Event, message: Message) -> bool:
    """Parses ``event``'s payload into ``message``; False (and an error logged) if unreadable.

    No retry makes an unreadable event readable, and blocking the stream on it would stop
    every later event: handlers drop it.
    """
    try:
        message.ParseFromString(event.payload)
    except DecodeError:
        logger.error("dropping an unreadable event", extra={"event_id": event.event_id})
        return False
    return True


def decode_entry(stream: str, entry_id: bytes | str, fields: Mapping[Any, Any]) -> Event:
    """The :class:`Event` in a raw stream entry (keys and values as bytes, or str keys)."""
    values = {as_text(k): v for k, v in fields.items()}
    payload = values[FIELD_PAYLOAD]
    headers = values.get(FIELD_HEADERS)
    return Event(
        stream=stream,
        entry_id=as_text(entry_id),
        event_id=as_text(values[FIELD_EVENT_ID]),
        type=as_text(values[FIELD_TYPE]),
        aggregate_id=as_text(values[FIELD_AGGREGATE_ID]),
        payload=payload if isinstance(payload, bytes) else payload.encode(),
        occurred_at=datetime.fromisoformat(as_text(values[FIELD_OCCURRED_AT])),
        headers=json.loads(headers) if headers else {},
    )


async def ensure_group(redis: Redis, stream: str, group: str, *, start_id: str = "0") -> None:
    """Creates consumer group ``group`` on ``stream`` (and the stream), if it does not exist.

    ``start_id="0"`` makes a new group read the stream from its oldest retained entry, so a
    group created after the producer started misses nothing; pass ``"$"`` to start at new ones.
    """
    try:
        await redis.xgroup_create(stream, group, id=start_id, mkstream=True)
    except ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, TimeoutError (asyncio's too)
    RedisConnectionError,
    RedisTimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)
_TRANSIENT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _transient(err: BaseException) -> bool:
    """Whether ``err`` says a dependency is down rather than that the event cannot be handled."""
    if isinstance(err, grpc.aio.AioRpcError):
        return err.code() in _TRANSIENT_CODES
    return isinstance(err, _TRANSIENT_ERRORS)


#: What a consumer calls for each event; it must be idempotent (delivery is at least once).
Handler = Callable[[Event], Awaitable[None]]

_RawEntry = tuple[Any, Any]


def _entries(response: Any) -> list[_RawEntry]:
    """The entries of the one stream in an XREADGROUP reply, whatever shape the client gives."""
    if not response:
        return []
    if isinstance(response, dict):
        streams = list(response.values())
    else:
        streams = [entries for _, entries in response]
    entries: list[_RawEntry] = []
    for batch in streams:
        # RESP3 replies parsed the legacy way nest the entry list once more.
        if batch and isinstance(batch[0], list):
            batch = [e for inner in batch for e in inner]
        entries.extend(batch)
    return entries


class EventConsumer:
    """Reads one stream as one consumer of a consumer group and calls a handler per event.

    Delivery is at least once. An entry is acknowledged (XACK) only after its handler returned,
    so a consumer that dies mid-handler gets the entry again: on start it first re-reads its own
    pending entries (``XREADGROUP ... 0``), which is why ``consumer`` should be a name that
    survives a restart (a pod or host name); entries left pending by consumers that never come
    back are claimed (XAUTOCLAIM) once they have been idle for ``claim_idle_s``.

    Redelivery and republished duplicates (the outbox relay may publish an event twice) are
    filtered by a dedupe record per (group, event id), checked before the handler and written
    only after it succeeded. That makes most duplicates no-ops but not all: a crash between the
    handler's effect and the dedupe write, or a slow handler whose entry is claimed by another
    consumer, still runs the handler twice. Handlers must be idempotent regardless.

    A failing handler leaves its entry pending; the consumer stops the batch there (so later
    events of the stream are not handled before it), waits ``retry_delay_s`` (doubling with each
    failure in a row, up to ``max_retry_delay_s``) and re-reads its pending entries. After
    ``max_attempts`` failures on one entry the event is moved to the stream's dead-letter stream
    (:func:`dead_letter_stream`, with its group, attempts and last error) and acknowledged, so
    an event that always fails holds its group up for a bounded time instead of forever, and
    the other consumers never claim it. Attempts are counted per process: a consumer that
    restarts or claims the entry gives it ``max_attempts`` more.

    The client must not decode responses (``decode_responses=False``): payloads are bytes.
    """

    def __init__(
        self,
        redis: Redis,
        stream: str,
        group: str,
        consumer: str,
        handler: Handler,
        *,
        batch_size: int = 100,
        block_s: float = 1.0,
        claim_idle_s: float = 60.0,
        claim_every_s: float = 30.0,
        dedupe_ttl_s: int = DEFAULT_DEDUPE_TTL_S,
        retry_delay_s: float = 1.0,
        max_retry_delay_s: float = 15.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        group_start_id: str = "0",
    ) -> None:
        self._redis = redis
        self._handler = handler
        #: The stream read.
        self.stream = stream
        #: The consumer group.
        self.group = group
        #: This consumer's name within the group.
        self.consumer = consumer
        self._batch_size = batch_size
        # XREADGROUP blocks at most this long, which bounds how long stop() takes to be noticed.
        self._block_ms = max(1, int(block_s * 1000))
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._claim_every_s = claim_every_s
        self._dedupe_ttl_s = dedupe_ttl_s
        self._retry_delay_s = retry_delay_s
        self._max_retry_delay_s = max(retry_delay_s, max_retry_delay_s)
        self._max_attempts = max(1, max_attempts)
        # Handler failures per pending entry id, and in a row (for the backoff).
        self._attempts: dict[str, int] = {}
        self._failing = 0
        self._group_start_id = group_start_id
        self._stopping = asyncio.Event()
        #: Events whose handler succeeded.
        self.handled = 0
        #: Entries skipped because the group had already processed their event id.
        self.duplicates = 0
        #: Handler calls that raised.
        self.failures = 0
        #: Redis errors the read loop recovered from.
        self.errors = 0
        #: Events moved to the dead-letter stream after ``max_attempts`` failures.
        self.dead_lettered = 0

    def stop(self) -> None:
        """Asks :meth:`run` to return after the current batch; a running handler is not cut off."""
        self._stopping.set()

    async def run(self) -> None:
        """Consumes until :meth:`stop`: own pending entries, then claimed ones, then new ones."""
        loop = asyncio.get_running_loop()
        need_group = True
        backlog = True  # Our own pending entries come first, after a restart or a failure.
        next_claim = loop.time()
        claim_cursor = "0-0"
        while not self._stopping.is_set():
            try:
                if need_group:
                    await ensure_group(
                        self._redis, self.stream, self.group, start_id=self._group_start_id
                    )
                    need_group = False
                if backlog:
                    entries = _entries(await self._read("0", block=False))
                    if not entries:
                        backlog = False
                        continue
                elif loop.time() >= next_claim:
                    claim_cursor, entries = await self._claim(claim_cursor)
                    if claim_cursor == "0-0":
                        next_claim = loop.time() + self._claim_every_s
                else:
                    entries = _entries(await self._read(">", block=True))
                if not await self._process(entries):
                    backlog = True
                    self._failing += 1
                    delay = self._retry_delay_s * 2 ** min(self._failing - 1, 16)
                    await self._sleep(min(delay, self._max_retry_delay_s))
                else:
                    self._failing = 0
            except ResponseError as err:
                # A Redis that lost its data (it holds nothing durable) lost the group too.
                need_group = "NOGROUP" in str(err)
                await self._recover(err)
            except Exception as err:
                # Redis down or failing over: the consumer waits for it rather than dying.
                await self._recover(err)

    async def _recover(self, err: BaseException) -> None:
        self.errors += 1
        logger.warning(
            "event consumer error; retrying",
            extra={"stream": self.stream, "group": self.group, "error": repr(err)},
        )
        await self._sleep(self._retry_delay_s)

    async def _sleep(self, seconds: float) -> None:
        """Sleeps, but returns early when stop() is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _read(self, start: str, *, block: bool) -> Any:
        return await self._redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: start},
            count=self._batch_size,
            block=self._block_ms if block else None,
        )

    async def _claim(self, cursor: str) -> tuple[str, list[_RawEntry]]:
        """Takes over entries other consumers left pending for longer than ``claim_idle_s``."""
        reply = await self._redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self._claim_idle_ms,
            start_id=cursor,
            count=self._batch_size,
        )
        entries: list[_RawEntry] = list(reply[1])
        if entries:
            logger.info(
                "claimed %d idle entries",
                len(entries),
                extra={"stream": self.stream, "group": self.group, "consumer": self.consumer},
            )
        return as_text(reply[0]), entries

    async def _process(self, raw: Sequence[_RawEntry]) -> bool:
        """Handles ``raw`` in order; False if a handler failed (the rest stay pending)."""
        live: list[Event] = []
        raw_fields: dict[str, Any] = {}
        for entry_id, fields in raw:
            if entry_id is None:
                continue
            if not fields:
                # Trimmed from the stream while pending: nothing left to handle.
                await self._redis.xack(self.stream, self.group, entry_id)
                continue
            try:
                live.append(decode_entry(self.stream, entry_id, fields))
                raw_fields[as_text(entry_id)] = fields
            except (KeyError, ValueError) as err:
                # No retry can make a malformed entry readable; dropping it unblocks the group.
                logger.error(
                    "dropping a malformed stream entry",
                    extra={
                        "stream": self.stream,
                        "entry_id": as_text(entry_id),
                        "error": repr(err),
                    },
                )
                await self._redis.xack(self.stream, self.group, entry_id)
        if not live:
            return True
        keys = [dedupe_key(self.stream, self.group, e.event_id) for e in live]
        # One round trip for the whole batch; the keys share the stream's hash slot.
        seen = await self._redis.mget(keys)
        done: set[str] = {key for key, mark in zip(keys, seen, strict=True) if mark is not None}
        for event, key in zip(live, keys, strict=True):
            if key in done:
                self.duplicates += 1
                await self._redis.xack(self.stream, self.group, event.entry_id)
                continue
            try:
                await self._handler(event)
            except Exception as err:
                self.failures += 1
                if _transient(err):
                    # A store or peer that is down is not the event's fault: retried with
                    # backoff for as long as the outage lasts, never dead-lettered for it.
                    logger.warning(
                        "event handler failed on an unavailable dependency; retrying",
                        extra={
                            "stream": self.stream,
                            "group": self.group,
                            "event_id": event.event_id,
                            "error": repr(err)[:300],
                        },
                    )
                    return False
                attempts = self._attempts.get(event.entry_id, 0) + 1
                if attempts >= self._max_attempts:
                    await self._dead_letter(event, raw_fields[event.entry_id], attempts, err)
                    continue
                self._attempts[event.entry_id] = attempts
                logger.exception(
                    "event handler failed (attempt %d of %d); the event stays pending",
                    attempts,
                    self._max_attempts,
                    extra={
                        "stream": self.stream,
                        "group": self.group,
                        "event_id": event.event_id,
                        "event_type": event.type,
                    },
                )
                return False
            self._attempts.pop(event.entry_id, None)
            # Marked processed only now that the handler succeeded, then acknowledged: a crash
            # in between leaves the entry pending, and its redelivery is skipped as a duplicate.
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(key, b"1", nx=True, ex=self._dedupe_ttl_s)
            pipe.xack(self.stream, self.group, event.entry_id)
            await pipe.execute()
            done.add(key)
            self.handled += 1
        return True

    async def _dead_letter(
        self, event: Event, fields: Mapping[Any, Any], attempts: int, err: Exception
    ) -> None:
        """Moves ``event`` to the dead-letter stream and acknowledges it, in one transaction."""
        entry: dict[FieldT, EncodableT] = {as_text(k): v for k, v in fields.items()}
        entry.update(
            {
                FIELD_DEAD_GROUP: self.group,
                FIELD_DEAD_ENTRY_ID: event.entry_id,
                FIELD_DEAD_ATTEMPTS: str(attempts),
                FIELD_DEAD_ERROR: f"{type(err).__name__}: {err}"[:1000],
            }
        )
        # MULTI: the entry is never acknowledged without being kept (both keys share a slot).
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(
            dead_letter_stream(self.stream), entry, maxlen=DEAD_LETTER_MAXLEN, approximate=True
        )
        pipe.xack(self.stream, self.group, event.entry_id)
        await pipe.execute()
        self._attempts.pop(event.entry_id, None)
        self.dead_lettered += 1
        logger.error(
            "event handler failed %d times; the event moved to %s",
            attempts,
            dead_letter_stream(self.stream),
            exc_info=err,
            extra={
                "stream": self.stream,
                "group": self.group,
                "event_id": event.event_id,
                "event_type": event.type,
            },
        )
