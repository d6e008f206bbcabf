"""The two live transports of a room: a WebSocket, or server-sent events (+ HTTP).

Each ``open()`` connects, waits for the ``hello`` event, and returns a connection whose
``events()`` yields the typed events that follow. When the connection ends, ``events()``
raises the typed reason (:class:`~parley_client.errors.ConnectionLost`,
:class:`~parley_client.errors.SlowReader`, :class:`~parley_client.errors.Unauthorized`, ...),
so the room session above decides whether to reconnect. Neither transport keeps state
across connections: resuming (``after``) is the session's business.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from parley_client.audio import parse_audio_frame
from parley_client.errors import (
    ConnectionLost,
    ParleyError,
    Unauthorized,
    Unreachable,
    error_from_body,
    error_from_close,
    network_reason,
)
from parley_client.models import AudioChunk, Event, Hello, MalformedEvent, parse_event

logger = logging.getLogger(__name__)

# A server that accepted the connection but has not said hello by then is as good as
# blocked (the page waits as long, chat/static/chat/js/connection.js).
HELLO_TIMEOUT = 8.0
# Frames from the server can be big: a snapshot carries up to 50 messages of any length.
# websockets' default (1 MiB) could refuse one; 32 MiB still bounds a broken server.
MAX_SERVER_FRAME = 32 * 1024 * 1024
# Frames websockets may hold before it stops reading the socket. The session's own bounded
# buffer is where events wait; keeping this small lets a caller that stops reading push
# back on the server (which then cuts us with 4408 and we resume) instead of piling up
# frames here: websockets' default, 16, can be many megabytes of large deltas.
WS_MAX_QUEUE = 4
# The contract's limit on frames we send (docs/protocol.md "WebSocket": over 64 KiB closes
# with 1009).
MAX_CLIENT_FRAME = 64 * 1024
# The server sends a ": ping" comment at least every 15 s (docs/protocol.md "Server-sent
# events"); three missed
# in a row mean the stream is dead even if TCP has not noticed.
SSE_READ_TIMEOUT = 45.0


class HandshakeFailed(ConnectionLost):
    """The WebSocket handshake failed in a way SSE may get around (a blocking proxy)."""

    default_code = "handshake_failed"
    summary = "the WebSocket handshake failed"


class Connection(Protocol):
    """One live connection to a room."""

    name: str
    hello: Hello

    def events(self) -> AsyncIterator[Event]: ...

    async def send_frame(self, frame: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


def ws_url(base_url: str, path: str) -> str:
    """``http(s)://host/prefix`` + ``path`` as a ``ws(s)://`` URL."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def room_path(slug: str) -> str:
    return quote(slug, safe="")


def _parse(raw: str, transport: str) -> Event | None:
    try:
        return parse_event(json.loads(raw), transport=transport)
    except (ValueError, MalformedEvent) as exc:
        # A frame that breaks the contract is dropped, not allowed to end the session.
        logger.warning("ignoring a malformed %s event: %s", transport, exc)
        return None


class WebSocketConnection:
    name = "websocket"

    def __init__(self, ws: ClientConnection, hello: Hello) -> None:
        self.ws = ws
        self.hello = hello

    @classmethod
    async def open(
        cls,
        base_url: str,
        slug: str,
        *,
        token: str | None,
        after: int | None,
        open_timeout: float,
        ping_interval: float | None,
    ) -> WebSocketConnection:
        url = ws_url(base_url, f"/ws/rooms/{room_path(slug)}/")
        if after is not None:
            url += f"?after={after}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            ws = await websockets.connect(
                url,
                additional_headers=headers,
                max_size=MAX_SERVER_FRAME,
                max_queue=WS_MAX_QUEUE,
                open_timeout=open_timeout,
                ping_interval=ping_interval,
                ping_timeout=ping_interval,
                user_agent_header="parley-client",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise Unauthorized(status=401) from exc
            raise HandshakeFailed(
                f"the WebSocket handshake was refused with HTTP {status}", status=status
            ) from exc
        except InvalidHandshake as exc:
            raise HandshakeFailed(f"the WebSocket handshake failed: {exc}") from exc
        except TimeoutError as exc:
            raise HandshakeFailed(
                f"the WebSocket handshake did not finish within {open_timeout:g} s"
            ) from exc
        except OSError as exc:
            raise Unreachable(f"cannot reach {base_url} ({network_reason(exc)})") from exc
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                while True:
                    frame = await ws.recv()
                    if isinstance(frame, str):
                        event = _parse(frame, cls.name)
                        if isinstance(event, Hello):
                            return cls(ws, event)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            err = error_from_close(code, exc.rcvd.reason if exc.rcvd else "")
            if isinstance(err, ConnectionLost):
                err = HandshakeFailed(f"the server closed the WebSocket before hello ({err})")
            raise err from exc
        except TimeoutError as exc:
            await ws.close()
            raise HandshakeFailed(f"no hello within {HELLO_TIMEOUT:g} s") from exc
        except BaseException:
            await ws.close()
            raise

    async def events(self) -> AsyncIterator[Event]:
        try:
            async for frame in self.ws:
                if isinstance(frame, bytes):
                    try:
                        stream, index, pcm = parse_audio_frame(frame)
                    except ValueError:
                        logger.warning("ignoring a binary frame of %d bytes", len(frame))
                        continue
                    yield AudioChunk(stream=stream, index=index, pcm=pcm)
                    continue
                event = _parse(frame, self.name)
                if event is not None:
                    yield event
        except ConnectionClosed:
            pass
        rcvd = self.ws.close_code
        raise error_from_close(rcvd, self.ws.close_reason or "")

    async def send_frame(self, frame: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(frame, separators=(",", ":")))
        except ConnectionClosed as exc:
            raise ConnectionLost("the connection dropped before the frame went out") from exc

    async def close(self) -> None:
        await self.ws.close()


