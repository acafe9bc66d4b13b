"""Per-caller call quotas in Redis: a fixed window per caller, shared by every instance."""

from __future__ import annotations

from redis.asyncio import Redis

# Counts one call and returns {calls in the window so far, ms until the window ends}. The window
# starts with the caller's first call and its key expires with it; a key somehow left without an
# expiry gets one, so no caller is refused for ever.
#   KEYS: the caller's counter   ARGV: window_ms
_TAKE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""


def quota_key(name: str, caller: str) -> str:
    """The counter of ``caller``'s calls to ``name`` (its own hash tag: callers spread out)."""
    return f"loc:quota:{name}:{{{caller}}}"


class CallQuota:
    """At most ``calls`` calls per caller in each window of ``window_s`` seconds.

    A fixed window (counted from the caller's first call in it) rather than a sliding one: one
    key and one script run per call. A caller may therefore fit up to twice ``calls`` into a
    window's length that straddles two windows, which a quota meant to stop a runaway client
    can afford.
    """

    def __init__(self, redis: Redis, name: str, *, calls: int, window_s: float) -> None:
        if calls < 1 or window_s <= 0:
            raise ValueError("a quota needs at least one call and a positive window")
        self._redis = redis
        self._name = name
        self.calls = calls
        self._window_ms = max(1, round(window_s * 1000))

    async def take(self, caller: str) -> int | None:
        """Counts a call by ``caller``; ``None`` if it is within the quota, else how many ms
        remain until the caller's window ends (the call is refused)."""
        count, ttl_ms = await self._redis.eval(  # type: ignore[misc]
            _TAKE, 1, quota_key(self._name, caller), self._window_ms
        )
        if int(count) <= self.calls:
            return None
        return max(1, int(ttl_ms))
