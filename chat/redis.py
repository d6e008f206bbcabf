"""Redis connections for the event log, queues, leases and presence (when REDIS_URL is set).

One asyncio client per event loop (a client's connections belong to the loop that made
them) and one thread-safe synchronous client for code running in worker threads.
"""

from __future__ import annotations

import asyncio
import weakref
from functools import cache

import redis
import redis.asyncio as aioredis
from django.conf import settings

# Redis errors that mean "unreachable right now": retried or reported, never a crash.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, OSError)

# Connecting to Redis on the same network takes milliseconds; a few seconds means it is
# down (restarting), and the caller's retry loop takes over.
CONNECT_TIMEOUT = 2.0
# No command of ours blocks server-side, so any reply slower than this is an outage.
SOCKET_TIMEOUT = 5.0

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def enabled() -> bool:
    return bool(settings.REDIS_URL)


def get_redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            health_check_interval=30,
        )
    return client


@cache
def get_sync_redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT
    )
