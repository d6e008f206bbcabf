"""The per-room timer: one task per room channel, not one per connection.

Every ``PARLEY_RESYNC_INTERVAL`` it asks the room channel to check the room's head (an
event lost with nothing after it), to re-check its subscribers' access, and to ping its
SSE responses every ``PARLEY_SSE_PING_INTERVAL``; once the room has had no subscriber for
``PARLEY_ROOM_LINGER`` it calls ``on_idle`` and stops. An idle member costs its socket and
its pings, nothing else (STYLE.md "Timers per room").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from django.conf import settings

from chat.errors import ParleyError

logger = logging.getLogger(__name__)


class TimedRoom(Protocol):
    """What the timer drives: a room channel."""

    room_id: int

    def empty_since(self) -> float | None: ...

    def has_sse(self) -> bool: ...

    async def check_head(self) -> None: ...

    async def check_access(self) -> None: ...

    async def ping_sse(self) -> None: ...


async def run_room_timer(room: TimedRoom, on_idle: Callable[[], Awaitable[None]]) -> None:
    interval = settings.PARLEY_RESYNC_INTERVAL
    loop = asyncio.get_running_loop()
    next_ping = loop.time() + settings.PARLEY_SSE_PING_INTERVAL
    while True:
        await asyncio.sleep(interval)
        empty_since = room.empty_since()
        if empty_since is not None:
            if time.monotonic() - empty_since >= settings.PARLEY_ROOM_LINGER:
                await on_idle()
                return
            continue
        try:
            await room.check_head()
        except ParleyError:
            pass  # the store is away; the next check will tell
        except Exception:
            logger.exception("room %s: head check failed", room.room_id)
        try:
            await room.check_access()
        except Exception:
            logger.exception("room %s: access check failed", room.room_id)
        if room.has_sse() and loop.time() >= next_ping:
            next_ping = loop.time() + settings.PARLEY_SSE_PING_INTERVAL
            await room.ping_sse()
