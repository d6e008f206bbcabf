"""Redis connections for the event log, queues, leases and presence (when REDIS_URL is set),
and the one key layout every module uses.

One asyncio client per event loop (a client's connections belong to the loop that made
them) and one thread-safe synchronous client for code running in worker threads. With
``REDIS_URL=redis+cluster://...`` (``settings.REDIS_CLUSTER``) both are redis-py's cluster
clients, which route each command by its key's slot and follow ``MOVED``/``ASK``.

**Key layout** (docs/architecture.md "Redis keys"). Every key of one room carries the
room's hash tag, ``parley:{r<room id>}:...``, so every key of a room is in one slot and
each Lua script (append, live view, replay) touches one slot, as a cluster requires. The
worker leases and the store's birth marker share the tag ``{g}`` (one slot), because the
lease script reads both. Per-user keys (the send rate limit) have no tag and spread. The
single-Redis mode uses the same layout: one code path.
"""

from __future__ import annotations

import asyncio
import weakref
from functools import cache
from typing import TypeAlias

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from django.conf import settings

# Redis errors that mean "unreachable right now": retried or reported, never a crash. A
# cluster adds its own: a slot with no reachable master (mid-failover), too many redirects.
UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterError,  # CLUSTERDOWN, MASTERDOWN: mid-failover
    redis.exceptions.TryAgainError,  # a multi-key command on a slot being migrated
    redis.exceptions.SlotNotCoveredError,
    OSError,
)

# Connecting to Redis on the same network takes milliseconds; a few seconds means it is
# down (restarting), and the caller's retry loop takes over.
CONNECT_TIMEOUT = 2.0
# No command of ours blocks server-side, so any reply slower than this is an outage.
SOCKET_TIMEOUT = 5.0

AsyncRedis: TypeAlias = aioredis.Redis | aiocluster.RedisCluster
SyncRedis: TypeAlias = redis.Redis | redis.cluster.RedisCluster

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRedis] = (
    weakref.WeakKeyDictionary()
)


def enabled() -> bool:
    return bool(settings.REDIS_URL)


def room_key(room_id: int, *parts: object) -> str:
    """A key of one room: ``parley:{r<id>}:<parts>``, all in the room's slot."""
    return ":".join([f"parley:{{r{room_id}}}", *map(str, parts)])


def global_key(*parts: object) -> str:
    """A process-wide key that a script reads together with others (leases): ``{g}``."""
    return ":".join(["parley:{g}", *map(str, parts)])


def room_tag(room_id: int) -> str:
    """The room's hash tag, shared by its keys and its channel-layer groups' shard channel."""
    return f"r{room_id}"


def get_redis() -> AsyncRedis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = _new_async_client()
    return client


def _new_async_client() -> AsyncRedis:
    cluster = settings.REDIS_CLUSTER
    if cluster is None:
        return aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            health_check_interval=30,
        )
    return aiocluster.RedisCluster(
        startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in cluster.nodes],
        username=cluster.username,
        password=cluster.password,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
    )


@cache
def get_sync_redis() -> SyncRedis:
    cluster = settings.REDIS_CLUSTER
    if cluster is None:
        return redis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
        )
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in cluster.nodes],
        username=cluster.username,
        password=cluster.password,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
    )
