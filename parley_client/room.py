"""A live room session: one connection that reconnects by itself, typed events, actions.

How it keeps the contract's promises for its caller:

- **Exactly once, in order.** Every durable event advances ``last_seq``; after a drop the
  session reconnects with ``after=last_seq`` (``Last-Event-ID`` on SSE), and an event at
  or below ``last_seq`` is never handed on twice. So across any number of drops,
  ``events()`` yields each durable event once, in ``seq`` order; a ``snapshot`` (the
  server could no longer replay) is yielded as a :class:`~parley_client.models.Snapshot`.
- **Backoff with jitter.** Failed reconnects wait ``Backoff.delay(attempt)``: doubling from
  ``initial`` to ``maximum``, each drawn between half and all of it, so a room's members do
  not all come back at the same instant after a server restart. A cut for reading too
  slowly (4408) comes straight back once.
- **Bounded.** Events wait for ``events()`` in a buffer of ``buffer`` events. When it is
  full the session stops reading the socket; the server then cuts it as a slow reader and
  it resumes where it was once the caller reads again. Nothing grows without limit.

Only one task should iterate ``events()``; the actions (``send``, ``pause``, ...) may be
called from any task of the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from parley_client.audio import AudioAssembler, AudioClip
from parley_client.errors import (
    BadRequest,
    ConnectionLost,
    Forbidden,
    NotFound,
    ParleyError,
    ServerError,
    TooLong,
    Unauthorized,
    error_from_body,
)
from parley_client.models import (
    TERMINAL_STATES,
    AudioCancel,
    AudioEnd,
    Delta,
    ErrorEvent,
    Event,
    Generation,
    Hello,
    Message,
    MessageEvent,
    Pong,
    Presence,
    Reconnecting,
    Room,
    RoomEvent,
    Sent,
    Snapshot,
    UnknownEvent,
)
from parley_client.transport import (
    MAX_CLIENT_FRAME,
    Connection,
    HandshakeFailed,
    SSEConnection,
    WebSocketConnection,
)

if TYPE_CHECKING:
    from parley_client.client import Client

logger = logging.getLogger(__name__)

Transport = Literal["websocket", "sse", "auto"]

# How many events may wait for events() before the session stops reading (see above).
DEFAULT_BUFFER = 10_000
# Messages whose state (text, status) the session remembers for send() and wait_reply().
TRACKED_MESSAGES = 1_000
# How long send() waits for its own message event (it survives reconnects meanwhile).
SEND_TIMEOUT = 30.0
# After our message event, the reply placeholder follows at once (docs/protocol.md
# "Objects"): a room
# that should answer but has not announced one within this is taken as not answering.
REPLY_ANNOUNCE_TIMEOUT = 10.0
# How long an action waits for the connection to come back before giving up.
RECONNECT_WAIT = 30.0

# A connection that lasted this long, or delivered a durable event, was healthy: the next
# drop starts the backoff from the beginning. One that died sooner with nothing delivered
# (a server that fails every connection the same way) continues it, so a crash loop is
# retried ever more slowly instead of every half second.
HEALTHY_CONNECTION_SECONDS = 30.0

# Errors after which reconnecting cannot help: the session ends with them.
FATAL = (Unauthorized, Forbidden, NotFound, BadRequest)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial`` doubling (``factor``) up to ``maximum``, with jitter.

    ``max_attempts`` failed reconnects in a row end the session with the last error
    (None: keep trying). The defaults are the room page's (0.5 s doubling to 15 s).
    """

    initial: float = 0.5
    maximum: float = 15.0
    factor: float = 2.0
    max_attempts: int | None = None

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * self.factor**attempt)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not secrecy)


class SessionClosed(ConnectionLost):
    default_code = "closed"
    summary = "the room session is closed"


def new_client_id() -> str:
    return "pc-" + secrets.token_hex(8)


