"""Per-user token buckets for sends: shared by every process through Redis when there is
one, in process memory otherwise (and while Redis is unreachable, rather than refuse)."""

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
_buckets: dict[int, tuple[float, float]] = {}  # user id -> (tokens, at)


async def send_allow(*, user_id: int) -> None:
    """Take one send from ``user_id``'s bucket or raise RateLimited with retry_after."""
    burst = settings.PARLEY_SEND_BURST
    rate = settings.PARLEY_SEND_PER_SECOND
    if redis_conn.enabled():
        try:
            wait = float(
                await redis_conn.get_redis().eval(
                    _TAKE, 1, f"parley:rl:send:{user_id}", burst, rate, FORGET_AFTER
                )
            )
        except redis_conn.UNAVAILABLE as exc:
            logger.warning("rate limiter falling back to this process: %s", exc)
        else:
            if wait > 0:
                raise RateLimited("too many messages; slow down", retry_after=wait)
            return
    _local_take(user_id, float(burst), rate)


def _local_take(user_id: int, burst: float, rate: float) -> None:
    now = time.monotonic()
    with _lock:
        tokens, at = _buckets.get(user_id, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            _buckets[user_id] = (tokens, now)
            raise RateLimited("too many messages; slow down", retry_after=(1.0 - tokens) / rate)
        _buckets[user_id] = (tokens - 1.0, now)
        if len(_buckets) > 10000:
            for key, (_, seen) in list(_buckets.items()):
                if now - seen > FORGET_AFTER:
                    del _buckets[key]
