"""Delivered and replayed: each process receives a room's events once and hands them on.

The route of a durable event, top to bottom (docs/architecture.md):

1. *Born and stored* in ``EventHub.emit`` (``chat/events/__init__.py``): the store gives it
   the room's next seq and records it in the replay log; one ``group_send`` publishes it.
2. *Received once per process*: a ``RoomChannel`` is the process's one subscription to a
   room's channel-layer group. Its receive loop takes each event once, keeps the room's
   stream gap-free (a seq past a gap is preceded by the missing events, read from the log
   once for the whole process, or by one ``snapshot``) and encodes it once (``Frame``).
3. *Delivered* to each local ``Subscriber`` (a WebSocket or an SSE response): per member
   that is a seq comparison and a write into a bounded outbound buffer. No decode, no
   ``json.dumps``, no thread hop, no scan over other channels, no channel-layer message
   per member.
4. *Replayed*: a subscriber that opens with ``after`` is first given what followed it,
   from the room's recent encoded frames when they reach back that far, else from the
   store's log, else one ``snapshot``; what arrives live meanwhile waits in its backlog
   and is sent after, once.

Why not Channels' own consumer dispatch for room events: it makes a thread-pool hop
(``aclose_old_connections``) before every handler, the in-memory layer scans every channel
on each receive, and each member would decode and re-encode the event. Those are fine for
one chat message and ruinous for a token to 500 members (STYLE.md "Hot paths"). The
guarantees the consumer path kept are kept here and tested in tests/chat/test_delivery.py:
strictly increasing seq, no gap, no duplicate, resume with ``after``.

Timers are per room, not per connection: one task per ``RoomChannel`` checks the room's
head (a lost last event), re-checks every subscriber's access (revoked tokens, removed
members, deactivated users), pings SSE responses, and closes the channel once it has been
empty for a while. Presence changes are broadcast at most once per debounce interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from chat.errors import ParleyError
from chat.events.frames import SSE_PING, Frame
from config.daphne_patches import abort_response, write_chunk

logger = logging.getLogger(__name__)

# Close codes a subscription can end with (PROTOCOL.md section 5).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_MEMBER = 4403
CLOSE_TOO_SLOW = 4408


class Subscriber:
    """One connection's view of a room: the last seq it was sent, its outbound buffer.

    ``offer`` is the whole per-member work of an event; ``write`` puts a frame in the
    transport's bounded buffer; ``cut`` ends the connection from the server's side.
    """

    kind = "subscriber"

    def __init__(
        self, *, user_id: int, username: str, token_id: int | None, audio: bool = False
    ) -> None:
        self.id = uuid.uuid4().hex
        self.user_id = user_id
        self.username = username
        self.token_id = token_id
        self.audio = audio
        self.room: RoomChannel | None = None
        self.last_seq = 0
        # While catching up (replaying after ``after``), frames arriving live wait here,
        # in order, and are sent once the replay is done.
        self.catching_up = True
        self.backlog: deque[Frame] = deque()
        self.backlog_bytes = 0
        self.ended = False

    async def offer(self, frame: Frame) -> None:
        """A frame from the room: durable ones once each, in seq order (the room keeps its
        stream gap-free), live ones as they come."""
        if self.ended:
            return
        if self.catching_up:
            self.backlog.append(frame)
            self.backlog_bytes += frame.size
            if self.backlog_bytes > settings.PARLEY_WS_MAX_BUFFER:
                await self.cut(CLOSE_TOO_SLOW, "too slow; reconnect with after")
            return
        seq = frame.seq
        if seq is not None:
            if seq <= self.last_seq:
                return
            self.last_seq = seq
        await self.write(frame)

    async def cut(self, code: int, reason: str) -> None:
        """End the connection from the server's side (once): slow, or access revoked."""
        if self.ended:
            return
        self.ended = True
        if self.room is not None:
            self.room.remove(self)
        self.backlog.clear()
        await self.end(code, reason)

    async def write(self, frame: Frame) -> None:
        raise NotImplementedError

    async def end(self, code: int, reason: str) -> None:
        raise NotImplementedError


