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
from collections.abc import Mapping
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from chat.events.schema import (
    DeleteEvent,
    DeltaEvent,
    DurableEvent,
    EditEvent,
    GenerationEvent,
    GenerationState,
    MessageEvent,
    QueueEvent,
    QueuePlace,
    RatingEvent,
    RoomBody,
    RoomEvent,
    SnapshotEvent,
    VersionBody,
    VersionEvent,
    delete_body,
    delta_body,
    edit_body,
    generation_body,
    message_body,
    queue_event,
    rating_body,
    room_body,
    snapshot_event,
    version_body,
)
from chat.events.store import EventStore, LiveState, StoreUnavailable
from chat.models import LIVE_STATUSES, Room
from chat.runtime import get_runtime
from chat.serializers import ENDING_FIELDS, MessageDict, message_to_dict
from core import metrics
from core.contract import LAYER_ROOM_AUDIO, LAYER_ROOM_EVENT, LAYER_ROOM_LIVE

logger = logging.getLogger(__name__)

__all__ = [
    "DeleteEvent",
    "DeltaEvent",
    "EditEvent",
    "RatingEvent",
    "delete_body",
    "edit_body",
    "rating_body",
    "DurableEvent",
    "GenerationEvent",
    "GenerationState",
    "MessageEvent",
    "QueueEvent",
    "QueuePlace",
    "RoomBody",
    "RoomEvent",
    "SnapshotEvent",
    "delta_body",
    "generation_body",
    "message_body",
    "queue_event",
    "room_body",
    "VersionBody",
    "VersionEvent",
    "version_body",
    "EventHub",
    "StoreUnavailable",
    "get_hub",
    "group_name",
    "room_audio_emit",
    "room_event_emit",
    "room_head_sync",
    "room_latest",
    "room_live_emit",
    "room_message_at",
]


def group_name(room_id: int) -> str:
    """The channel-layer group of a room: built from its id, never from user text."""
    return f"room.{room_id}"


# How many times a snapshot reads the live copies again when messages were sent while it
# read them (each pass costs a store call and a query; a room busier than this between
# two reads a millisecond apart is already resynchronising its members with deltas).
SNAPSHOT_READS = 3

# Backoff between retries of an emit while the store is unreachable: quick at first (a
# dropped connection reconnects at once), then once a second while Redis restarts.
_RETRY_BACKOFF = (0.05, 0.1, 0.25, 0.5, 1.0)


def make_store() -> EventStore:
    if settings.REDIS_URL:
        from chat.events.redis_store import RedisEventStore

        return RedisEventStore()
    from chat.events.memory import MemoryEventStore

    return MemoryEventStore()


