"""One Redis pub/sub subscription per process, kept alive across Redis restarts and failovers.

Pub/sub keeps nothing for a subscriber that is away: whoever listens is told each time the
subscription is made again (``on_subscribed(again=True)``), so it can read again whatever it
might have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis

from mesh.events import as_text

logger = logging.getLogger(__name__)


class Listener:
    """Subscribes to ``channels`` (or ``patterns``) and hands each message's channel and text
    to ``on_message``; after an error it waits ``retry_s`` and subscribes again, until
    :meth:`stop`."""

    def __init__(
        self,
        redis: Redis,
        on_message: Callable[[str, str], None],
        *,
        channels: Sequence[str] = (),
        patterns: Sequence[str] = (),
        on_subscribed: Callable[[bool], Awaitable[None]] | None = None,
        retry_s: float = 1.0,
        name: str = "subscription",
    ) -> None:
        self._redis = redis
        self._on_message = on_message
        self._channels = list(channels)
        self._patterns = list(patterns)
        self._on_subscribed = on_subscribed
        self._retry_s = retry_s
        self._name = name
        self._stopping = asyncio.Event()
        #: Set once subscribed (and ``on_subscribed`` done) the first time.
        self.ready = asyncio.Event()
        #: Subscriptions lost so far.
        self.errors = 0

    async def run(self) -> None:
        while not self._stopping.is_set():
            pubsub = self._redis.pubsub()
            try:
                if self._channels:
                    await pubsub.subscribe(*self._channels)
                if self._patterns:
                    await pubsub.psubscribe(*self._patterns)
                if self._on_subscribed is not None:
                    # Subscribed first, caught up second: a message in between is heard.
                    await self._on_subscribed(self.ready.is_set())
                self.ready.set()
                while not self._stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message.get("type") not in ("message", "pmessage"):
                        continue
                    self._on_message(as_text(message["channel"]), as_text(message["data"]))
            except Exception as exc:
                self.errors += 1
                logger.warning("%s lost; subscribing again: %r", self._name, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._retry_s)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def stop(self) -> None:
        self._stopping.set()