class SSEConnection:
    """``GET /api/rooms/<slug>/events``; sends and controls go over HTTP (the session)."""

    name = "sse"

    def __init__(
        self, response: httpx.Response, events: AsyncIterator[Event], hello: Hello
    ) -> None:
        self.response = response
        self._events = events
        self.hello = hello

    @classmethod
    async def open(
        cls,
        http: httpx.AsyncClient,
        slug: str,
        *,
        after: int | None,
        audio: bool,
        connect_timeout: float,
    ) -> SSEConnection:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        request = http.build_request(
            "GET",
            f"/api/rooms/{room_path(slug)}/events",
            params={"audio": "1"} if audio else None,
            headers=headers,
            timeout=httpx.Timeout(connect_timeout, read=SSE_READ_TIMEOUT),
        )
        try:
            response = await http.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(f"cannot reach {http.base_url} ({network_reason(exc)})") from exc
        except httpx.TransportError as exc:
            raise ConnectionLost(f"the event stream failed to open ({exc})") from exc
        if response.status_code != 200:
            try:
                await response.aread()
                body: Any = response.json()
            except (ValueError, httpx.HTTPError):
                body = None
            finally:
                await response.aclose()
            raise error_from_body(body, status=response.status_code, room_scope=True)
        events = _sse_events(response.aiter_lines(), cls.name)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                async for event in events:
                    if isinstance(event, Hello):
                        return cls(response, events, event)
        except TimeoutError as exc:
            await response.aclose()
            raise ConnectionLost(
                f"no hello on the event stream within {HELLO_TIMEOUT:g} s"
            ) from exc
        except (httpx.TransportError, ConnectionLost) as exc:
            await response.aclose()
            raise ConnectionLost(f"the event stream ended before hello ({exc})") from exc
        except BaseException:
            await response.aclose()
            raise
        await response.aclose()
        raise ConnectionLost("the event stream ended before hello")

    async def events(self) -> AsyncIterator[Event]:
        try:
            async for event in self._events:
                yield event
        except httpx.ReadTimeout as exc:
            raise ConnectionLost(f"the event stream was silent for {SSE_READ_TIMEOUT:g} s") from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise ConnectionLost(f"the event stream broke ({exc!r})") from exc
        raise ConnectionLost("the server ended the event stream")

    async def send_frame(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError("SSE is receive-only; the session sends over HTTP")

    async def close(self) -> None:
        await self.response.aclose()


async def _sse_events(lines: AsyncIterator[str], transport: str) -> AsyncIterator[Event]:
    """Parse ``text/event-stream`` lines into events.

    Hand-rolled (about twenty lines) rather than a dependency: the library promises to
    need only ``websockets`` and ``httpx``. It follows the HTML spec's rules for the
    fields Parley uses (``data``, ``event``, ``id``, ``retry``, comments); the JSON
    ``data`` carries its own ``type``, which wins over ``event``.
    """
    data: list[str] = []
    kind = ""
    async for line in lines:
        if line == "":
            if data:
                event = _parse_sse_data("\n".join(data), kind, transport)
                data, kind = [], ""
                if event is not None:
                    yield event
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
        # "id" repeats the event's seq; "retry" and comments (": ping") need no action.


def _parse_sse_data(data: str, kind: str, transport: str) -> Event | None:
    try:
        raw = json.loads(data)
    except ValueError:
        logger.warning("ignoring an SSE event whose data is not JSON")
        return None
    if isinstance(raw, dict) and "type" not in raw and kind:
        raw["type"] = kind
    try:
        return parse_event(raw, transport=transport)
    except MalformedEvent as exc:
        logger.warning("ignoring a malformed SSE event: %s", exc)
        return None


__all__ = [
    "HELLO_TIMEOUT",
    "MAX_CLIENT_FRAME",
    "Connection",
    "HandshakeFailed",
    "ParleyError",
    "SSEConnection",
    "WebSocketConnection",
    "ws_url",
]
