"""The room channel: this process's one subscription to a room, shared by its members.

Its receive loop takes each event from the channel layer once and

- keeps the room's stream gap-free for everyone at once: an event at or below the last
  seq handed on is dropped; one past a gap is preceded by the missing events, read from
  the log once for the whole process, or by one ``snapshot`` when the log lost them;
- encodes it once (``Frame``) and offers it to every local subscriber;
- remembers the recent frames, so a reconnect storm replays from memory.

It owns the room's registry of subscribers and is the only one to change it: a
subscriber that answers False to an offer (over its bound) is cut here. It owns the drain
signal the reply run paces its deltas by (``drained``), and the parts it delegates to:
access (``RoomAccess``), presence announcements (``PresenceAnnouncer``) and its timer
(``run_room_timer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from chat import redis as redis_conn
from chat.errors import ParleyError
from chat.events import EventHub, StoreUnavailable, group_name
from chat.events.delivery.access import RoomAccess
from chat.events.delivery.announce import PresenceAnnouncer
from chat.events.delivery.subscribers import Subscriber
from chat.events.delivery.timer import run_room_timer
from chat.events.frames import SSE_PING, Frame
from chat.presence import Presence
from core import contract, metrics

logger = logging.getLogger(__name__)


class RoomChannel:
    """This process's one subscription to a room, shared by all its local subscribers."""

    def __init__(
        self,
        room_id: int,
        *,
        hub: EventHub,
        presence: Presence,
        on_idle: Callable[[RoomChannel], Awaitable[None]],
        on_room_changed: Callable[[int], None] | None = None,
    ) -> None:
        self.room_id = room_id
        self.hub = hub
        self.subscribers: dict[str, Subscriber] = {}
        self.listeners: dict[str, Subscriber] = {}  # those that opted in to audio
        self.sse: dict[str, Subscriber] = {}
        self.access = RoomAccess(room_id)
        self.announcer = PresenceAnnouncer(room_id, presence)
        # The last durable seq handed to subscribers: the room's stream is gap-free up to it.
        self.last_seq = 0
        # The most recent durable frames, contiguous and ending at ``last_seq``, so that a
        # reconnect storm replays from memory instead of the store (and encodes nothing).
        self.recent: deque[Frame] = deque(maxlen=settings.PARLEY_FANOUT_RECENT_FRAMES)
        # Set each time a durable frame has been written to every local subscriber: the
        # reply runner's signal that the room's outbound is idle (``drained``).
        self.progress = asyncio.Event()
        self.channel = ""
        self._empty_since: float | None = None
        self._behind_at: int | None = None
        self._on_idle = on_idle
        # Told when a ``room`` event passes, before its seq becomes the head a hello
        # gives: the process's cached Room row is dropped, so no later hello pairs an
        # older room with a newer head (Fanout: Admission.forget_room).
        self._on_room_changed = on_room_changed
        # When a ``room`` event (or a snapshot, which may stand for some) last passed: a
        # Room row read before then may be older than the head a hello would give with
        # it, so the subscription reads it again (Subscription.open).
        self.room_changed_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._started: asyncio.Task[None] | None = None

    # --- life -------------------------------------------------------------------------

    async def ready(self) -> None:
        if self._started is None:
            self._started = asyncio.create_task(self._start(), name=f"room-{self.room_id}")
        await asyncio.shield(self._started)

    def is_open(self) -> bool:
        """Subscribed and running (its start went through)."""
        return bool(self._tasks)

    async def check_store(self) -> None:
        """``StoreUnavailable`` unless the store answers now (one read of the head)."""
        await self.hub.head(self.room_id)

    async def _start(self) -> None:
        layer = get_channel_layer()
        assert layer is not None
        try:
            self.channel = await layer.new_channel("parley.room.")
            await layer.group_add(group_name(self.room_id), self.channel)
        except redis_conn.UNAVAILABLE as exc:  # the pub/sub layer cannot reach Redis
            raise StoreUnavailable(str(exc)) from exc
        try:
            # Subscribed first: whatever follows this head arrives live.
            self.last_seq = await self.hub.head(self.room_id)
        except BaseException:
            with contextlib.suppress(Exception):
                await layer.group_discard(group_name(self.room_id), self.channel)
            raise
        # The member list first, so a burst of handshakes is admitted without a query each.
        await self.check_access()
        self._tasks = [
            asyncio.create_task(self._receive(), name=f"room-{self.room_id}-receive"),
            asyncio.create_task(
                run_room_timer(self, self._idle), name=f"room-{self.room_id}-timer"
            ),
        ]

    async def _idle(self) -> None:
        await self._on_idle(self)

    async def aclose(self) -> None:
        # Called from its own timer when the room went idle: that task is not cancelled
        # (it ends by itself once this returns), or the group would never be left.
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        await self.announcer.aclose()
        await asyncio.gather(*others, return_exceptions=True)
        layer = get_channel_layer()
        if layer is not None and self.channel:
            with contextlib.suppress(Exception):
                await layer.group_discard(group_name(self.room_id), self.channel)

    # --- the registry -----------------------------------------------------------------

    def add(self, sub: Subscriber) -> int:
        """Register ``sub`` (catching up); returns the head it starts from. Synchronous, so
        every frame fanned out from now on reaches its backlog."""
        self.subscribers[sub.id] = sub
        self.access.add(sub)
        if sub.audio:
            self.listeners[sub.id] = sub
        if sub.kind == "sse":
            self.sse[sub.id] = sub
        self._empty_since = None
        return self.last_seq

    def remove(self, sub: Subscriber) -> None:
        if self.subscribers.pop(sub.id, None) is not None:
            self.access.remove(sub)
        self.listeners.pop(sub.id, None)
        self.sse.pop(sub.id, None)
        if not self.subscribers:
            self._empty_since = time.monotonic()

    async def cut(self, sub: Subscriber, code: int, reason: str) -> None:
        """End ``sub`` from the server's side: out of the room, then its transport closed."""
        self.remove(sub)
        await sub.close(code, reason)

    async def cut_too_slow(self, sub: Subscriber) -> None:
        if sub.kind == "sse":  # a WebSocket's 4408 is counted by core/fastpath.py
            metrics.sse_cut()
        await self.cut(sub, contract.TOO_SLOW.code, contract.TOO_SLOW.reason)

    def set_audio(self, sub: Subscriber, enabled: bool) -> None:
        sub.audio = enabled
        if enabled and sub.id in self.subscribers:
            self.listeners[sub.id] = sub
        else:
            self.listeners.pop(sub.id, None)

    def empty_since(self) -> float | None:
        return self._empty_since

    def has_sse(self) -> bool:
        return bool(self.sse)

    # --- replay -----------------------------------------------------------------------

    async def catch_up(self, sub: Subscriber, after: int | None, head: int) -> None:
        """Bring ``sub`` from ``after`` to live (the subscriber owns its catch-up state;
        this room is its source of past frames and cuts it if it falls behind)."""
        if not await sub.catch_up(self.frames_since, after, head) and not sub.ended:
            await self.cut_too_slow(sub)

    async def frames_since(self, after: int) -> list[Frame]:
        """Every durable frame after ``after``, or one snapshot when they are not all held."""
        recent = self.recent
        if recent and recent[0].seq is not None and recent[0].seq <= after + 1 <= self.last_seq + 1:
            metrics.replayed("recent")
            return [f for f in recent if f.seq is not None and f.seq > after]
        return await self._from_store(after)

    async def _from_store(self, after: int) -> list[Frame]:
        events = await self.hub.replay(self.room_id, after)
        if events is None:
            metrics.replayed("snapshot")
            return [Frame(await self.hub.snapshot(self.room_id))]
        metrics.replayed("store")
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
                if kind == contract.LAYER_ROOM_EVENT:
                    received = time.perf_counter()
                    metrics.layer_lag(message.get("at"))
                    await self.durable(message["event"])
                    metrics.fanout_observe(received)
                elif kind == contract.LAYER_ROOM_LIVE:
                    await self._fan_live(Frame(message["event"]), message.get("exclude"))
                elif kind == contract.LAYER_ROOM_AUDIO:
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
        if frame.type in ("room", "snapshot"):
            # A snapshot may stand for room events the log lost.
            self.room_changed_at = time.monotonic()
            if self._on_room_changed is not None:
                self._on_room_changed(self.room_id)
        self.last_seq = frame.seq
        self.hub.saw(self.room_id, frame.seq)
        await self._fan(frame, self.subscribers.values())
        self.progress.set()

    async def _fan_live(
        self, frame: Frame, exclude: str | None, subs: Iterable[Subscriber] | None = None
    ) -> None:
        targets = self.subscribers.values() if subs is None else subs
        if exclude is not None:
            targets = [sub for sub in targets if sub.id != exclude]
        await self._fan(frame, targets)

    async def _fan(self, frame: Frame, subs: Iterable[Subscriber]) -> None:
        """The per-member loop: one offer each (a seq check and a buffered write)."""
        for sub in list(subs):
            try:
                if not await sub.offer(frame):
                    await self.cut_too_slow(sub)
            except Exception:
                logger.exception("room %s: a subscriber failed; cutting it", self.room_id)
                self.remove(sub)
                sub.ended = True

    async def drained(
        self,
        seq: int,
        timeout: float,  # noqa: ASYNC109
        interrupt: asyncio.Event | None = None,
    ) -> None:
        """Wait (at most ``timeout``, or until ``interrupt`` is set) until this process has
        written the room's events up to ``seq`` to every local subscriber; at once if it
        has no subscriber here. The reply run coalesces its deltas by it."""
        if not self.subscribers or self.last_seq >= seq:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiters: list[asyncio.Future[Any]] = []
        if interrupt is not None:
            waiters.append(asyncio.ensure_future(interrupt.wait()))
        try:
            while self.last_seq < seq and not (interrupt is not None and interrupt.is_set()):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                self.progress.clear()
                progress = asyncio.ensure_future(self.progress.wait())
                try:
                    await asyncio.wait(
                        [progress, *waiters], timeout=remaining, return_when="FIRST_COMPLETED"
                    )
                finally:
                    progress.cancel()
        finally:
            for waiter in waiters:
                waiter.cancel()

    # --- what the timer asks for ------------------------------------------------------

    async def check_head(self) -> None:
        """Catch up when the room's head moved on and no event brought it (one read per
        room per process per interval), e.g. a reply's last event lost while Redis
        restarted; behind twice in a row with no progress means lost, not in flight."""
        head = await self.hub.head(self.room_id)
        if head <= self.last_seq:
            self._behind_at = None
        elif self._behind_at == self.last_seq:
            self._behind_at = None
            await self._fill_gap()
        else:
            self._behind_at = self.last_seq

    async def check_access(self) -> None:
        """Close the connections whose access ended (``RoomAccess.check``)."""
        for sub, code, reason in await self.access.check():
            await self.cut(sub, code, reason)

    async def ping_sse(self) -> None:
        ping = Frame({"type": "ping"})
        ping._sse = SSE_PING
        await self._fan(ping, self.sse.values())
