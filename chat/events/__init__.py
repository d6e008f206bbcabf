"""Where every durable room event is born, recorded and fanned out.

The package reads top to bottom as an event's route: born and stored here
(``room_event_emit`` → ``EventHub.emit`` → the store in ``memory.py`` / ``redis_store.py``),
encoded once in ``frames.py``, delivered and replayed in ``delivery.py``.

``room_event_emit`` is the only function that creates a durable room event: the store
assigns the room's next ``seq`` and records it for replay, then the event goes through the
channel layer to the room's group. Consumers and views never call ``group_send`` for room
events; live-only events (presence, typing) go through ``room_live_emit``.

One ``EventHub`` exists per event loop: in production that is one per process; in tests
each event loop gets its own, so asyncio primitives never cross loops. The store is the
in-process one without ``REDIS_URL`` and the Redis one with it (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from chat.events.schema import (
    DeltaEvent,
    DurableEvent,
    GenerationEvent,
    GenerationState,
    MessageEvent,
    SnapshotEvent,
    delta_body,
    generation_body,
    message_body,
    snapshot_event,
)
from chat.events.store import EventStore, LiveState, StoreUnavailable
from chat.models import Room
from chat.serializers import MessageDict, message_to_dict

logger = logging.getLogger(__name__)

__all__ = [
    "DeltaEvent",
    "DurableEvent",
    "GenerationEvent",
    "GenerationState",
    "MessageEvent",
    "SnapshotEvent",
    "delta_body",
    "generation_body",
    "message_body",
    "EventHub",
    "StoreUnavailable",
    "get_hub",
    "group_name",
    "room_audio_emit",
    "room_event_emit",
    "room_head_sync",
    "room_live_emit",
]


def group_name(room_id: int) -> str:
    """The channel-layer group of a room: built from its id, never from user text."""
    return f"room.{room_id}"


# Backoff between retries of an emit while the store is unreachable: quick at first (a
# dropped connection reconnects at once), then once a second while Redis restarts.
_RETRY_BACKOFF = (0.05, 0.1, 0.25, 0.5, 1.0)


def make_store() -> EventStore:
    if settings.REDIS_URL:
        from chat.events.redis_store import RedisEventStore

        return RedisEventStore()
    from chat.events.memory import MemoryEventStore

    return MemoryEventStore()


class EventHub:
    def __init__(self, store: EventStore | None = None) -> None:
        self.store = store or make_store()
        # Emits of one room from this process go out in seq order.
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, room_id: int) -> asyncio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = asyncio.Lock()
        return lock

    async def emit(
        self,
        room_id: int,
        body: Mapping[str, Any],
        *,
        live: LiveState | None = None,
        until_stored: bool = False,
    ) -> dict[str, Any]:
        """Record and fan out; retries while the store restarts, then StoreUnavailable.

        ``until_stored`` retries for as long as the store is away (a terminal event: the
        reply has ended in the database, and members must learn it once the store is back).
        """
        deadline = time.monotonic() + settings.PARLEY_STORE_RETRY_SECONDS
        attempt = 0
        # One key for every attempt: a retry after a lost answer is the same event.
        key = uuid.uuid4().hex
        async with self._lock(room_id):
            while True:
                try:
                    event = await self.store.append(room_id, body, key=key, live=live)
                    break
                except StoreUnavailable:
                    if not until_stored and time.monotonic() >= deadline:
                        raise
                    delay = _RETRY_BACKOFF[min(attempt, len(_RETRY_BACKOFF) - 1)]
                    attempt += 1
                    logger.warning("event store unavailable; retrying in %.2f s", delay)
                    await asyncio.sleep(delay)
            layer = get_channel_layer()
            assert layer is not None
            try:
                await layer.group_send(group_name(room_id), {"type": "room.event", "event": event})
            except Exception:  # noqa: BLE001 - recorded already: members catch up from the log
                logger.warning("room %s: fan-out of seq %s failed", room_id, event["seq"])
            return event

    async def head(self, room_id: int) -> int:
        return await self.store.head(room_id)

    async def replay(self, room_id: int, after: int) -> list[dict[str, Any]] | None:
        return await self.store.since(room_id, after)

    async def snapshot(self, room_id: int) -> SnapshotEvent:
        """The room's latest messages as they stood at one seq, with live replies' text.

        The live replies' text and status and the seq are read in one atomic step; the
        rest comes from the database (final replies are saved before their end event).
        """
        messages = await database_sync_to_async(_latest)(room_id)
        head, live = await self.store.live_view(room_id, [m["id"] for m in messages])
        for message in messages:
            state = live.get(message["id"])
            if state is not None:
                message["text"], message["status"] = state
        return snapshot_event(seq=head, messages=messages)


def _latest(room_id: int) -> list[MessageDict]:
    from chat.selectors import latest_messages

    limit = settings.PARLEY_SNAPSHOT_MESSAGES
    return [message_to_dict(m) for m in latest_messages(room_id=room_id, limit=limit)]


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EventHub] = weakref.WeakKeyDictionary()


def get_hub() -> EventHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = EventHub()
    return hub


# --- The public functions -------------------------------------------------------------------


async def room_event_emit(
    *,
    room_id: int,
    body: Mapping[str, Any],
    live: LiveState | None = None,
    until_stored: bool = False,
) -> dict[str, Any]:
    """Create a durable room event: assign its seq, record it, fan it out.

    ``live``: for an event of a running reply, its owner's view of the reply's whole
    visible state, used when the store lost its copy. ``until_stored``: retry without a
    deadline (terminal events).
    """
    return await get_hub().emit(room_id, body, live=live, until_stored=until_stored)


async def room_live_emit(
    *, room_id: int, event: Mapping[str, Any], exclude: str | None = None
) -> None:
    """Fan out a live-only event (presence, typing): no seq, never replayed.

    ``exclude`` names a subscriber that should not get it (the typist's own connection).
    """
    layer = get_channel_layer()
    assert layer is not None
    await layer.group_send(
        group_name(room_id), {"type": "room.live", "event": dict(event), "exclude": exclude}
    )


async def room_audio_emit(
    *, room_id: int, event: Mapping[str, Any] | None = None, frame: bytes | None = None
) -> None:
    """Fan out live-only audio: a JSON ``audio`` event or one binary PCM frame.

    Only connections that opted in (the ``audio`` action, or SSE ``?audio=1``) pass it on.
    """
    layer = get_channel_layer()
    assert layer is not None
    message: dict[str, Any] = {"type": "room.audio"}
    if event is not None:
        message["event"] = dict(event)
    if frame is not None:
        message["frame"] = frame
    await layer.group_send(group_name(room_id), message)


_sync_store: EventStore | None = None


def room_head_sync(room: Room) -> int:
    """The room's latest seq, for synchronous code (JSON views)."""
    global _sync_store
    if _sync_store is None:
        _sync_store = make_store()
    return _sync_store.head_sync(room)