def _loop_time(monotonic_deadline: float) -> float:
    """A time.monotonic() deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


class EventHub:
    def __init__(self, store: EventStore | None = None) -> None:
        self.store = store or make_store()
        # Emits of one room from this process go out in seq order: a lock per room, with
        # the number of emits holding or awaiting it, dropped when that falls to zero (a
        # process that sees many rooms keeps locks only for those emitting right now).
        self._locks: dict[int, tuple[asyncio.Lock, list[int]]] = {}

    def forget_room(self, room_id: int) -> None:
        """The room went idle in this process: drop what is kept for it."""
        self.store.forget(room_id)

    def saw(self, room_id: int, seq: int) -> None:
        """This process handed ``seq`` of the room to its members (``EventStore.saw``)."""
        self.store.saw(room_id, seq)

    async def aclose(self) -> None:
        await self.store.aclose()

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
        # One key for every attempt: a retry after a lost answer is the same event.
        key = uuid.uuid4().hex
        entry = self._locks.get(room_id)
        if entry is None:
            entry = self._locks[room_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            if until_stored:
                await lock.acquire()
            else:
                # The lock may be held by a terminal event waiting out a long outage
                # (until_stored): the retry bound counts the wait for it too, so a send
                # is told `busy` in time instead of hanging for the whole outage.
                try:
                    async with asyncio.timeout_at(_loop_time(deadline)):
                        await lock.acquire()
                except TimeoutError:
                    raise StoreUnavailable(
                        "the event store is away; this room's events are waiting for it"
                    ) from None
            try:
                return await self._emit_locked(room_id, body, key, live, until_stored, deadline)
            finally:
                lock.release()
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[room_id]

    async def _emit_locked(
        self,
        room_id: int,
        body: Mapping[str, Any],
        key: str,
        live: LiveState | None,
        until_stored: bool,
        deadline: float,
    ) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                event = await self.store.append(
                    room_id, body, key=key, live=live, opening=lambda: self.snapshot(room_id)
                )
                break
            except StoreUnavailable:
                if not until_stored and time.monotonic() >= deadline:
                    raise
                metrics.store_retry()
                delay = _RETRY_BACKOFF[min(attempt, len(_RETRY_BACKOFF) - 1)]
                attempt += 1
                logger.warning("event store unavailable; retrying in %.2f s", delay)
                await asyncio.sleep(delay)
        metrics.event_emitted(event["type"])
        layer = get_channel_layer()
        assert layer is not None
        # "at": when it was published, for the receivers' channel-layer lag (core/metrics.py).
        message = {"type": LAYER_ROOM_EVENT, "event": event, "at": metrics.published_at()}
        try:
            await layer.group_send(group_name(room_id), message)
        except Exception:  # noqa: BLE001 - recorded already: members catch up from the log
            logger.warning("room %s: fan-out of seq %s failed", room_id, event["seq"])
        return event

    async def head(self, room_id: int) -> int:
        return await self.store.head(room_id)

    async def replay(self, room_id: int, after: int) -> list[dict[str, Any]] | None:
        """Every event after ``after``, or None (the caller takes a snapshot instead).

        Across a restart that emptied the log, the snapshot it opens with and what follows
        it, so a reply that ended meanwhile reaches the member with its terminal event;
        then a fresh snapshot if a skipped seq stopped that run short of the head.
        """
        events = await self.store.since(room_id, after)
        if events and events[0]["type"] == "snapshot" and events[0]["seq"] > after + 1:
            if events[-1]["seq"] < await self.store.head(room_id):
                events.append(dict(await self.snapshot(room_id)))
        return events

    async def snapshot(self, room_id: int, *, limit: int | None = None) -> SnapshotEvent:
        """The room's latest messages as they stood at one seq, with live replies' text.

        The live replies' text and status and the seq are read in one atomic step; the
        rest comes from the database (final replies are saved before their end event).
        The database is read *after* that step, so nothing emitted at or below the seq is
        missing from it (a row is committed before its event is emitted) and a reply that
        ended meanwhile is shown as it stood at the seq (its live copy), not as its last
        periodic save. The live copies are read for the messages the database listed a
        moment before; if the second read lists one that was not asked about (sent in
        between), the step is taken again with it, a few times at most.

        ``limit``: how many messages (default ``PARLEY_SNAPSHOT_MESSAGES``).
        """
        count = limit or settings.PARLEY_SNAPSHOT_MESSAGES
        ids = await database_sync_to_async(_latest_ids)(room_id, count)
        for _attempt in range(SNAPSHOT_READS):
            head, live = await self.store.live_view(room_id, ids)
            messages = await database_sync_to_async(_latest)(room_id, count)
            asked = set(ids)
            new = [m["id"] for m in messages if m["id"] not in asked]
            if not new:
                break
            ids = [*ids, *new]
        for message in messages:
            state = live.get(message["id"])
            if state is not None and not message.get("deleted"):
                message["text"], message["status"] = state
                if state[1] in LIVE_STATUSES:
                    # Ended in the database since the seq, not at it: how it ended (the
                    # terminal event's by, reason, metrics) is still to come after the seq.
                    for ending in ENDING_FIELDS:
                        message.pop(ending, None)
        return snapshot_event(seq=head, messages=messages)


async def _message_at(
    hub: EventHub, room_id: int, message_id: str
) -> tuple[int, MessageDict | None]:
    # The snapshot's rule for one message: the live copy and the seq in one atomic step,
    # the database after it (a reply's row is final before its end event is stored).
    head, live = await hub.store.live_view(room_id, [message_id])
    message = await database_sync_to_async(_one)(room_id, message_id)
    state = live.get(message_id)
    if message is not None and state is not None:
        message["text"], message["status"] = state
        if state[1] in LIVE_STATUSES:
            for ending in ENDING_FIELDS:
                message.pop(ending, None)
    return head, message


def _one(room_id: int, message_id: str) -> MessageDict | None:
    from chat.selectors import room_message

    found = room_message(room_id=room_id, message_id=int(message_id))
    return message_to_dict(found) if found is not None else None


def _latest_ids(room_id: int, limit: int) -> list[str]:
    from chat.selectors import latest_message_ids

    return latest_message_ids(room_id=room_id, limit=limit)


def _latest(room_id: int, limit: int) -> list[MessageDict]:
    from chat.selectors import latest_messages

    return [message_to_dict(m) for m in latest_messages(room_id=room_id, limit=limit)]


def get_hub() -> EventHub:
    """This event loop's hub, a part of its runtime (chat/runtime.py)."""
    return get_runtime().part(EventHub, lambda runtime: EventHub())


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
        group_name(room_id), {"type": LAYER_ROOM_LIVE, "event": dict(event), "exclude": exclude}
    )


async def room_audio_emit(
    *, room_id: int, event: Mapping[str, Any] | None = None, frame: bytes | None = None
) -> None:
    """Fan out live-only audio: a JSON ``audio`` event or one binary PCM frame.

    Only connections that opted in (the ``audio`` action, or SSE ``?audio=1``) pass it on.
    """
    layer = get_channel_layer()
    assert layer is not None
    message: dict[str, Any] = {"type": LAYER_ROOM_AUDIO}
    if event is not None:
        message["event"] = dict(event)
    if frame is not None:
        message["frame"] = frame
    await layer.group_send(group_name(room_id), message)


_sync_store: EventStore | None = None


async def room_latest(*, room_id: int, limit: int) -> SnapshotEvent:
    """The room's latest ``limit`` messages exactly as they stood at one seq (the
    snapshot's rule): a reply still being written has the text its ``delta`` events up to
    that seq add up to, so a reader that goes on with ``after`` = that seq misses nothing
    and gets nothing twice (GET /api/rooms/<slug>/messages, the newest page)."""
    return await get_hub().snapshot(room_id, limit=limit)


async def room_message_at(*, room_id: int, message_id: str) -> tuple[int, MessageDict | None]:
    """One message of the room exactly as it stood at one seq (``room_latest``'s rule for
    a single message): (that seq, the message, None if the room has no such message). A
    reader that goes on with the room's events after that seq misses nothing of it and
    gets nothing twice (the OpenAI-compatible API's response streams, chat/openai_api/)."""
    return await _message_at(get_hub(), room_id, message_id)


def room_head_sync(room: Room) -> int:
    """The room's latest seq, for synchronous code (JSON views)."""
    global _sync_store
    if _sync_store is None:
        _sync_store = make_store()
    return _sync_store.head_sync(room)
