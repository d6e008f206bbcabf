"""One subscriber's ordered view of a room: the delivery guarantee, shared by transports.

Both the WebSocket consumer and the SSE view receive a room's events from the channel
layer and hand them to a ``RoomFeed``, which sends durable events on in strictly
increasing ``seq``, with no gap and no duplicate (PROTOCOL.md section 3):

- an event at or below the last one sent is dropped (replay and live overlap);
- an event past a gap makes the feed fill the gap from the room's log first, or send a
  ``snapshot`` when the log no longer holds it;
- ``check_head`` (called periodically) catches up when the room's head has moved on and
  no event brought it, e.g. a reply's last event lost while Redis restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from chat.errors import ParleyError
from chat.events import get_hub

Send = Callable[[dict[str, Any]], Awaitable[None]]


class RoomFeed:
    def __init__(self, room_id: int, send: Send) -> None:
        self.room_id = room_id
        self.send = send
        self.last_seq = 0
        self._lock = asyncio.Lock()
        self._behind_at: int | None = None

    async def start(self, *, head: int, after: int | None) -> None:
        """Go on live from ``head``, or from ``after`` after replaying what followed it.

        The caller subscribes to the room's group before reading ``head``, so nothing
        between the two is missed; what arrives both ways is sent once.
        """
        async with self._lock:
            self.last_seq = head if after is None else after
            if after is not None:
                await self._catch_up()

    async def deliver(self, event: dict[str, Any]) -> None:
        async with self._lock:
            seq = event["seq"]
            if seq <= self.last_seq:
                return
            if seq > self.last_seq + 1:
                await self._catch_up()
                if seq <= self.last_seq:
                    return
            self.last_seq = seq
            await self.send(event)

    async def check_head(self) -> None:
        """One periodic check: catch up if behind twice in a row with no progress."""
        try:
            head = await get_hub().recent_head(self.room_id)
        except ParleyError:
            return  # the store is away; the next check will tell
        if head <= self.last_seq:
            self._behind_at = None
        elif self._behind_at == self.last_seq:
            async with self._lock:
                await self._catch_up()
            self._behind_at = None
        else:
            self._behind_at = self.last_seq

    async def _catch_up(self) -> None:
        hub = get_hub()
        events = await hub.replay(self.room_id, self.last_seq)
        if events is None:
            snapshot = await hub.snapshot(self.room_id)
            self.last_seq = snapshot["seq"]
            await self.send(dict(snapshot))
            return
        for event in events:
            if event["seq"] > self.last_seq:
                self.last_seq = event["seq"]
                await self.send(event)