class _Buffer:
    """The bounded queue between the reader and ``events()``; ``close`` ends iteration."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.items: deque[Event] = deque()
        self.cond = asyncio.Condition()
        self.closed = False
        self.error: BaseException | None = None

    async def put(self, event: Event) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: len(self.items) < self.size or self.closed)
            if self.closed:
                return
            self.items.append(event)
            self.cond.notify_all()

    async def get(self) -> Event | None:
        """The next event; None once closed and drained (or raises the closing error)."""
        async with self.cond:
            await self.cond.wait_for(lambda: bool(self.items) or self.closed)
            if self.items:
                event = self.items.popleft()
                self.cond.notify_all()
                return event
            if self.error is not None:
                raise self.error
            return None

    async def close(self, error: BaseException | None = None) -> None:
        async with self.cond:
            if not self.closed:
                self.closed = True
                self.error = error
            self.cond.notify_all()


@dataclass(slots=True)
class _Tracked:
    message: Message
    text: str
    status: str


class RoomSession:
    """A live connection to one room. Get one with ``Client.room(slug)``::

    async with client.room("lobby") as room:
        sent = await room.send("hello @assistant")
        async for event in room.events():
            ...
    """

    def __init__(
        self,
        client: Client,
        slug: str,
        *,
        transport: Transport = "websocket",
        after: int | None = None,
        audio: bool = False,
        buffer: int | None = DEFAULT_BUFFER,
        backoff: Backoff | None = None,
    ) -> None:
        if transport not in ("websocket", "sse", "auto"):
            raise ValueError("transport must be 'websocket', 'sse' or 'auto'")
        self.client = client
        self.slug = slug
        self.requested_transport: Transport = transport
        self.backoff = backoff or client.backoff
        #: The last durable seq delivered; the session resumes after it.
        self.last_seq: int | None = after
        self.audio = audio
        self.fell_back = False
        #: Successful (re)connections so far (1 after the first).
        self.connects = 0
        self.hello: Hello | None = None
        self._room: Room | None = None  # the room as the last hello or `room` event had it
        self.online: tuple[str, ...] = ()
        self._kind: Literal["websocket", "sse", "auto"] = transport
        self._buffer: _Buffer | None = _Buffer(buffer) if buffer else None
        self._conn: Connection | None = None
        self._connected = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._error: ParleyError | None = None
        self._tracked: OrderedDict[str, _Tracked] = OrderedDict()
        self._message_waiters: list[tuple[Callable[[Message], bool], asyncio.Future[Message]]] = []
        self._terminal_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._requests: dict[str, tuple[asyncio.Future[Any], bool]] = {}
        self._pongs: dict[str, asyncio.Future[None]] = {}
        self._audio = AudioAssembler()
        self._audio_waiters: dict[str, list[asyncio.Future[AudioClip]]] = {}
        self._ids = itertools.count(1)
        self._reconnect_now = False
        # Connections in a row that ended before they were healthy (see above).
        self._flaps = 0

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> RoomSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect (typed errors if that fails: no retry on the first attempt)."""
        conn = await self._connect()
        await self._connected_to(conn)
        self._reader = asyncio.create_task(self._run(conn), name=f"parley-room-{self.slug}")

    async def close(self) -> None:
        """Close the connection; ``events()`` ends after what is already buffered."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        self._fail_waiters(SessionClosed())
        if self._buffer is not None:
            await self._buffer.close()

    @property
    def room(self) -> Room:
        """The room as of the last hello or ``room`` event (its name, settings and
        assistants as they are now)."""
        if self._room is not None:
            return self._room
        if self.hello is None:
            raise RuntimeError("the session is not open")
        return self.hello.room

    @property
    def you(self) -> str:
        return self.hello.you if self.hello else ""

    @property
    def transport(self) -> str:
        """The transport in use: ``"websocket"`` or ``"sse"``."""
        return self._conn.name if self._conn else ("sse" if self._kind == "sse" else "websocket")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- events ------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every event from the session's start, durable ones exactly once, in order.

        Starts with a :class:`Hello`; each reconnect adds a :class:`Reconnecting` and a new
        :class:`Hello`. Ends when the session is closed; raises the error that ended it
        (:class:`Unauthorized`, :class:`NotMember`, ...) otherwise.
        """
        if self._buffer is None:
            raise RuntimeError("this session was opened with buffer=0: it keeps no events")
        while True:
            event = await self._buffer.get()
            if event is None:
                return
            yield event

    # --- actions -----------------------------------------------------------------------

    async def send(
        self,
        text: str,
        *,
        client_id: str | None = None,
        ask_ai: bool | None = None,
        voice: str | None = None,
    ) -> Sent:
        """Send a message; returns once its ``message`` event (and the reply's, when the
        room answers it) has arrived on this session, so ``events()`` already holds them."""
        if not isinstance(text, str):
            raise TypeError("text must be a string")
        cid = client_id or new_client_id()
        timeout = SEND_TIMEOUT
        if self.transport == "sse":
            return await self._send_http(text, cid, ask_ai, voice)
        frame: dict[str, Any] = {"action": "send", "text": text, "client_id": cid}
        if ask_ai is not None:
            frame["ask_ai"] = ask_ai
        if voice is not None:
            frame["voice"] = voice
        mine = self._wait_message(
            lambda m: m.client_id == cid and m.role == "user" and m.author == self.you
        )
        request_id = None
        try:
            request_id = await self._request(frame, mine, survives_drop=True)
            message = await asyncio.wait_for(asyncio.shield(mine), timeout)
        except TimeoutError as exc:
            raise ServerError(
                f"the server did not confirm the message within {timeout:g} s", code="timeout"
            ) from exc
        finally:
            self._drop_waiter(mine)
            if request_id is not None:
                self._forget(request_id)
        reply = None
        if self.room.answers(text, ask_ai=bool(ask_ai)):
            reply = await self._reply_announced(message.id)
        return Sent(message, reply)

    async def _send_http(self, text: str, cid: str, ask_ai: bool | None, voice: str | None) -> Sent:
        timeout = SEND_TIMEOUT
        sent = await self.client.send(self.slug, text, client_id=cid, ask_ai=ask_ai, voice=voice)
        # Hand it back once the stream has carried it, as over the WebSocket.
        for message in (sent.message, sent.reply):
            if message is None:
                continue
            mid = message.id
            seen = self._wait_message(lambda m, mid=mid: m.id == mid)  # type: ignore[misc]
            try:
                await asyncio.wait_for(asyncio.shield(seen), timeout)
            except TimeoutError as exc:
                raise ServerError(
                    f"message {mid} did not arrive on the event stream within {timeout:g} s",
                    code="timeout",
                ) from exc
            finally:
                self._drop_waiter(seen)
        return sent

    async def pause(self, message_id: str | Sent) -> None:
        """Pause a reply (a no-op if it is paused already)."""
        await self._control("pause", message_id)

    async def resume(self, message_id: str | Sent) -> None:
        await self._control("resume", message_id)

    async def stop(self, message_id: str | Sent) -> None:
        """Stop a reply: the model request is closed, the text so far is kept."""
        await self._control("stop", message_id)

    async def regenerate(self, message_id: str | Sent) -> None:
        """Extension: ask for another answer to a reply (its id or any version's). The new
        version comes as a ``MessageEvent`` (its ``message.version_of`` is the reply),
        then a ``VersionEvent``, then streams like any reply."""
        mid = _id(message_id)
        if self.transport == "sse":
            await self.client.regenerate(mid)
            return
        await self._acknowledged({"action": "regenerate", "message_id": mid})

    async def pick_version(self, message_id: str) -> None:
        """Extension: make version ``message_id`` its reply's current one (the room hears
        a ``VersionEvent``)."""
        if self.transport == "sse":
            await self.client.pick_version(message_id)
            return
        await self._acknowledged({"action": "pick_version", "message_id": message_id})

    async def edit(self, message_id: str | Sent, text: str) -> None:
        """Extension: edit your own message; every member gets an ``edit`` event."""
        mid = _id(message_id)
        if self.transport == "sse":
            await self.client.edit(mid, text)
            return
        await self._acknowledged({"action": "edit", "message_id": mid, "text": text})

    async def delete(self, message_id: str | Sent) -> None:
        """Extension: delete a message (a reply being written to it is stopped first);
        every member gets a ``delete`` event."""
        mid = _id(message_id)
        if self.transport == "sse":
            await self.client.delete(mid)
            return
        await self._acknowledged({"action": "delete", "message_id": mid})

    async def rate(self, message_id: str | Sent, value: int, comment: str | None = None) -> None:
        """Extension: rate a reply up (1), down (-1), or clear your rating (0)."""
        mid = _id(message_id)
        if self.transport == "sse":
            await self.client.rate(mid, value, comment)
            return
        frame: dict[str, Any] = {"action": "rate", "message_id": mid, "value": value}
        if comment is not None:
            frame["comment"] = comment
        await self._acknowledged(frame)

    async def typing(self) -> None:
        """Tell the others you are typing (WebSocket only; SSE has no way to say it)."""
        if self.transport == "websocket" and self._conn is not None:
            with contextlib.suppress(ConnectionLost):
                await self._conn.send_frame({"action": "typing"})

    async def set_audio(self, enabled: bool) -> None:
        """Opt this session in or out of audio (kept across reconnects)."""
        self.audio = enabled
        if self._conn is None:
            return
        if self._conn.name == "websocket":
            await self._acknowledged({"action": "audio", "enabled": enabled})
        else:  # SSE: audio is part of the URL; reconnect at once with the new one
            self._reconnect_now = True
            await self._conn.close()

    async def ping(self) -> None:
        """Round trip to the server (WebSocket); on SSE a no-op."""
        if self.transport != "websocket":
            return
        await self._ping()

    async def wait_reply(self, message_id: str | Sent) -> Message:
        """Wait until a reply is terminal; returns it as stored, with its whole text.

        Bound the wait with ``asyncio.timeout()`` if you need to."""
        mid = _id(message_id)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._terminal_waiters.setdefault(mid, []).append(done)
        try:
            tracked = self._tracked.get(mid)
            if tracked is None or tracked.status not in TERMINAL_STATES:
                current = await self.client.message(mid)
                if current.is_terminal:
                    return current
                await done
        finally:
            _settle(done)
            waiters = self._terminal_waiters.get(mid, [])
            if done in waiters:
                waiters.remove(done)
            if not waiters:
                self._terminal_waiters.pop(mid, None)
        return await self.client.message(mid)

    async def wait_audio(self, message_id: str | Sent) -> AudioClip:
        """The audio of a reply once its stream has ended (or was cancelled by a stop).

        Needs ``audio=True`` (or ``set_audio(True)``) before the reply is spoken.
        """
        mid = _id(message_id)
        clip = self._audio.finished.get(mid)
        if clip is not None:
            return clip
        done: asyncio.Future[AudioClip] = asyncio.get_running_loop().create_future()
        self._audio_waiters.setdefault(mid, []).append(done)
        try:
            return await done
        finally:
            _settle(done)
            waiters = self._audio_waiters.get(mid, [])
            if done in waiters:
                waiters.remove(done)
            if not waiters:
                self._audio_waiters.pop(mid, None)

    def reply_text(self, message_id: str) -> str | None:
        """The text of a message as this session has seen it (None if not tracked)."""
        tracked = self._tracked.get(message_id)
        return tracked.text if tracked else None

    def reply_status(self, message_id: str) -> str | None:
        tracked = self._tracked.get(message_id)
        return tracked.status if tracked else None

    # --- connecting ----------------------------------------------------------------------

    async def _connect(self) -> Connection:
        client = self.client
        if self._kind in ("websocket", "auto"):
            try:
                return await WebSocketConnection.open(
                    client.url,
                    self.slug,
                    token=client.token,
                    after=self.last_seq,
                    open_timeout=client.timeout,
                    ping_interval=client.ping_interval,
                )
            except HandshakeFailed as exc:
                if self._kind != "auto":
                    raise
                logger.info("room %s: %s; falling back to SSE", self.slug, exc)
                self._kind = "sse"
                self.fell_back = True
        return await SSEConnection.open(
            client.http,
            self.slug,
            after=self.last_seq,
            audio=self.audio,
            connect_timeout=client.timeout,
        )

    async def _connected_to(self, conn: Connection) -> None:
        self._conn = conn
        if self._kind == "auto":  # the WebSocket works here: keep to it
            self._kind = "websocket"
        hello = conn.hello
        self.hello = hello
        self._room = hello.room
        self.online = hello.online
        if self.last_seq is None:
            self.last_seq = hello.head  # live from head: resume from there after a drop
        self.connects += 1
        if conn.name == "websocket" and self.audio:
            with contextlib.suppress(ConnectionLost):  # the reader will notice the drop
                await conn.send_frame({"action": "audio", "enabled": True})
        self._connected.set()
        await self._emit(hello)

    async def _run(self, conn: Connection) -> None:
        """Read events; on a drop, reconnect with backoff and go on after ``last_seq``."""
        try:
            while True:
                started, start_seq = time.monotonic(), self.last_seq
                try:
                    async for event in conn.events():
                        await self._dispatch(event)
                    reason: ParleyError = ConnectionLost()
                except FATAL as exc:
                    await self._end(exc)
                    return
                except ParleyError as exc:
                    reason = exc
                self._connected.clear()
                self._conn = None
                with contextlib.suppress(Exception):
                    await conn.close()
                self._fail_inflight(reason)
                healthy = time.monotonic() - started >= HEALTHY_CONNECTION_SECONDS
                self._flaps = 0 if healthy or self.last_seq != start_seq else self._flaps + 1
                logger.info("room %s: connection lost (%s); reconnecting", self.slug, reason)
                next_conn = await self._reconnect(reason)
                if next_conn is None:
                    return
                conn = next_conn
                await self._connected_to(conn)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        except Exception as exc:  # a bug here must end the session visibly, not silently
            logger.exception("room %s: the session failed", self.slug)
            await self._end(ParleyError(f"the room session failed: {exc!r}"))

    async def _reconnect(self, reason: ParleyError) -> Connection | None:
        attempt = 0
        while True:
            limit = self.backoff.max_attempts
            if limit is not None and attempt >= limit:
                await self._end(reason)
                return None
            first = attempt == 0 and not self._flaps
            if self._reconnect_now or (first and reason.code == "slow_reader"):
                delay = 0.0
            else:
                delay = self.backoff.delay(attempt + self._flaps)
            self._reconnect_now = False
            attempt += 1
            await self._emit(Reconnecting(reason, attempt, delay, self.last_seq))
            await asyncio.sleep(delay)
            try:
                return await self._connect()
            except FATAL as exc:
                await self._end(exc)
                return None
            except ParleyError as exc:
                reason = exc

    async def _end(self, error: ParleyError) -> None:
        self._error = error
        self._connected.clear()
        self._fail_waiters(error)
        if self._buffer is not None:
            await self._buffer.close(error)

    async def _emit(self, event: Event) -> None:
        if self._buffer is not None:
            await self._buffer.put(event)

    # --- incoming ------------------------------------------------------------------------

    async def _dispatch(self, event: Event) -> None:
        seq = getattr(event, "seq", None)
        if isinstance(seq, int):
            if isinstance(event, Snapshot):
                # The room as of seq: go on from there, even below a resume point the
                # server never issued (else every later event would look seen).
                self.last_seq = seq
            else:
                if self.last_seq is not None and seq <= self.last_seq:
                    return  # seen already (replay and live overlapped)
                self.last_seq = seq
        if isinstance(event, MessageEvent):
            self._track(event.message)
        elif isinstance(event, Delta):
            tracked = self._tracked.get(event.message_id)
            if tracked is not None:
                tracked.text += event.text
        elif isinstance(event, Generation):
            tracked = self._tracked.get(event.message_id)
            if tracked is not None:
                tracked.status = event.state
            if event.is_terminal:
                self._resolve_terminal(event.message_id)
        elif isinstance(event, Snapshot):
            for message in event.messages:
                self._track(message)
                if message.is_terminal:
                    self._resolve_terminal(message.id)
        elif isinstance(event, RoomEvent):
            self._room = event.room
        elif isinstance(event, Presence):
            self.online = event.online
        elif isinstance(event, ErrorEvent):
            request = self._requests.pop(str(event.id), None) if event.id is not None else None
            if request is not None:
                if not request[0].done():
                    request[0].set_exception(error_from_body(event.raw, room_scope=False))
                return
        elif isinstance(event, Pong):
            pong = self._pongs.pop(str(event.id), None)
            if pong is not None:
                if not pong.done():
                    pong.set_result(None)
                return
        elif isinstance(event, UnknownEvent):
            pass
        else:
            event = self._audio.feed(event)
            if isinstance(event, AudioEnd | AudioCancel) and event.message_id:
                clip = self._audio.finished.get(event.message_id)
                for waiter in self._audio_waiters.pop(event.message_id, []):
                    if clip is not None and not waiter.done():
                        waiter.set_result(clip)
        await self._emit(event)

    def _track(self, message: Message) -> None:
        self._tracked[message.id] = _Tracked(message, message.text, message.status)
        self._tracked.move_to_end(message.id)
        while len(self._tracked) > TRACKED_MESSAGES:
            self._tracked.popitem(last=False)
        for predicate, future in list(self._message_waiters):
            if not future.done() and predicate(message):
                future.set_result(message)

    def _resolve_terminal(self, message_id: str) -> None:
        for waiter in self._terminal_waiters.get(message_id, []):
            if not waiter.done():
                waiter.set_result(None)

    # --- waiting ---------------------------------------------------------------------------

    def _wait_message(self, predicate: Callable[[Message], bool]) -> asyncio.Future[Message]:
        """A future for the first message (already seen, or to come) matching ``predicate``."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        for tracked in reversed(self._tracked.values()):
            if predicate(tracked.message):
                future.set_result(tracked.message)
                return future
        self._message_waiters.append((predicate, future))
        return future

    def _drop_waiter(self, future: asyncio.Future[Message]) -> None:
        self._message_waiters = [(p, f) for p, f in self._message_waiters if f is not future]

    async def _reply_announced(self, message_id: str) -> Message | None:
        placeholder = self._wait_message(
            lambda m: m.role == "assistant" and m.reply_to == message_id
        )
        try:
            return await asyncio.wait_for(asyncio.shield(placeholder), REPLY_ANNOUNCE_TIMEOUT)
        except TimeoutError:
            logger.warning("room %s: no reply was announced for message %s", self.slug, message_id)
            return None
        finally:
            self._drop_waiter(placeholder)

    async def _live(self) -> Connection:
        """The current connection, waiting (bounded) for a reconnect if there is none."""
        if self._closed:
            raise SessionClosed()
        if self._error is not None:
            raise self._error
        if self._conn is None or not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), RECONNECT_WAIT)
            except TimeoutError as exc:
                raise ConnectionLost(f"not connected to the room for {RECONNECT_WAIT:g} s") from exc
        if self._error is not None:
            raise self._error
        assert self._conn is not None
        return self._conn

    async def _request(
        self,
        frame: dict[str, Any],
        outcome: asyncio.Future[Any] | None,
        *,
        survives_drop: bool = False,
    ) -> str:
        """Send a WebSocket frame with a fresh id; an ``error`` answering it fails
        ``outcome``. Returns the id (the caller forgets it with ``_forget``).

        A frame that could not go out because the connection dropped is sent again on the
        next connection (it never reached the server). ``survives_drop``: a drop does not
        fail ``outcome`` (a send, whose message event a replay will still bring).
        """
        request_id = f"r{next(self._ids)}"
        frame = {**frame, "id": request_id}
        if len(json.dumps(frame).encode()) > MAX_CLIENT_FRAME:
            raise TooLong(f"the frame is over the contract's {MAX_CLIENT_FRAME} bytes")
        if outcome is not None:
            self._requests[request_id] = (outcome, survives_drop)
        try:
            for _ in range(3):
                conn = await self._live()
                try:
                    await conn.send_frame(frame)
                    return request_id
                except ConnectionLost:
                    self._connected.clear()
            raise ConnectionLost("could not send: the connection keeps dropping")
        except BaseException:
            self._forget(request_id)
            raise

    def _forget(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    async def _ping(self) -> None:
        ping_id = f"p{next(self._ids)}"
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs[ping_id] = pong
        try:
            conn = await self._live()
            await conn.send_frame({"action": "ping", "id": ping_id})
            await pong
        finally:
            self._pongs.pop(ping_id, None)

    async def _control(self, action: str, message_id: str | Sent) -> None:
        mid = _id(message_id)
        if self.transport == "sse":
            await self.client.control(action, mid)
            return
        await self._acknowledged({"action": action, "message_id": mid})

    async def _acknowledged(self, frame: dict[str, Any]) -> None:
        """Send a frame the server does not answer unless it fails; raise its error."""
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request_id = await self._request(frame, outcome)
        try:
            # No frame acknowledges a control; errors come before the answer to a later
            # ping on the same connection, so the pong says "accepted" (or the error came).
            await self._ping()
        except BaseException:
            if outcome.done():
                outcome.exception()  # the ping's error is the one to raise; mark it seen
            raise
        finally:
            self._forget(request_id)
        if outcome.done():
            outcome.result()
        else:
            outcome.cancel()

    def _fail_inflight(self, error: ParleyError, *, everything: bool = False) -> None:
        """A dropped connection fails what only it could answer (pings, control errors)."""
        for pong in self._pongs.values():
            if not pong.done():
                pong.set_exception(error)
        self._pongs.clear()
        for request_id, (request, survives) in list(self._requests.items()):
            if survives and not everything:
                continue
            if not request.done():
                request.set_exception(error)
            del self._requests[request_id]

    def _fail_waiters(self, error: ParleyError) -> None:
        self._fail_inflight(error, everything=True)
        for _, future in self._message_waiters:
            if not future.done():
                future.set_exception(error)
        self._message_waiters.clear()
        for waiters in self._terminal_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
        for audio_waiters in self._audio_waiters.values():
            for audio_waiter in audio_waiters:
                if not audio_waiter.done():
                    audio_waiter.set_exception(error)


def _settle(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen when its waiter left early (no asyncio warning)."""
    if future.done() and not future.cancelled():
        future.exception()


def _id(message_id: str | Sent | Message) -> str:
    if isinstance(message_id, Sent | Message):
        return message_id.id
    return str(message_id)
