"""The worker lease, and the sweep that ends the replies of processes that died.

With Redis, each process refreshes ``parley:{g}:w:<worker id>`` (its control channel, with a
TTL) every heartbeat. A reply whose worker's key has expired belongs to a dead process:
any survivor marks it ``interrupted``, takes it out of the room's queue and tells the
room. A restart of Redis wipes every lease at once, live or not, so a missing lease
counts as death only once the store has held Parley's state for a whole lease
(``store_age``): by then every live process has beaten again.

Without Redis (one process), every live reply not owned by this process was left by one
that is gone, and is interrupted at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async
from django.conf import settings

from chat import redis as redis_conn
from chat.events import generation_body, room_event_emit
from chat.replies import db

logger = logging.getLogger(__name__)

# How long (seconds) Redis has held Parley's state: the age of a marker set by the first
# heartbeat or sweep to find it missing, which a restart (Redis keeps nothing on disk
# here) or a flush removes together with every lease. Redis's own clock, so every
# process measures the same age. KEYS[1] is the marker; a heartbeat also sets its lease
# (KEYS[2], ARGV[1] the channel, ARGV[2] the lease in ms).
_STORE_AGE = """
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local born = redis.call('GET', KEYS[1])
if not born then
  redis.call('SET', KEYS[1], string.format('%.6f', t))
  return '0'
end
return string.format('%.6f', t - tonumber(born))
"""
# The marker and the leases share one slot (``{g}``, chat/redis.py): the heartbeat's
# script sets a lease and reads the marker in one step, which a cluster allows only
# within a slot. And a Redis Cluster shard that restarts empty loses the marker with the
# very leases it vouches for, never leases elsewhere.
_STORE_BORN_KEY = redis_conn.global_key("store-born")

# Called for each reply the sweep interrupts: (room id, message id, its dead worker).
OnInterrupted = Callable[[int, int, str], Awaitable[None]]


def worker_key(worker_id: str) -> str:
    return redis_conn.global_key("w", worker_id)


async def store_age() -> float:
    client = redis_conn.get_redis()
    return float(await client.eval(_STORE_AGE, 1, _STORE_BORN_KEY))


async def presumed_dead(worker: str) -> bool:
    """``worker``'s lease is gone, and not just because Redis came back empty."""
    if await redis_conn.get_redis().exists(worker_key(worker)):
        return False
    return await store_age() >= settings.PARLEY_WORKER_LEASE


async def worker_channel(worker: str) -> str | None:
    """The control channel ``worker`` leased, or None when its lease is gone."""
    channel = await redis_conn.get_redis().get(worker_key(worker))
    return None if channel is None else bytes(channel).decode()


class WorkerLease:
    """This process's lease (its heartbeat) and its share of the orphan sweep."""

    def __init__(self, worker_id: str, on_interrupted: OnInterrupted) -> None:
        self.worker_id = worker_id
        self.on_interrupted = on_interrupted

    async def beat(self, channel: str) -> None:
        lease_ms = int(settings.PARLEY_WORKER_LEASE * 1000)
        keys = [_STORE_BORN_KEY, worker_key(self.worker_id)]
        await redis_conn.get_redis().eval(_STORE_AGE, len(keys), *keys, channel, lease_ms)

    async def heartbeats(self, channel: str) -> None:
        while True:
            await asyncio.sleep(settings.PARLEY_WORKER_HEARTBEAT)
            try:
                await self.beat(channel)
            except redis_conn.UNAVAILABLE as exc:
                logger.warning("heartbeat failed (Redis unavailable): %s", exc)

    async def watch_orphans(self) -> None:
        async def alive(worker: str) -> bool:
            return not await presumed_dead(worker)

        while True:
            try:
                await self.interrupt_orphans(alive=alive)
            except redis_conn.UNAVAILABLE as exc:
                logger.warning("orphan check skipped (Redis unavailable): %s", exc)
            except Exception:
                logger.exception("orphan check failed")
            await asyncio.sleep(settings.PARLEY_WORKER_HEARTBEAT)

    async def interrupt_orphans(self, *, alive: Callable[[str], Awaitable[bool]]) -> None:
        by_worker = await database_sync_to_async(db.live_replies_by_worker)(exclude=self.worker_id)
        for worker, replies in by_worker.items():
            if await alive(worker):
                continue
            for room_id, message_id in await database_sync_to_async(db.interrupt)(replies):
                logger.warning("reply %s lost its process (%s): interrupted", message_id, worker)
                await self.on_interrupted(room_id, message_id, worker)
                # The database says interrupted from now on: members must hear it too.
                await room_event_emit(
                    room_id=room_id,
                    body=generation_body(
                        message_id=str(message_id),
                        state="interrupted",
                        reason=db.INTERRUPTED_REASON,
                    ),
                    until_stored=True,
                )


async def nobody_alive(worker: str) -> bool:
    """One process (no Redis): every other worker is gone."""
    return False
