"""Per-user token buckets: shared by every process through Redis when there is one, in
process memory otherwise (and while Redis is unreachable, rather than refuse).

Two buckets per user. **send**: messages, and anything else that asks the model for an
answer (a regenerate, an edit's rerun). **action**: edit, delete, rate and picking a
version, which cost no model time but are each an event to every member of the room (a
script flipping a rating would otherwise flood every member's connection). They are kept
apart so that rating and tidying up never eat into what a member may send, and a burst of
sends never blocks a delete."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings

from chat import redis as redis_conn
from chat.errors import RateLimited

logger = logging.getLogger(__name__)

# Buckets idle for this long are full again and can be forgotten, bounding memory.
FORGET_AFTER = 600

# KEYS[1] the user's bucket; ARGV burst, rate per second, ttl. Redis's clock, so every
# process agrees. Returns "0" when allowed, else the seconds to wait, as a string.
_TAKE = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1]) or burst
local at = tonumber(v[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate)
local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return tostring(wait)
"""

_lock = threading.Lock()
_buckets: dict[tuple[str, int], tuple[float, float]] = {}  # (bucket, user id) -> (tokens, at)


async def send_allow(*, user_id: int) -> None:
    """Take one send from ``user_id``'s bucket or raise RateLimited with retry_after."""
    await _take(
        "send",
        user_id,
        burst=settings.PARLEY_SEND_BURST,
        rate=settings.PARLEY_SEND_PER_SECOND,
        refusal="too many messages; slow down",
    )


async def action_allow(*, user_id: int) -> None:
    """Take one edit, delete, rating or version pick from ``user_id``'s action bucket, or
    raise RateLimited with retry_after."""
    await _take(
        "action",
        user_id,
        burst=settings.PARLEY_ACTION_BURST,
        rate=settings.PARLEY_ACTION_PER_SECOND,
        refusal="too many edits, deletes or ratings; slow down",
    )


async def _take(bucket: str, user_id: int, *, burst: int, rate: float, refusal: str) -> None:
    if redis_conn.enabled():
        try:
            wait = float(
                await redis_conn.get_redis().eval(
                    _TAKE, 1, f"parley:rl:{bucket}:{user_id}", burst, rate, FORGET_AFTER
                )
            )
        except redis_conn.UNAVAILABLE as exc:
            logger.warning("rate limiter falling back to this process: %s", exc)
        else:
            if wait > 0:
                raise RateLimited(refusal, retry_after=wait)
            return
    _local_take((bucket, user_id), float(burst), rate, refusal)


def _local_take(key: tuple[str, int], burst: float, rate: float, refusal: str) -> None:
    now = time.monotonic()
    with _lock:
        tokens, at = _buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            _buckets[key] = (tokens, now)
            raise RateLimited(refusal, retry_after=(1.0 - tokens) / rate)
        _buckets[key] = (tokens - 1.0, now)
        if len(_buckets) > 10000:
            for key, (_, seen) in list(_buckets.items()):
                if now - seen > FORGET_AFTER:
                    del _buckets[key]