class WebSocketSubscriber(Subscriber):
    """Writes through the connection's ASGI ``send``: under daphne, the prepared frame
    goes into the socket's buffer, bounded by config/daphne_patches.py (4408)."""

    kind = "ws"

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]], **kw: Any) -> None:
        super().__init__(**kw)
        self._send = send

    async def write(self, frame: Frame) -> None:
        await self._send(frame.ws)

    async def end(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code})


class SseSubscriber(Subscriber):
    """An SSE response. Under daphne, once its body has started, frames go straight to
    its socket from the room's fan-out loop. Otherwise (before that, another server, an
    HTTP/1.0 client) they wait in a buffer until the response's generator takes them
    (all that waits, in one write). Either way, past ``PARLEY_WS_MAX_BUFFER`` unsent
    bytes the reader is too slow: the response ends and the client resumes with
    Last-Event-ID."""

    kind = "sse"

    def __init__(self, *, request: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.buffer: deque[bytes] = deque()
        self.buffered = 0
        self.wake = asyncio.Event()
        # Under daphne, the response's own Twisted request (config/daphne_patches.py). Once
        # the body has started and nothing waits in ``buffer``, frames are written to it
        # straight from the room's fan-out loop, as a WebSocket member's are: no task
        # switch and no trip through Django's response iteration per member per frame.
        self._request = request
        self.direct: Any = None

    async def write(self, frame: Frame) -> None:
        if self.direct is not None:
            unsent = write_chunk(self.direct, frame.sse_chunk)
            if unsent is not None:
                if unsent > settings.PARLEY_WS_MAX_BUFFER:
                    logger.warning("ending a streamed response that fell %d bytes behind", unsent)
                    abort_response(self.direct)
                    await self.cut(CLOSE_TOO_SLOW, "too slow; reconnect with Last-Event-ID")
                return
            # The response is over (the client left): back to the buffer, which the
            # generator drops when Django cancels it.
            self.direct = self._request = None
        data = frame.sse
        self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered > settings.PARLEY_WS_MAX_BUFFER:
            await self.cut(CLOSE_TOO_SLOW, "too slow; reconnect with Last-Event-ID")
            return
        self.wake.set()

    async def end(self, code: int, reason: str) -> None:
        self.buffer.clear()
        self.buffered = 0
        if code != CLOSE_TOO_SLOW:
            error = "unauthorized" if code == CLOSE_UNAUTHENTICATED else "forbidden"
            self.buffer.append(Frame({"type": "error", "code": error, "detail": reason}).sse)
        self.wake.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        """What to write next, until the subscriber ends (or the client goes away)."""
        while True:
            if self.buffer:
                data = b"".join(self.buffer)
                self.buffer.clear()
                self.buffered = 0
                yield data
                continue
            if self.ended:
                return
            if self.direct is None and self._request is not None:
                # Everything yielded so far has reached daphne (the generator only runs
                # again once Django has sent the last chunk), so a direct write now comes
                # after it on the socket.
                self.direct = self._request
            self.wake.clear()
            await self.wake.wait()


class RoomChannel:
    """This process's one subscription to a room, shared by all its local subscribers."""

    def __init__(self, fanout: Fanout, room_id: int) -> None:
        self.fanout = fanout
        self.room_id = room_id
        self.subscribers: dict[str, Subscriber] = {}
        self.listeners: dict[str, Subscriber] = {}  # those that opted in to audio
        self.sse: dict[str, Subscriber] = {}
        # The subscribers by user and by token, for the access checks.
        self.by_user: dict[int, dict[str, Subscriber]] = {}
        self.by_token: dict[int, dict[str, Subscriber]] = {}
        # The last durable seq handed to subscribers: the room's stream is gap-free up to it.
        self.last_seq = 0
        # The most recent durable frames, contiguous and ending at ``last_seq``, so that a
        # reconnect storm replays from memory instead of the store (and encodes nothing).
        self.recent: deque[Frame] = deque(maxlen=settings.PARLEY_FANOUT_RECENT_FRAMES)
        # Set each time a durable frame has been written to every local subscriber: the
        # reply runner's signal that the room's outbound is idle (adaptive coalescing).
        self.progress = asyncio.Event()
        # Members of the room with an active account, as last read: admission checks a
        # burst of handshakes against it instead of one query each.
        self.members: set[int] = set()
        self.members_at = 0.0
        self.channel = ""
        self.empty_since: float | None = None
        self._behind_at: int | None = None
        self._presence_due: asyncio.TimerHandle | None = None
        self._presence_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started: asyncio.Task[None] | None = None

    # --- life -------------------------------------------------------------------------

    async def ready(self) -> None:
        if self._started is None:
            self._started = asyncio.create_task(self._start(), name=f"room-{self.room_id}")
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        from chat import redis as redis_conn
        from chat.events import StoreUnavailable, get_hub, group_name

        layer = get_channel_layer()
        assert layer is not None
        try:
            self.channel = await layer.new_channel("parley.room.")
            await layer.group_add(group_name(self.room_id), self.channel)
        except redis_conn.UNAVAILABLE as exc:  # the pub/sub layer cannot reach Redis
            raise StoreUnavailable(str(exc)) from exc
        try:
            # Subscribed first: whatever follows this head arrives live.
            self.last_seq = await get_hub().head(self.room_id)
        except BaseException:
            with contextlib.suppress(Exception):
                await layer.group_discard(group_name(self.room_id), self.channel)
            raise
        # The member list first, so a burst of handshakes is admitted without a query each.
        await self.check_access()
        self._tasks = [
            asyncio.create_task(self._receive(), name=f"room-{self.room_id}-receive"),
            asyncio.create_task(self._tick(), name=f"room-{self.room_id}-timer"),
        ]

    async def aclose(self) -> None:
        from chat.events import group_name

        for task in self._tasks:
            task.cancel()
        if self._presence_task is not None:
            self._presence_task.cancel()
        if self._presence_due is not None:
            self._presence_due.cancel()
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        layer = get_channel_layer()
        if layer is not None and self.channel:
            with contextlib.suppress(Exception):
                await layer.group_discard(group_name(self.room_id), self.channel)

    # --- subscribers ------------------------------------------------------------------

    def add(self, sub: Subscriber) -> int:
        """Register ``sub`` (catching up); returns the head it starts from. Synchronous, so
        every frame fanned out from now on reaches its backlog."""
        self.subscribers[sub.id] = sub
        self.by_user.setdefault(sub.user_id, {})[sub.id] = sub
        if sub.token_id is not None:
            self.by_token.setdefault(sub.token_id, {})[sub.id] = sub
        sub.room = self
        if sub.audio:
            self.listeners[sub.id] = sub
        if sub.kind == "sse":
            self.sse[sub.id] = sub
        self.empty_since = None
        return self.last_seq

    def remove(self, sub: Subscriber) -> None:
        if self.subscribers.pop(sub.id, None) is not None:
            _unindex(self.by_user, sub.user_id, sub.id)
            if sub.token_id is not None:
                _unindex(self.by_token, sub.token_id, sub.id)
        self.listeners.pop(sub.id, None)
        self.sse.pop(sub.id, None)
        if not self.subscribers:
            self.empty_since = time.monotonic()

    def set_audio(self, sub: Subscriber, enabled: bool) -> None:
        sub.audio = enabled
        if enabled and sub.id in self.subscribers:
            self.listeners[sub.id] = sub
        else:
            self.listeners.pop(sub.id, None)

    async def catch_up(self, sub: Subscriber, after: int | None, head: int) -> None:
        """Replay what followed ``after`` (or nothing, going on live from ``head``), then
        the backlog that arrived meanwhile; the subscriber is live afterwards."""
        sub.last_seq = head if after is None else after
        if after is not None and after != head:
            await self._replay_to(sub)
        while sub.backlog and not sub.ended:
            frame = sub.backlog.popleft()
            sub.backlog_bytes -= frame.size
            if frame.seq is None:
                await sub.write(frame)
                continue
            if frame.seq > sub.last_seq + 1 and frame.type != "snapshot":
                sub.backlog.appendleft(frame)
                sub.backlog_bytes += frame.size
                await self._replay_to(sub)
                continue
            if frame.seq > sub.last_seq:
                sub.last_seq = frame.seq
                await sub.write(frame)
        sub.catching_up = False

    async def _replay_to(self, sub: Subscriber) -> None:
        frames = await self.frames_since(sub.last_seq)
        for frame in frames:
            assert frame.seq is not None
            # A snapshot restarts the stream at its seq, even below a bogus ``after``.
            if frame.seq > sub.last_seq or frame.type == "snapshot":
                sub.last_seq = frame.seq
                await sub.write(frame)

    async def frames_since(self, after: int) -> list[Frame]:
        """Every durable frame after ``after``, or one snapshot when they are not all held."""
        recent = self.recent
        if recent and recent[0].seq is not None and recent[0].seq <= after + 1 <= self.last_seq + 1:
            return [f for f in recent if f.seq is not None and f.seq > after]
        return await self._from_store(after)

    async def _from_store(self, after: int) -> list[Frame]:
        from chat.events import get_hub

        hub = get_hub()
        events = await hub.replay(self.room_id, after)
        if events is None:
            return [Frame(await hub.snapshot(self.room_id))]
        return [Frame(event) for event in events]

    # --- the receive loop: once per process -------------------------------------------

    async def _receive(self) -> None:
        layer = get_channel_layer()
        assert layer is not None
        while True:
            try:
                message = await layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("room %s: receive failed", self.room_id)
                await asyncio.sleep(settings.PARLEY_RESYNC_INTERVAL)
                continue
            try:
                kind = message.get("type")
                if kind == "room.event":
                    await self.durable(message["event"])
                elif kind == "room.live":
                    await self._fan_live(Frame(message["event"]), message.get("exclude"))
                elif kind == "room.audio":
                    if "frame" in message:
                        frame = Frame(None, binary=message["frame"])
                    else:
                        frame = Frame(message["event"])
                    await self._fan_live(frame, None, self.listeners.values())
            except asyncio.CancelledError:
                raise
            except ParleyError as exc:
                logger.warning("room %s: delivery paused: %s", self.room_id, exc)
            except Exception:
                logger.exception("room %s: delivery failed", self.room_id)

    async def durable(self, event: Mapping[str, Any]) -> None:
        seq = event["seq"]
        if seq <= self.last_seq:
            return  # already delivered (replayed by a gap fill, or sent twice)
        if seq > self.last_seq + 1:
            await self._fill_gap()
            if seq <= self.last_seq:
                return
        await self._fan_durable(Frame(event))

    async def _fill_gap(self) -> None:
        """Events are missing before the next one: read them once for the whole process.
        From the store, never the recent frames: those end at ``last_seq``, where the gap
        begins (a restarted Redis whose log lost it answers with a snapshot)."""
        for frame in await self._from_store(self.last_seq):
            await self._fan_durable(frame)

    async def _fan_durable(self, frame: Frame) -> None:
        assert frame.seq is not None
        if frame.type == "snapshot":
            self.recent.clear()  # the stream restarts at the snapshot's seq
        else:
            self.recent.append(frame)
            # Never hold more than the log does: every process answers a resume alike.
            while len(self.recent) > settings.PARLEY_LOG_MAX_EVENTS:
                self.recent.popleft()
        self.last_seq = frame.seq
        for sub in list(self.subscribers.values()):
            try:
                await sub.offer(frame)
            except Exception:
                logger.exception("room %s: a subscriber failed; cutting it", self.room_id)
                self._drop(sub)
        self.progress.set()

    async def _fan_live(
        self, frame: Frame, exclude: str | None, subs: Iterable[Subscriber] | None = None
    ) -> None:
        for sub in list(self.subscribers.values() if subs is None else subs):
            if sub.id == exclude:
                continue
            try:
                await sub.offer(frame)
            except Exception:
                logger.exception("room %s: a subscriber failed; cutting it", self.room_id)
                self._drop(sub)

    def _drop(self, sub: Subscriber) -> None:
        self.remove(sub)
        sub.ended = True

    # --- the room's timer -------------------------------------------------------------

    async def _tick(self) -> None:
        interval = settings.PARLEY_RESYNC_INTERVAL
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + settings.PARLEY_SSE_PING_INTERVAL
        while True:
            await asyncio.sleep(interval)
            if not self.subscribers:
                if (
                    self.empty_since is not None
                    and time.monotonic() - self.empty_since >= settings.PARLEY_ROOM_LINGER
                ):
                    self.fanout.discard(self)
                    await self.aclose()
                    return
                continue
            try:
                await self._check_head()
            except ParleyError:
                pass  # the store is away; the next check will tell
            except Exception:
                logger.exception("room %s: head check failed", self.room_id)
            try:
                await self.check_access()
            except Exception:
                logger.exception("room %s: access check failed", self.room_id)
            if self.sse and loop.time() >= next_ping:
                next_ping = loop.time() + settings.PARLEY_SSE_PING_INTERVAL
                ping = Frame({"type": "ping"})
                ping._sse = SSE_PING
                await self._fan_live(ping, None, self.sse.values())

    async def _check_head(self) -> None:
        """Catch up when the room's head moved on and no event brought it (one read per
        room per process per interval), e.g. a reply's last event lost while Redis
        restarted; behind twice in a row with no progress means lost, not in flight."""
        from chat.events import get_hub

        head = await get_hub().head(self.room_id)
        if head <= self.last_seq:
            self._behind_at = None
        elif self._behind_at == self.last_seq:
            self._behind_at = None
            await self._fill_gap()
        else:
            self._behind_at = self.last_seq

    async def check_access(self) -> None:
        """Close the connections whose access ended: a revoked token or deactivated user
        (4401), or a member removed from the room (4403). Set operations over the room's
        index of users and tokens, so an idle room of thousands costs no Python loop."""
        members, inactive, revoked = await database_sync_to_async(_access)(self.room_id)
        self.members, self.members_at = members, time.monotonic()
        cut: list[tuple[Subscriber, int, str]] = []
        for user_id in inactive & self.by_user.keys():
            cut += [(s, CLOSE_UNAUTHENTICATED, REVOKED) for s in self.by_user[user_id].values()]
        for token_id in revoked & self.by_token.keys():
            cut += [(s, CLOSE_UNAUTHENTICATED, REVOKED) for s in self.by_token[token_id].values()]
        for user_id in self.by_user.keys() - members - inactive:
            cut += [(s, CLOSE_NOT_MEMBER, REMOVED) for s in self.by_user[user_id].values()]
        for sub, code, reason in cut:
            await sub.cut(code, reason)

    def knows_member(self, user_id: int) -> bool:
        """True when ``user_id`` was a member at the last check, a moment ago."""
        fresh = time.monotonic() - self.members_at < settings.PARLEY_RESYNC_INTERVAL * 2
        return fresh and user_id in self.members

    # --- presence ---------------------------------------------------------------------

    def presence_changed(self) -> None:
        """Someone came or went: one ``presence`` event per debounce interval, however
        many joined (a reconnect storm would otherwise send N events to N members)."""
        if self._presence_due is not None:
            return
        loop = asyncio.get_running_loop()
        self._presence_due = loop.call_later(settings.PARLEY_PRESENCE_DEBOUNCE, self._presence_fire)

    def _presence_fire(self) -> None:
        self._presence_due = None
        if self._presence_task is None or self._presence_task.done():
            self._presence_task = asyncio.create_task(self._broadcast_presence())

    async def _broadcast_presence(self) -> None:
        from chat.events import room_live_emit
        from chat.presence import get_presence, presence_event

        try:
            online = await get_presence().online(self.room_id)
            await room_live_emit(room_id=self.room_id, event=presence_event(online))
        except Exception:  # noqa: BLE001 - presence is live-only; the next change retries
            logger.warning("room %s: presence broadcast failed", self.room_id)


REVOKED = "your access was revoked"
REMOVED = "you are no longer a member of this room"


def _access(room_id: int) -> tuple[set[int], set[int], set[int]]:
    """The room's active members, its inactive ones, and its members' revoked tokens.

    Three queries over the room's memberships, none with a parameter per subscriber: an
    idle room of 10,000 pays for one scan of its member ids per interval, not for building
    and binding a 10,000-item IN list (which made this the largest cost of an idle room).
    """
    from accounts.models import ApiToken
    from chat.models import Membership

    in_room = Membership.objects.filter(room_id=room_id)
    members = set(in_room.filter(user__is_active=True).values_list("user_id", flat=True))
    inactive = set(in_room.filter(user__is_active=False).values_list("user_id", flat=True))
    revoked = set(
        ApiToken.objects.filter(
            user__memberships__room_id=room_id, revoked__isnull=False
        ).values_list("pk", flat=True)
    )
    return members, inactive, revoked


def _unindex(index: dict[int, dict[str, Subscriber]], key: int, sub_id: str) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.pop(sub_id, None)
        if not subs:
            del index[key]


class Fanout:
    """The process's (event loop's) room channels."""

    def __init__(self) -> None:
        self.rooms: dict[int, RoomChannel] = {}
        self.slugs: dict[str, tuple[Any, float]] = {}

    def room(self, room_id: int) -> RoomChannel:
        channel = self.rooms.get(room_id)
        if channel is None:
            channel = self.rooms[room_id] = RoomChannel(self, room_id)
        return channel

    def get(self, room_id: int) -> RoomChannel | None:
        return self.rooms.get(room_id)

    def discard(self, channel: RoomChannel) -> None:
        if self.rooms.get(channel.room_id) is channel:
            del self.rooms[channel.room_id]

    async def aclose(self) -> None:
        rooms = list(self.rooms.values())
        self.rooms.clear()
        for channel in rooms:
            await channel.aclose()


_fanouts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Fanout] = weakref.WeakKeyDictionary()


