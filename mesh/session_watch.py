"""Ends every stream of a session that is revoked or expires, from one watcher per server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from mesh.errors import Unauthenticated
from mesh.pubsub import Listener

logger = logging.getLogger(__name__)

#: The channel :meth:`mesh.auth.SessionStore.revoke` publishes a revoked session's key on.
REVOKED_CHANNEL = "sessions:revoked"
#: Keys checked per EXISTS (a cluster client splits them by slot itself).
_CHUNK = 1000

REVOKED = "SESSION_REVOKED"
EXPIRED = "SESSION_EXPIRED"


def _revoked() -> Unauthenticated:
    return Unauthenticated(
        "the session this stream was opened with has been logged out or removed",
        reason=REVOKED,
    )


def _expired() -> Unauthenticated:
    return Unauthenticated(
        "the session this stream was opened with has expired; sign in again", reason=EXPIRED
    )


class WatchedStream:
    """One open stream of a session: :meth:`end` cancels the task serving it."""

    __slots__ = ("_session", "_task", "cancelled", "error", "holding")

    def __init__(self, session: _Session, task: asyncio.Task[object]) -> None:
        self._session = session
        self._task = task
        #: Why the stream was ended, once it was.
        self.error: Unauthenticated | None = None
        #: Whether :meth:`end` cancelled the task (the server undoes it with ``uncancel``).
        self.cancelled = False
        #: Set while the task must not be cancelled; whoever set it checks :attr:`error` after.
        self.holding = False

    def end(self, error: Unauthenticated) -> None:
        if self.error is not None:
            return
        self.error = error
        if not self.holding and not self._task.done():
            self._task.cancel()
            self.cancelled = True

    def release(self) -> None:
        """Forgets the stream; it has ended (any way) and is not to be cancelled any more."""
        self._session.streams.discard(self)
        if not self._session.streams:
            self._session.watch._forget(self._session)


@dataclass(eq=False)
class _Session:
    watch: SessionWatch
    key: str
    #: Wall-clock expiry in milliseconds since the epoch, 0 if unknown.
    expires_at_ms: int
    streams: set[WatchedStream] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


class SessionWatch:
    """The registry of a server's streams that a user session authenticated.

    A session ends its streams three ways: :data:`REVOKED_CHANNEL` names it (one subscription,
    made when the first stream registers); a timer fires at its known expiry; or a check every
    ``check_every_s`` (one EXISTS over every watched session, and again after each
    resubscription) finds it gone, which catches a missed message, a key that expired without
    a known expiry and a key removed by other means. Each ended stream's task is cancelled; the
    interceptor turns that into UNAUTHENTICATED.
    """

    def __init__(self, redis: Redis, *, check_every_s: float = 1.0, timeout_s: float = 5.0):
        self._redis = redis
        self._check_every_s = check_every_s
        self._timeout_s = timeout_s
        self._sessions: dict[str, _Session] = {}
        self._wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._failing = False
        self._listener = Listener(
            redis,
            self._heard,
            channels=[REVOKED_CHANNEL],
            on_subscribed=self._subscribed,
            name="session revocation subscription",
        )
        #: Streams ended, by reason.
        self.ended: Counter[str] = Counter()

    @property
    def streams(self) -> int:
        """Streams watched now."""
        return sum(len(s.streams) for s in self._sessions.values())

    @property
    def sessions(self) -> int:
        """Sessions with a watched stream now."""
        return len(self._sessions)

    def watch(self, key: str, expires_at_ms: int, task: asyncio.Task[object]) -> WatchedStream:
        """Registers the stream served by ``task`` under session ``key`` (which expires at
        ``expires_at_ms``, 0 if unknown); the caller releases it when the stream ends."""
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session(self, key, expires_at_ms)
            if expires_at_ms:
                delay = max(0.0, (expires_at_ms - time.time() * 1000) / 1000)
                session.timer = asyncio.get_running_loop().call_later(
                    delay, self._end, key, EXPIRED
                )
            self._wanted.set()
        stream = WatchedStream(session, task)
        session.streams.add(stream)
        return stream

    def _forget(self, session: _Session) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        if session.timer is not None:
            session.timer.cancel()

    def _end(self, key: str, reason: str) -> None:
        session = self._sessions.pop(key, None)
        if session is None:
            return
        if session.timer is not None:
            session.timer.cancel()
        streams = list(session.streams)
        session.streams.clear()
        logger.info(
            "ending %d stream(s) of a session: %s", len(streams), reason, extra={"reason": reason}
        )
        for stream in streams:
            stream.end(_expired() if reason == EXPIRED else _revoked())
        self.ended[reason] += len(streams)

    def _heard(self, channel: str, key: str) -> None:
        if key in self._sessions:
            self._end(key, REVOKED)

    async def _subscribed(self, again: bool) -> None:
        # Revocations published before the subscription (or while it was lost) were not heard.
        await self.check()

    async def check(self) -> None:
        """Ends the streams of every watched session that no longer exists in Redis."""
        keys = list(self._sessions)
        gone: list[str] = []
        async with asyncio.timeout(self._timeout_s):
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                # One command while every session lives (nearly always); per key otherwise.
                if await self._redis.exists(*chunk) == len(chunk):
                    continue
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.exists(key)
                    found = await pipe.execute()
                gone += [key for key, exists in zip(chunk, found, strict=True) if not exists]
        now_ms = time.time() * 1000
        for key in gone:
            session = self._sessions.get(key)
            if session is None:
                continue
            # Redis and this clock may disagree by a little at the expiry itself.
            expired = 0 < session.expires_at_ms <= now_ms + self._check_every_s * 1000
            self._end(key, EXPIRED if expired else REVOKED)

    async def run(self) -> None:
        """Subscribes once the first stream registers, then checks every ``check_every_s``,
        until :meth:`stop`."""
        await self._wanted.wait()
        if self._stopping.is_set():
            return
        listening = asyncio.create_task(self._listener.run())
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._check_every_s):
                        await self._stopping.wait()
                if self._stopping.is_set() or not self._sessions:
                    continue
                try:
                    await self.check()
                except Exception as exc:
                    # Streams live on while Redis cannot say (fail open); said once per outage.
                    if not self._failing:
                        logger.warning("session check failed; streams kept: %r", exc)
                    self._failing = True
                else:
                    if self._failing:
                        logger.info("session check works again")
                    self._failing = False
        finally:
            self._listener.stop()
            # The listener waits up to a second for a message; a stopping server does not.
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening

    def stop(self) -> None:
        """Ends :meth:`run`; streams still registered are left as they are."""
        self._stopping.set()
        self._wanted.set()
