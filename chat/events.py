"""Where every durable room event is born, recorded and fanned out.

``room_event_emit`` is the only function that creates a durable room event: it assigns
the room's next ``seq``, appends the event to the room's replay log, and sends it through
the channel layer to the room's group. Consumers and views never call ``group_send`` for
room events; live-only events (presence, typing) go through ``room_live_emit``.

Seqs are strictly increasing per room. They are handed out in memory from blocks
reserved in the database (``Room.seq_reserved``), so a restarted process continues above
every seq its predecessor could have used. The replay log is in memory, per process
(see docs/architecture.md for the multi-process design).

One ``EventHub`` exists per event loop: in production that is one per process; in tests
each event loop gets its own, so asyncio primitives never cross loops.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from chat.models import Room
from chat.serializers import MessageDict, message_to_dict

# --- Event schemas (PROTOCOL.md section 3) ------------------------------------------------

GenerationState = Literal["streaming", "paused", "complete", "stopped", "failed", "interrupted"]


class MessageEvent(TypedDict):
    type: Literal["message"]
    seq: int
    message: MessageDict


class DeltaEvent(TypedDict):
    type: Literal["delta"]
    seq: int
    message_id: str
    text: str


class GenerationEvent(TypedDict):
    type: Literal["generation"]
    seq: int
    message_id: str
    state: GenerationState
    by: str | None
    reason: str | None
    usage: NotRequired[dict[str, int | None]]
    metrics: NotRequired[dict[str, float | int | None]]


class SnapshotEvent(TypedDict):
    type: Literal["snapshot"]
    seq: int
    messages: list[MessageDict]


DurableEvent = MessageEvent | DeltaEvent | GenerationEvent | SnapshotEvent


def group_name(room_id: int) -> str:
    """The channel-layer group of a room: built from its id, never from user text."""
    return f"room.{room_id}"


# --- The per-loop hub ---------------------------------------------------------------------


@dataclass
class _RoomLog:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded: bool = False
    last_seq: int = 0  # the room's head: the last seq handed out (or reserved at load)
    reserved: int = 0  # seqs up to here are reserved in the database for this process
    events: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)


# Process-wide mirror of each room's head, for synchronous readers (the JSON views run in
# worker threads and cannot touch the loop's state).
_heads: dict[int, int] = {}


class EventHub:
    def __init__(self) -> None:
        self._rooms: dict[int, _RoomLog] = {}
        # Live text of replies generated in this process, by message id: a snapshot
        # must show what members have seen, not the last periodic save.
        self.live_messages: dict[int, Callable[[], tuple[str, str]]] = {}

    def _log(self, room_id: int) -> _RoomLog:
        log = self._rooms.get(room_id)
        if log is None:
            log = self._rooms[room_id] = _RoomLog()
        return log

    async def _load(self, room_id: int, log: _RoomLog) -> None:
        if not log.loaded:
            reserved = await database_sync_to_async(_read_reserved)(room_id)
            log.last_seq = log.reserved = reserved
            log.loaded = True
            _heads[room_id] = reserved

    async def head(self, room_id: int) -> int:
        log = self._log(room_id)
        async with log.lock:
            await self._load(room_id, log)
            return log.last_seq

    async def emit(self, room_id: int, body: Mapping[str, Any]) -> dict[str, Any]:
        log = self._log(room_id)
        async with log.lock:
            await self._load(room_id, log)
            if log.last_seq >= log.reserved:
                log.reserved = await database_sync_to_async(_reserve_block)(
                    room_id, settings.PARLEY_SEQ_BLOCK
                )
                # Another process (or an earlier loop) may have reserved past us: jump.
                log.last_seq = max(log.last_seq, log.reserved - settings.PARLEY_SEQ_BLOCK)
            log.last_seq += 1
            event = {**body, "seq": log.last_seq}
            _heads[room_id] = log.last_seq
            now = time.monotonic()
            log.events.append((now, event))
            _trim(log.events, now)
            layer = get_channel_layer()
            assert layer is not None
            await layer.group_send(group_name(room_id), {"type": "room.event", "event": event})
            return event

    async def replay(self, room_id: int, after: int) -> list[dict[str, Any]] | None:
        """Durable events after ``after``, or None when they are no longer all held."""
        log = self._log(room_id)
        async with log.lock:
            await self._load(room_id, log)
            if after == log.last_seq:
                return []
            if after > log.last_seq:
                return None  # a seq this server never issued: resynchronise
            if not log.events or log.events[0][1]["seq"] > after + 1:
                return None
            return [event for _, event in log.events if event["seq"] > after]

    async def snapshot(self, room_id: int) -> SnapshotEvent:
        """The room's latest messages at the current head, with live replies' text."""
        log = self._log(room_id)
        async with log.lock:
            await self._load(room_id, log)
            messages = await database_sync_to_async(_latest)(room_id)
            for message in messages:
                live = self.live_messages.get(int(message["id"]))
                if live is not None:
                    message["text"], message["status"] = live()
            return {"type": "snapshot", "seq": log.last_seq, "messages": messages}


def _trim(events: deque[tuple[float, dict[str, Any]]], now: float) -> None:
    keep_events = settings.PARLEY_LOG_MIN_EVENTS
    keep_seconds = settings.PARLEY_LOG_MIN_SECONDS
    while len(events) > settings.PARLEY_LOG_MAX_EVENTS or (
        len(events) > keep_events and now - events[0][0] > keep_seconds
    ):
        events.popleft()


def _read_reserved(room_id: int) -> int:
    return Room.objects.filter(pk=room_id).values_list("seq_reserved", flat=True).get()


def _reserve_block(room_id: int, size: int) -> int:
    with transaction.atomic():
        room = Room.objects.select_for_update().only("seq_reserved").get(pk=room_id)
        room.seq_reserved += size
        room.save(update_fields=["seq_reserved"])
        return room.seq_reserved


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


async def room_event_emit(*, room_id: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """Create a durable room event: assign its seq, record it, fan it out."""
    return await get_hub().emit(room_id, body)


async def room_live_emit(
    *, room_id: int, event: Mapping[str, Any], exclude: str | None = None
) -> None:
    """Fan out a live-only event (presence, typing): no seq, never replayed.

    ``exclude`` names a channel that should not get it (the typist's own connection).
    """
    layer = get_channel_layer()
    assert layer is not None
    await layer.group_send(
        group_name(room_id), {"type": "room.live", "event": dict(event), "exclude": exclude}
    )


def room_head_sync(room: Room) -> int:
    """The room's latest seq, for synchronous code (JSON views)."""
    return _heads.get(room.pk, room.seq_reserved)