def get_fanout() -> Fanout:
    loop = asyncio.get_running_loop()
    fanout = _fanouts.get(loop)
    if fanout is None:
        fanout = _fanouts[loop] = Fanout()
    return fanout


async def wait_room_drained(
    room_id: int,
    seq: int,
    timeout: float,  # noqa: ASYNC109
    interrupt: asyncio.Event | None = None,
) -> None:
    """Wait (at most ``timeout``, or until ``interrupt`` is set) until this process has
    written the room's events up to ``seq`` to every local subscriber; at once if it has
    no subscriber here."""
    channel = get_fanout().get(room_id)
    if channel is None or not channel.subscribers or channel.last_seq >= seq:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waiters: list[asyncio.Future[Any]] = []
    if interrupt is not None:
        waiters.append(asyncio.ensure_future(interrupt.wait()))
    try:
        while channel.last_seq < seq and not (interrupt is not None and interrupt.is_set()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            channel.progress.clear()
            progress = asyncio.ensure_future(channel.progress.wait())
            try:
                await asyncio.wait(
                    [progress, *waiters], timeout=remaining, return_when="FIRST_COMPLETED"
                )
            finally:
                progress.cancel()
    finally:
        for waiter in waiters:
            waiter.cancel()


async def admit(*, slug: str, user: Any) -> Any:
    """The room ``slug`` for a member about to subscribe; NotFound / Forbidden otherwise.

    A burst of handshakes into one room shares the room channel's member list (refreshed
    every resync interval) and its Room row, instead of two queries and a thread hop each;
    anyone not in the list is checked against the database, so a new member is never
    refused.
    """
    from chat import selectors

    fanout = get_fanout()
    cached = fanout.slugs.get(slug)
    if cached is not None:
        room, at = cached
        channel = fanout.get(room.pk)
        fresh = time.monotonic() - at < settings.PARLEY_RESYNC_INTERVAL * 2
        if fresh and channel is not None and channel.knows_member(user.pk):
            return room
    room = await database_sync_to_async(selectors.room_get_for_member)(slug=slug, user=user)
    fanout.slugs[slug] = (room, time.monotonic())
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
        fanout = get_fanout()
        channel = fanout.room(self.room.pk)
        try:
            await channel.ready()
        except BaseException:
            fanout.discard(channel)
            raise
        return channel

    async def open(self) -> dict[str, Any]:
        from chat.presence import get_presence, online_fields_with
        from chat.serializers import room_to_dict

        channel = await self.prepare()
        self.channel = channel
        self.head = channel.add(self.sub)
        self.sub.last_seq = self.head
        presence = get_presence()
        came_online = await presence.join(self.room.pk, self.sub.username)
        self._joined = True
        if came_online:
            channel.presence_changed()
        return {
            "type": "hello",
            "room": room_to_dict(self.room, head=self.head),
            "you": self.sub.username,
            "head": self.head,
            **online_fields_with(await presence.online_recent(self.room.pk), self.sub.username),
        }

    async def start(self) -> None:
        assert self.channel is not None
        await self.channel.catch_up(self.sub, self.after, self.head)

    async def close(self) -> None:
        from chat.presence import get_presence

        self.sub.ended = True
        channel, self.channel = self.channel, None
        if channel is None:
            return
        channel.remove(self.sub)
        if self._joined:
            self._joined = False
            with contextlib.suppress(Exception):
                if await get_presence().leave(self.room.pk, self.sub.username):
                    channel.presence_changed()
