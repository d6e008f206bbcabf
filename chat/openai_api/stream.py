"""The room's events about one reply, from a seq on: what a streamed chat completion or
response is made of.

Not a second delivery path: a ``ReplySubscriber`` is one more subscriber of the room's
channel (chat/events/delivery/), opened through the same ``Subscription`` as a WebSocket or
an SSE stream (without ``hello`` or presence: a program following a reply is not a member
coming online), so its ordering, gap filling, replay after a seq and bounded buffer are
theirs. It keeps only the events of its reply: the reply's ``message`` event, its
``delta`` and ``generation`` events, and a ``snapshot`` (the room could not replay).

``ReplyEvents`` yields them until the reply's terminal ``generation`` event; when the
reply had already ended at or before the resume point it yields nothing and ends (read
with the room's snapshot rule, ``events.room_message_at``). Closing it leaves the room;
the reply itself goes on (members are watching it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from accounts.auth import token_id_of
from chat import events
from chat import redis as redis_conn
from chat.errors import Busy
from chat.events.delivery import Subscriber, Subscription
from chat.events.frames import Frame
from chat.models import TERMINAL_STATUSES, Room
from chat.serializers import MessageDict

PING = "ping"  # what ReplyEvents yields when the stream has been quiet a while


class Cut(Exception):
    """The room ended this stream (too slow a reader, or access revoked)."""


class ReplySubscriber(Subscriber):
    """Keeps the frames about one reply in a bounded queue (``PARLEY_WS_MAX_BUFFER``
    bytes, as every subscriber's: past it the room cuts it and the client resumes)."""

    kind = "reply"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.message_id = ""  # set before the subscription starts (a send's reply)
        self.queue: deque[Frame] = deque()
        self.queued = 0
        self.wake = asyncio.Event()
        self.cut_reason: str | None = None

    def concerns(self, frame: Frame) -> bool:
        event = frame.event
        if event is None:
            return False
        kind = frame.type
        if kind in ("delta", "generation"):
            return bool(event.get("message_id") == self.message_id)
        if kind == "message":
            return bool(event["message"]["id"] == self.message_id)
        return kind == "snapshot"

    async def write(self, frame: Frame) -> bool:
        if self.concerns(frame):
            self.queue.append(frame)
            self.queued += frame.size
            if self.queued > settings.PARLEY_WS_MAX_BUFFER:
                return False
        self.wake.set()  # its last seq moved on either way
        return True

    async def end(self, code: int, reason: str) -> None:
        self.cut_reason = reason
        self.wake.set()


class ReplyEvents:
    """Open (``await open()``) before the send that makes the reply, or to resume one;
    then ``follow`` it; ``close`` in a ``finally``."""

    def __init__(self, *, room: Room, user: Any) -> None:
        self.sub = ReplySubscriber(
            user_id=user.pk, username=user.get_username(), token_id=token_id_of(user)
        )
        self.subscription = Subscription(room=room, sub=self.sub, after=None)
        self.room = room
        self.head = 0

    async def open(self) -> int:
        """Subscribe: every event of the room after the head returned reaches this stream."""
        try:
            self.head = await self.subscription.open_unannounced()
        except (events.StoreUnavailable, *redis_conn.UNAVAILABLE) as exc:
            await self.subscription.close()
            raise Busy("the server is reconnecting to its event store; try again shortly") from exc
        return self.head

    async def state_now(self, message_id: str) -> tuple[int, MessageDict | None]:
        """The reply exactly as it stood at one seq at or after the head (resuming)."""
        return await events.room_message_at(room_id=self.room.pk, message_id=message_id)

    async def follow(
        self, message_id: str, *, after: int, ended_by: int | None = None
    ) -> AsyncIterator[dict[str, Any] | str]:
        """The reply's events after seq ``after``, ending with its terminal ``generation``
        event. ``ended_by``: a seq at which the reply was known to be over already, so
        when nothing after ``after`` ends it by then, it ended at or before ``after``.
        Yields ``PING`` when nothing came for ``PARLEY_OPENAI_PING_INTERVAL``."""
        self.sub.message_id = message_id
        self.subscription.after = after
        await self.subscription.start()
        sub = self.sub
        while True:
            while sub.queue:
                frame = sub.queue.popleft()
                sub.queued -= frame.size
                assert frame.event is not None
                event = dict(frame.event)
                yield event
                if event["type"] == "generation" and event["state"] in TERMINAL_STATUSES:
                    return
            if sub.cut_reason is not None or sub.ended:
                raise Cut(sub.cut_reason or "the stream was closed")
            if ended_by is not None and sub.last_seq >= ended_by and not sub.catching_up:
                return
            sub.wake.clear()
            try:
                async with asyncio.timeout(settings.PARLEY_OPENAI_PING_INTERVAL):
                    await sub.wake.wait()
            except TimeoutError:
                yield PING

    async def close(self) -> None:
        await self.subscription.close()


def is_terminal(message: MessageDict | None) -> bool:
    return message is not None and message["status"] in TERMINAL_STATUSES
