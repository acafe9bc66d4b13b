"""Waiting for something to happen in another task or process, without timing thresholds."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, every_s: float = 0.02
) -> None:
    """Polls ``condition`` until it holds; the per-test timeout, not a threshold here, bounds it."""
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(every_s)
