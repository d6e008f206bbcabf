"""A subscriber's life in a room, the same for every transport, and the process's rooms.

``Fanout`` is this event loop's set of room channels (a part of its runtime,
chat/runtime.py): it opens a room channel on the first subscriber and closes it once the
room has been empty for ``PARLEY_ROOM_LINGER``, dropping what was kept for the room.
``admit`` lets a member in; ``Subscription`` takes one subscriber through subscribe,
``hello``, replay, live and leave.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from channels.db import database_sync_to_async

from chat.events import EventHub, get_hub
from chat.events.delivery import access
from chat.events.delivery.access import Admission, read_at, stamp
from chat.events.delivery.channel import RoomChannel
from chat.events.delivery.subscribers import Subscriber
from chat.presence import Presence, get_presence, online_fields_with
from chat.runtime import get_runtime


class Fanout:
    """The process's (event loop's) room channels."""

    def __init__(self, hub: EventHub, presence: Presence) -> None:
        self.hub = hub
        self.presence = presence
        self.rooms: dict[int, RoomChannel] = {}
        self.admission = Admission()

    def room(self, room_id: int) -> RoomChannel:
        channel = self.rooms.get(room_id)
        if channel is None:
            channel = self.rooms[room_id] = RoomChannel(
                room_id,
                hub=self.hub,
                presence=self.presence,
                on_idle=self._close_idle,
                on_room_changed=self.admission.forget_room,
            )
        return channel

    def get(self, room_id: int) -> RoomChannel | None:
        return self.rooms.get(room_id)

    def discard(self, channel: RoomChannel) -> None:
        """Forget ``channel`` and everything kept for its room in this process."""
        if self.rooms.get(channel.room_id) is channel:
            del self.rooms[channel.room_id]
            self.admission.forget_room(channel.room_id)
            self.hub.forget_room(channel.room_id)

    async def _close_idle(self, channel: RoomChannel) -> None:
        self.discard(channel)
        await channel.aclose()

    async def aclose(self) -> None:
        rooms = list(self.rooms.values())
        self.rooms.clear()
        for channel in rooms:
            await channel.aclose()


def get_fanout() -> Fanout:
    """This event loop's fan-out, a part of its runtime (made after the hub and presence
    it uses, so it is closed before them)."""
    return get_runtime().part(Fanout, lambda runtime: Fanout(get_hub(), get_presence()))


async def admit(*, slug: str, user: Any) -> Any:
    """The room ``slug`` for a member about to subscribe; NotFound / Forbidden otherwise.

    A burst of handshakes into a room open here shares the room channel's member list
    (refreshed every resync interval, and by the first handshake after a quiet spell) and
    its Room row, instead of two queries and a thread hop each; anyone not in the list is
    checked against the database, so a new member is never refused.
    """
    from chat import selectors

    fanout = get_fanout()
    known = fanout.admission.known(slug)
    channel = fanout.get(known.pk) if known is not None else None
    if channel is not None:
        room = await fanout.admission.refreshed(slug, channel.access)
        if room is not None and channel.access.knows_member(user.pk):
            return room
    began = time.monotonic()
    room = await database_sync_to_async(selectors.room_get_for_member)(slug=slug, user=user)
    stamp(room, began)
    fanout.admission.remember(slug, room)
    return room


class Subscription:
    """One subscriber's life in a room, the same for every transport: subscribe, head,
    presence, ``hello``, replay, live, leave.

    ``open`` registers the subscriber (from then on every event reaches it) and returns
    the ``hello`` event; the transport sends it, then calls ``start``, which replays what
    followed ``after`` and goes live. ``close`` leaves (idempotent; call it in ``finally``).
    A store outage during ``open`` raises ``StoreUnavailable`` with nothing registered.
    """

    def __init__(self, *, room: Any, sub: Subscriber, after: int | None) -> None:
        self.room = room
        self.sub = sub
        self.after = after
        self.head = 0
        self.channel: RoomChannel | None = None
        self._joined = False

    async def prepare(self) -> RoomChannel:
        """Make sure this process is subscribed to the room; ``StoreUnavailable`` when the
        store cannot give the room's head (nothing is registered then)."""
        if self.channel is not None:
            return self.channel  # prepared already (the SSE view prepares before ``open``)
        fanout = get_fanout()
        channel = fanout.room(self.room.pk)
        warm = channel.is_open()
        try:
            await channel.ready()
        except BaseException:
            fanout.discard(channel)
            raise
        if warm:
            # Open here already: that proves nothing about the store now. One read of the
            # head, so an outage refuses this handshake as it refuses a cold room's (1013 /
            # 503) rather than a hello and then silence; the room stays open for the others.
            await channel.check_store()
        self.channel = channel
        return channel

    async def open(self) -> dict[str, Any]:
        from chat.serializers import room_to_dict

        channel = await self.prepare()
        self.head = channel.add(self.sub)
        self.sub.last_seq = self.head
        began = read_at(self.room)
        if began is not None and began <= channel.room_changed_at:
            # A `room` event passed since this row was read: the hello's room must not be
            # older than its head. (Later events reach the subscriber live.)
            fresh = await database_sync_to_async(access.room_row)(self.room.pk)
            if fresh is not None:
                self.room = fresh
        presence = get_presence()
        came_online = await presence.join(self.room.pk, self.sub.username)
        self._joined = True
        if came_online:
            channel.announcer.changed()
        return {
            "type": "hello",
            "room": room_to_dict(self.room, head=self.head),
            "you": self.sub.username,
            "head": self.head,
            **online_fields_with(await presence.online_recent(self.room.pk), self.sub.username),
        }

    async def open_unannounced(self) -> int:
        """Register the subscriber like ``open``, but with no ``hello`` and no presence:
        a program following one reply (the OpenAI-compatible API's streams,
        chat/openai_api/) is not a member coming online. Returns the head it starts from;
        set ``after`` before ``start``."""
        channel = await self.prepare()
        self.head = channel.add(self.sub)
        self.sub.last_seq = self.head
        return self.head

    async def start(self) -> None:
        assert self.channel is not None
        await self.channel.catch_up(self.sub, self.after, self.head)

    def set_audio(self, enabled: bool) -> None:
        """Opt this subscriber in or out of the room's audio."""
        if self.channel is not None:
            self.channel.set_audio(self.sub, enabled)
        else:
            self.sub.audio = enabled

    async def close(self) -> None:
        self.sub.ended = True
        channel, self.channel = self.channel, None
        if channel is None:
            return
        channel.remove(self.sub)
        if self._joined:
            self._joined = False
            with contextlib.suppress(Exception):
                if await get_presence().leave(self.room.pk, self.sub.username):
                    channel.announcer.changed()
