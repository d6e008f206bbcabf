"""Subscribers: one connection's view of a room, and the transports' adapters.

A ``Subscriber`` owns its whole delivery state: the last seq it was sent, and while it
catches up (a replay after ``after``) the backlog of what arrived live meanwhile. The
room channel hands it frames (``offer``) and a source of past frames (``catch_up``); the
subscriber answers False when its transport fell too far behind, and the room channel,
which owns the room's registry, cuts it. Nothing here reaches back into the room.

The adapters write through a transport's bounded buffer: a WebSocket's through its ASGI
``send`` (under daphne, the prepared frame straight into the socket, bounded by
core/fastpath.py: 4408), an SSE response's straight to its socket once its body has
started under daphne, otherwise through a byte-counted queue its generator drains.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from django.conf import settings

from chat.events.frames import Frame
from core import contract
from core.fastpath import COUNTERS, abort_response, write_chunk

logger = logging.getLogger(__name__)

# Where a catching-up subscriber reads what it missed: every durable frame after a seq
# (or one snapshot), as the room channel holds or reads them.
FramesSince = Callable[[int], Awaitable[list[Frame]]]


class Subscriber:
    """One connection's view of a room: the last seq it was sent, its catch-up backlog.

    ``offer`` is the whole per-member work of an event; ``write`` puts a frame in the
    transport's bounded buffer; both answer False when the transport fell too far behind.
    ``close`` ends the connection from the server's side (once).
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
        self.last_seq = 0
        # While catching up (replaying after ``after``), frames arriving live wait here,
        # in order, and are sent once the replay is done.
        self.catching_up = True
        self.backlog: deque[Frame] = deque()
        self.backlog_bytes = 0
        self.ended = False

    async def offer(self, frame: Frame) -> bool:
        """A frame from the room: durable ones once each, in seq order (the room keeps its
        stream gap-free), live ones as they come. False: over its bound, cut it."""
        if self.ended:
            return True
        if self.catching_up:
            self.backlog.append(frame)
            self.backlog_bytes += frame.size
            return self.backlog_bytes <= settings.PARLEY_WS_MAX_BUFFER
        seq = frame.seq
        if seq is not None:
            if seq <= self.last_seq:
                return True
            self.last_seq = seq
        return await self.write(frame)

    async def catch_up(self, frames_since: FramesSince, after: int | None, head: int) -> bool:
        """Replay what followed ``after`` (or nothing, going on live from ``head``), then
        the backlog that arrived meanwhile; live afterwards. False: over its bound."""
        self.last_seq = head if after is None else after
        if after is not None and after != head and not await self._replay(frames_since):
            return False
        while self.backlog and not self.ended:
            frame = self.backlog.popleft()
            self.backlog_bytes -= frame.size
            if frame.seq is None:
                if not await self.write(frame):
                    return False
                continue
            if frame.seq > self.last_seq + 1 and frame.type != "snapshot":
                # A gap between the replay and the backlog: read it, then go on.
                self.backlog.appendleft(frame)
                self.backlog_bytes += frame.size
                if not await self._replay(frames_since):
                    return False
                continue
            if frame.seq > self.last_seq:
                self.last_seq = frame.seq
                if not await self.write(frame):
                    return False
        self.catching_up = False
        return True

    async def _replay(self, frames_since: FramesSince) -> bool:
        for frame in await frames_since(self.last_seq):
            if self.ended:
                return True  # closed while the log was read: nothing more goes to it
            assert frame.seq is not None
            # A snapshot restarts the stream at its seq, even below a bogus ``after``.
            if frame.seq > self.last_seq or frame.type == "snapshot":
                self.last_seq = frame.seq
                if not await self.write(frame):
                    return False
        return True

    async def close(self, code: int, reason: str) -> None:
        """End the connection from the server's side (once): slow, or access revoked."""
        if self.ended:
            return
        self.ended = True
        self.backlog.clear()
        await self.end(code, reason)

    async def write(self, frame: Frame) -> bool:
        raise NotImplementedError

    async def end(self, code: int, reason: str) -> None:
        raise NotImplementedError


class WebSocketSubscriber(Subscriber):
    """Writes through the connection's ASGI ``send``: under daphne, the prepared frame
    goes into the socket's buffer, bounded by core/fastpath.py (which closes with 4408
    itself, so a write here never reports the bound)."""

    kind = "ws"

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]], **kw: Any) -> None:
        super().__init__(**kw)
        self._send = send

    async def write(self, frame: Frame) -> bool:
        await self._send(frame.ws)
        return True

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
        # Under daphne, the response's own Twisted request (core/fastpath.py). Once the
        # body has started and nothing waits in ``buffer``, frames are written to it
        # straight from the room's fan-out loop, as a WebSocket member's are: no task
        # switch and no trip through Django's response iteration per member per frame.
        self._request = request
        self.direct: Any = None

    async def write(self, frame: Frame) -> bool:
        if self.direct is not None:
            unsent = write_chunk(self.direct, frame.sse_chunk)
            if unsent is not None:
                if unsent > settings.PARLEY_WS_MAX_BUFFER:
                    logger.warning("ending a streamed response that fell %d bytes behind", unsent)
                    abort_response(self.direct)
                    return False
                return True
            # The response is over (the client left): back to the buffer, which the
            # generator drops when Django cancels it.
            self.direct = self._request = None
        data = frame.sse
        COUNTERS.sse_buffered += 1  # not the fast path (core/fastpath.py counters)
        self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered > settings.PARLEY_WS_MAX_BUFFER:
            return False
        self.wake.set()
        return True

    async def end(self, code: int, reason: str) -> None:
        self.buffer.clear()
        self.buffered = 0
        if code != contract.TOO_SLOW.code:
            error = "unauthorized" if code == contract.UNAUTHENTICATED.code else "forbidden"
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
