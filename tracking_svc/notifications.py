"""The live notification feed: one LISTEN connection per process, woken streams re-read the table.

Every insert into ``notifications`` is announced on :data:`CHANNEL` when it commits (migration
0012's trigger), whoever the writer. The signal only says "look": a stream woken by it reads its
recipient's feed from PostgreSQL, so a stream that was not listening (a phone asleep, a lost
LISTEN connection) catches up by reading, never by replaying signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import asyncpg

from delivery.tracking.v1 import tracking_service_pb2
from mesh.errors import FieldViolation, InvalidArgument
from mesh.ids import canonical_uuid
from order_svc.convert_orders import notification_to_proto
from order_svc.store.feed import feed_head, latest_notification_id, notifications_after

logger = logging.getLogger(__name__)

#: The channel migration 0012's trigger notifies, with the payload ``"<recipient_id> <id>"``.
CHANNEL = "delivery_notifications"
#: The ``application_name`` of the LISTEN connection, to find it in ``pg_stat_activity``.
APPLICATION_NAME = "tracking_svc.notifications"
#: How far back (by ``created_at``) a woken stream re-reads ids at or below its cursor.
OVERLAP_S = 10.0


class _Waiter:
    """One open stream as the hub sees it: a flag that says "read again", never a queue."""

    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = asyncio.Event()


class NotificationHub:
    """Wakes each open notification stream when its recipient gets a notification.

    One dedicated connection LISTENs for the whole process (the pool's connections stay free of
    session state, see :mod:`mesh.stores`); a lost one is made again with backoff, and every
    open stream is then woken to read what it may have missed. The hub only sets flags, so a
    slow stream never holds up the others.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        *,
        batch: int = 100,
        overlap_s: float = OVERLAP_S,
        retry_s: float = 0.2,
        max_retry_s: float = 10.0,
        keepalive_s: float = 15.0,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._batch = batch
        self._overlap_s = overlap_s
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._keepalive_s = keepalive_s
        self._streams: dict[str, set[_Waiter]] = {}
        self._stopping = False
        # Set by stop() and by the LISTEN connection's loss: whatever the run loop waits for.
        self._attention = asyncio.Event()
        #: Set while the LISTEN is in place.
        self.listening = asyncio.Event()
        #: The server pid of the LISTEN connection while it is up.
        self.backend_pid: int | None = None
        #: LISTEN connections lost (or not made) so far.
        self.losses = 0
        #: Streams that have read where they start (and hear every notification from then on).
        self.streams_started = 0

    @property
    def open_streams(self) -> int:
        """Streams open in this process."""
        return sum(len(waiters) for waiters in self._streams.values())

    async def run(self) -> None:
        """Keeps the LISTEN connection up until :meth:`stop`."""
        delay = self._retry_s
        while not self._stopping:
            conn: asyncpg.Connection | None = None
            lost = False
            try:
                conn = await self._connect()

                def on_lost(_: object) -> None:
                    nonlocal lost
                    lost = True
                    self._attention.set()

                conn.add_termination_listener(on_lost)
                await conn.add_listener(CHANNEL, self._on_notify)
                self.backend_pid = conn.get_server_pid()
                self.listening.set()
                # Listening first, reading second: a notification committed in between is heard.
                self._wake_all()
                logger.info("listening for notifications (backend %s)", self.backend_pid)
                delay = self._retry_s
                while not self._stopping and not lost:
                    self._attention.clear()
                    try:
                        await asyncio.wait_for(self._attention.wait(), self._keepalive_s)
                    except TimeoutError:
                        # A peer that vanished without closing the socket is noticed here.
                        await conn.execute("SELECT 1", timeout=self._keepalive_s)
                if lost and not self._stopping:
                    raise ConnectionError("the LISTEN connection closed")
            except Exception as exc:
                self.losses += 1
                logger.warning("notification LISTEN lost; connecting again: %r", exc)
            finally:
                self.listening.clear()
                self.backend_pid = None
                if conn is not None:
                    if lost or conn.is_closed():
                        conn.terminate()
                    else:
                        try:
                            await asyncio.wait_for(conn.close(), self._keepalive_s)
                        except Exception:
                            conn.terminate()
            if not self._stopping:
                self._attention.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._attention.wait(), delay)
                delay = min(delay * 2, self._max_retry_s)

    async def _connect(self) -> asyncpg.Connection:
        """A new connection of its own (never the pool's: LISTEN is session state)."""
        return await asyncpg.connect(
            self._dsn,
            timeout=self._max_retry_s,
            server_settings={"application_name": APPLICATION_NAME},
        )

    def stop(self) -> None:
        """Ends :meth:`run`; open streams are left to the server's stop."""
        self._stopping = True
        self._attention.set()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        recipient = str(payload).partition(" ")[0]
        for waiter in self._streams.get(recipient, ()):
            waiter.wake.set()

    def _wake_all(self) -> None:
        for waiters in self._streams.values():
            for waiter in waiters:
                waiter.wake.set()

    async def stream(
        self, recipient_id: str, resume_after: int
    ) -> AsyncIterator[tracking_service_pb2.StreamNotificationsResponse]:
        """The recipient's notifications as they commit; ``sequence`` is the notification id.

        ``resume_after`` 0 sends only notifications created after the stream opened; N sends
        every notification of the recipient with an id above N first (oldest first, read in
        pages), then the live ones. N above the newest notification id there is is from the
        future (another database, say) and is refused with INVALID_ARGUMENT.

        Ids are taken at INSERT and become visible at COMMIT, so a notification can commit
        after one with a higher id was sent. Each time it is woken the stream therefore also
        re-reads the recipient's notifications at or below its cursor created in the last
        ``overlap_s`` seconds and sends those it has not sent yet: such a late notification
        arrives with a LOWER sequence than one already sent. A resumed stream re-reads that
        same window below N, so it may send again a notification the client already has.
        Clients keep the highest sequence received for resuming and drop a
        ``notification_id`` they already hold. The window is measured on ``created_at``, the
        writer's clock, against the database's clock.
        """
        recipient = canonical_uuid(recipient_id)
        if recipient is None:
            raise InvalidArgument([], "the caller has no notification feed", reason="NOT_A_USER")
        waiter = _Waiter()
        # Registered before the first read: a notification committed meanwhile wakes it.
        self._streams.setdefault(recipient, set()).add(waiter)
        try:
            # When each id was sent, oldest first; bounded by age and size.
            sent: dict[int, float] = {}
            if resume_after:
                newest = await latest_notification_id(self._pool)
                if resume_after > newest:
                    raise InvalidArgument(
                        FieldViolation(
                            "resume_after_sequence",
                            f"is after the newest notification ({newest}); start from 0",
                        ),
                        reason="SEQUENCE_FROM_THE_FUTURE",
                    )
                cursor = resume_after
            else:
                head = await feed_head(self._pool, recipient, self._overlap_s, 4 * self._batch)
                cursor = head.newest_id
                now = time.monotonic()
                sent = dict.fromkeys(sorted(head.recent_ids), now)
            self.streams_started += 1
            while True:
                waiter.wake.clear()
                overlap_s = self._overlap_s
                while True:
                    before = cursor
                    page = await notifications_after(
                        self._pool, recipient, before, self._batch, overlap_s=overlap_s
                    )
                    fresh = 0
                    for notification in page:
                        if notification.id > before:
                            fresh += 1
                        if notification.id in sent:
                            continue
                        sent[notification.id] = time.monotonic()
                        cursor = max(cursor, notification.id)
                        yield tracking_service_pb2.StreamNotificationsResponse(
                            sequence=notification.id,
                            notification=notification_to_proto(notification),
                        )
                    self._forget(sent)
                    if fresh < self._batch:
                        break
                    # More past the page; the overlap was read with the first one.
                    overlap_s = 0.0
                await waiter.wake.wait()
        finally:
            waiters = self._streams.get(recipient)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._streams[recipient]

    def _forget(self, sent: dict[int, float]) -> None:
        """Drops sent ids too old for the overlap window to bring back (with a margin for
        clock skew between writers and the database), and the oldest past a size bound."""
        horizon = time.monotonic() - 3 * self._overlap_s
        cap = 4 * self._batch
        while sent:
            oldest, at = next(iter(sent.items()))
            if at >= horizon and len(sent) <= cap:
                break
            del sent[oldest]
