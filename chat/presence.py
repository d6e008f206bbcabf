"""Who is online in each room (live-only; never stored in the database).

Without Redis: counts in this process. With Redis: each process also records its online
users in a sorted set per room, scored by when the entry expires, and refreshes its own
entries every heartbeat; entries of a process that died expire with its lease. A user is
online while any of their connections, on any process, is.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import Counter

from django.conf import settings

from chat import redis as redis_conn
from chat.runtime import get_runtime
from core.contract import LIVE_PRESENCE

logger = logging.getLogger(__name__)


def online_fields(online: list[str]) -> dict[str, object]:
    """``online`` for ``hello`` and ``presence``: the names, at most
    PARLEY_PRESENCE_LIST_MAX of them, and ``online_count`` (a Parley extension) when the
    list is cut, so a room of thousands does not send thousands of names to each member."""
    limit = settings.PARLEY_PRESENCE_LIST_MAX
    if len(online) <= limit:
        return {"online": online}
    return {"online": online[:limit], "online_count": len(online)}


def online_fields_with(online: list[str], name: str) -> dict[str, object]:
    """``online_fields`` of the sorted ``online`` with ``name`` in it: one joining sees
    themselves online even when the list was read a moment before they came. Per join it
    copies at most the first PARLEY_PRESENCE_LIST_MAX names, not the room's whole list."""
    limit = settings.PARLEY_PRESENCE_LIST_MAX
    at = bisect.bisect_left(online, name)
    present = at < len(online) and online[at] == name
    count = len(online) + (0 if present else 1)
    head = online[: min(limit, len(online))]
    if not present and at < limit:
        head.insert(at, name)
        del head[limit:]
    if count <= limit:
        return {"online": head}
    return {"online": head, "online_count": count}


def presence_event(online: list[str]) -> dict[str, object]:
    return {"type": LIVE_PRESENCE, **online_fields(online)}


def _key(room_id: int) -> str:
    return redis_conn.room_key(room_id, "online")


class Presence:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._rooms: dict[int, Counter[str]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._recent: dict[int, tuple[float, list[str]]] = {}

    def _member(self, username: str) -> str:
        return f"{self.worker_id}|{username}"

    async def join(self, room_id: int, username: str) -> bool:
        """Count one more connection of ``username``; True when they came online here."""
        counts = self._rooms.setdefault(room_id, Counter())
        counts[username] += 1
        first = counts[username] == 1
        if first and redis_conn.enabled():
            with contextlib.suppress(*redis_conn.UNAVAILABLE):
                await redis_conn.get_redis().zadd(
                    _key(room_id), {self._member(username): self._expiry()}
                )
            self._ensure_refresher()
        return first

    async def leave(self, room_id: int, username: str) -> bool:
        """Count one connection fewer; True when ``username`` went offline here."""
        counts = self._rooms.get(room_id)
        if counts is None or counts[username] <= 0:
            return False
        counts[username] -= 1
        if counts[username] > 0:
            return False
        del counts[username]
        if not counts:
            del self._rooms[room_id]
            self._recent.pop(room_id, None)
        if redis_conn.enabled():
            with contextlib.suppress(*redis_conn.UNAVAILABLE):
                await redis_conn.get_redis().zrem(_key(room_id), self._member(username))
        return True

    async def online_recent(self, room_id: int) -> list[str]:
        """``online`` as read at most PARLEY_PRESENCE_DEBOUNCE ago: a burst of handshakes
        shares one read (and one sort) for their ``hello``; a ``presence`` event follows
        any change anyway."""
        now = time.monotonic()
        cached = self._recent.get(room_id)
        if cached is not None and now - cached[0] < settings.PARLEY_PRESENCE_DEBOUNCE:
            return cached[1]
        names = await self.online(room_id)
        self._recent[room_id] = (now, names)
        return names

    async def online(self, room_id: int) -> list[str]:
        names = set(self._rooms.get(room_id, {}))
        if redis_conn.enabled():
            try:
                members = await redis_conn.get_redis().zrangebyscore(
                    _key(room_id), time.time(), "+inf"
                )
                names.update(m.decode().split("|", 1)[1] for m in members)
            except redis_conn.UNAVAILABLE as exc:
                logger.warning("presence unavailable: %s", exc)
        return sorted(names)

    async def aclose(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)

    def _expiry(self) -> float:
        return time.time() + settings.PARLEY_WORKER_LEASE

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh(), name="presence-refresh")

    async def _refresh(self) -> None:
        while self._rooms:
            await asyncio.sleep(settings.PARLEY_WORKER_HEARTBEAT)
            client = redis_conn.get_redis()
            try:
                for room_id, counts in list(self._rooms.items()):
                    expiry = self._expiry()
                    await client.zadd(_key(room_id), {self._member(u): expiry for u in counts})
                    # Drop entries that expired (their process died) so the set stays small.
                    await client.zremrangebyscore(_key(room_id), "-inf", time.time())
            except redis_conn.UNAVAILABLE as exc:
                logger.warning("presence refresh failed: %s", exc)


def get_presence() -> Presence:
    """This event loop's presence, a part of its runtime (chat/runtime.py), recorded under
    the runtime's worker id."""
    return get_runtime().part(Presence, lambda runtime: Presence(runtime.worker_id))
