"""What daphne cannot do for Parley, added to its protocols at start-up.

1. The contract's close code 1009 ("frame too big"): autobahn's ``sendClose`` accepts only
   1000 and 3000-4999 from an application, so daphne turns the consumer's
   ``close(code=1009)`` into a crash (1011). The patched ``serverClose`` sends a close frame
   with 1009 itself.

2. Slow clients: a bounded outbound buffer per connection, then close 4408 (WebSocket) or
   the end of the response (SSE).

3. Encode once, write many: a frame prepared once (``prepare_frame``) is written to every
   member's connection as it is, with no per-member UTF-8 encode or WebSocket framing.
   A send to a connection that is closing or closed is a no-op, never an exception.

4. Event streams as fast as WebSockets: an SSE response's socket gets TCP_NODELAY (as
   autobahn gives a WebSocket's), and once its body has started the room writes each
   event to it as one prebuilt HTTP chunk (``write_chunk``), found through the scope's
   ``parley.direct_write`` extension (``DIRECT_WRITE``), instead of one ASGI message and
   one Django iteration per member per frame.

Daphne writes every frame the application sends straight into the connection's Twisted
transport, which buffers without limit when the client stops reading: one stalled
client would grow the server's memory for as long as the room talks. Daphne has no
setting for this and the application cannot see the buffer, so Parley wraps daphne's
``serverSend``: past ``PARLEY_WS_MAX_BUFFER`` unsent bytes the connection gets close code
4408 (docs/protocol.md "Close codes": the client read too slowly; reconnect with after)
and nothing more is queued for it. If the client does not answer the close within
``SLOW_CLOSE_GRACE``, autobahn drops the TCP connection, freeing the buffer. Other
connections are untouched. An SSE response (an HTTP body that keeps streaming) has the
same bound on its transport: past it daphne's connection is aborted, Django cancels the
stream, and the client resumes with ``Last-Event-ID``.

The two ASGI scope extensions (``PREPARED_FRAME``, ``DIRECT_WRITE``) are declared here and
nowhere else; chat/ reads them through this module.

All of this leans on private names of daphne, autobahn and Twisted. requirements.txt pins
the three; ``install`` first checks them (core/fastpath_check.py) and refuses to start on
a version the tests have not passed on or when a name is gone. ``COUNTERS`` counts, per
process, the frames that took the fast path, those that did not, and the slow readers
cut off; tests/core/test_fastpath.py checks both paths on a real daphne.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any, Final

from core import contract

logger = logging.getLogger(__name__)

CLOSE_TOO_SLOW = contract.TOO_SLOW.code
# How long a cut-off client has to read its backlog and reach the 4408 close frame before
# the TCP connection is dropped (autobahn's default, 1 s, would drop it first and the
# client would see 1006 and not know to resume). Memory stays bounded meanwhile: nothing
# more is queued for the connection.
SLOW_CLOSE_GRACE = 30.0

# Protocol-level close codes (RFC 6455 section 7.4.1) the application may close with.
PROTOCOL_CLOSE_CODES = frozenset({1008, 1009, 1011, 1013})


# --- The ASGI scope extensions ---------------------------------------------------------

PREPARED_FRAME: Final = "parley.prepared_frame"
"""ASGI extension for WebSocket scopes: ``scope["extensions"]["parley.prepared_frame"]``
is ``{}`` when the server takes a frame prepared once for every member. A
``websocket.send`` message may then carry, under this same key, an autobahn
``PreparedMessage`` (``prepare_frame``) beside the usual ``text`` / ``bytes`` holding the
same payload; the server writes the prepared frame as it is. A server without the
extension (Channels' test communicator, uvicorn) ignores the key and sends ``text`` /
``bytes``, so a message built with it is valid everywhere."""

DIRECT_WRITE: Final = "parley.direct_write"
"""ASGI extension for HTTP scopes: ``scope["extensions"]["parley.direct_write"]`` is
``{"request": <daphne's Twisted request for this response>}``, for ``write_chunk`` and
``abort_response``. Read it with ``direct_write_request``; absent under any other server,
and then a streaming response goes the ordinary way (ASGI messages)."""


def direct_write_request(scope: Mapping[str, Any]) -> Any:
    """The request ``write_chunk`` writes to, from an HTTP scope's ``DIRECT_WRITE``
    extension; None where the server offers none."""
    extension = (scope.get("extensions") or {}).get(DIRECT_WRITE)
    return None if extension is None else extension["request"]


# --- Counters ---------------------------------------------------------------------------


class Counters:
    """How this process's frames left, since it started. Plain ints bumped in place: one
    attribute increment per member per frame is all the hot path pays.

    ``ws_prepared``  WebSocket frames written prepared (no per-member encode or framing).
    ``ws_plain``     WebSocket frames that went through daphne's own ``serverSend``.
    ``ws_cut``       WebSocket connections closed 4408 (the transport's bound, or the
                     application's ``close(4408)`` when a catch-up backlog overflowed).
    ``sse_direct``   SSE events written as one prebuilt chunk straight to the socket.
    ``sse_buffered`` SSE events that waited in the subscriber's buffer for Django's response
                     iteration (counted in chat/events/delivery/subscribers.py).
    ``sse_cut``      SSE responses aborted past the bound (at most once each).
    ``unbounded``    connections whose transport is not plain TCP (daphne terminating TLS
                     itself): served, but with no slow-reader bound (logged once).
    """

    __slots__ = (
        "sse_buffered",
        "sse_cut",
        "sse_direct",
        "unbounded",
        "ws_cut",
        "ws_plain",
        "ws_prepared",
    )

    def __init__(self) -> None:
        self.ws_prepared = 0
        self.ws_plain = 0
        self.ws_cut = 0
        self.sse_direct = 0
        self.sse_buffered = 0
        self.sse_cut = 0
        self.unbounded = 0


COUNTERS: Final = Counters()


def counters() -> dict[str, int]:
    """A snapshot of ``COUNTERS``."""
    return {name: getattr(COUNTERS, name) for name in Counters.__slots__}


# A debugging switch, off by default: with PARLEY_FASTPATH_STATS=1 the process logs
# ``counters()`` (one line, numbered) each time it receives SIGUSR1. The tests read the
# counters of a daphne subprocess this way; nothing else is exposed.
STATS_ENV = "PARLEY_FASTPATH_STATS"
STATS_LOG_PREFIX = "fastpath counters #"
# Other parts' state, logged by the same dump, one line each after the counters' with the
# same number: (prefix, what to log as JSON). core/tracing.py adds its own (config/asgi.py).
_debug_dumps: list[tuple[str, Callable[[], object]]] = []


def debug_dump(prefix: str, state: Callable[[], object]) -> None:
    """Log ``state()`` as ``<prefix><n>: <json>`` with each SIGUSR1 dump."""
    _debug_dumps.append((prefix, state))


def _log_counters_on_sigusr1() -> None:
    from twisted.internet import reactor

    dumps = itertools.count(1)

    def log_now() -> None:
        number = next(dumps)
        snapshot = json.dumps(counters(), sort_keys=True)
        logger.info("%s%d: %s", STATS_LOG_PREFIX, number, snapshot)
        for prefix, state in _debug_dumps:
            logger.info("%s%d: %s", prefix, number, json.dumps(state(), sort_keys=True))

    def on_signal(signum: int, frame: object) -> None:
        # Not from inside the signal handler: it may have interrupted the loop mid-log.
        reactor.callFromThread(log_now)

    signal.signal(signal.SIGUSR1, on_signal)


# --- The fast path ------------------------------------------------------------------------


def unsent_bytes(transport: Any) -> int:
    """Bytes written to a Twisted TCP transport that the kernel has not taken yet.

    Read with no defaults: a field Twisted renamed raises AttributeError here rather than
    reading as 0, which would lift the slow-reader bound without a word (and
    ``check_private_names`` refuses such a Twisted at start-up). Parley's daphne listens
    on plain TCP (nginx terminates TLS); a TLS transport has no such fields either.
    """
    return max(0, len(transport.dataBuffer) - transport.offset) + transport._tempDataLen


# Set by ``install`` (imported there, so that merely importing this module never touches
# Twisted's reactor): autobahn's PreparedMessage and Twisted's TCP server transport.
_prepared_message: Any = None
_tcp_server: Any = None


def prepare_frame(payload: bytes, *, binary: bool) -> Any:
    """One server-to-client WebSocket frame, built once for every connection (no mask, no
    compression: daphne negotiates none), or None where daphne is not serving."""
    if _prepared_message is None:
        return None
    return _prepared_message(payload, binary, False, True)


def write_now(transport: Any, data: bytes) -> None:
    """Write to a TCP transport, trying the socket at once when nothing is queued.

    Twisted's ``transport.write`` always queues and registers the socket for writability,
    then sends on the next loop turn and unregisters: two ``epoll_ctl`` calls and a reactor
    callback per member per frame. asyncio's own transports try ``send`` first; so does
    this. What the kernel does not take is queued as before, in order, so the 4408 bound
    (``unsent_bytes``) still sees it.
    """
    if (
        type(transport) is _tcp_server
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.connected
        and not transport.disconnecting
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # the connection is failing: let Twisted find out and report it
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def write_chunk(request: Any, chunk: bytes) -> int | None:
    """Write one prebuilt HTTP/1.1 chunk to a streaming response that has started its
    body, straight to its socket (``write_now``), with no ASGI message, no Django
    iteration and no task switch; the unsent bytes after it, or None when the response
    cannot take a direct write (finished, gone, not chunked: the caller falls back to
    the ordinary path).

    Twisted's ``Request.write`` would do the same framing (``toChunk``) per call, per
    member; the chunk here is built once per event (``Frame.sse_chunk``).
    """
    if (
        request.finished
        or request._disconnected
        or not request.startedWriting
        or request._parley_unbounded
    ):
        return None
    channel = request.channel
    if channel is None or not request.chunked:
        return None
    transport = channel.transport
    write_now(transport, chunk)
    COUNTERS.sse_direct += 1
    return unsent_bytes(transport)


def abort_response(request: Any) -> None:
    """Drop a streaming response's connection now, backlog and all (the reader fell too
    far behind; it resumes with Last-Event-ID), as the buffered path's bound does."""
    channel = request.channel
    if channel is not None and channel.transport is not None:
        _cut_response(request, channel.transport)


def _cut_response(request: Any, transport: Any) -> None:
    # Once per response: more body may arrive before Twisted reports the connection lost.
    if getattr(request, "_parley_cut", False):
        return
    request._parley_cut = True
    COUNTERS.sse_cut += 1
    transport.abortConnection()


def _is_event_stream(request: Any) -> bool:
    types = request.responseHeaders.getRawHeaders(b"content-type") or []
    return any(t.startswith(b"text/event-stream") for t in types)


def _skip_eager_debug_formatting() -> None:
    """autobahn pretty-prints every new connection's configuration for a debug log line
    (``self.log.debug("\\n{attrs}", attrs=pformat(...))``) even when debug logging is off:
    about a tenth of a handshake's CPU. Format lazily instead: the line is unchanged when
    someone turns autobahn's debug logging on."""
    import autobahn.websocket.protocol as ws

    class _Lazy:
        __slots__ = ("value",)

        def __init__(self, value: object) -> None:
            self.value = value

        def __format__(self, spec: str) -> str:
            from pprint import pformat

            return pformat(self.value)

    ws.pformat = _Lazy  # type: ignore[assignment]


def install(limit: int) -> None:
    """Patch daphne's WebSocket and HTTP protocols (idempotent; a no-op outside daphne).

    Raises ``FastPathUnsupported`` (and daphne does not start) when daphne, autobahn or
    Twisted is not a supported version or lacks a name the patch uses. Refusing, rather
    than falling back to daphne's own path, because the fallback would not be the same
    server minus some speed: the slow-reader bound reads Twisted's private buffer fields
    on both paths, so without them nothing would bound a stalled reader's memory. A
    mismatch is an upgrade someone made; the message says what to pin or re-test.
    """
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # not running under daphne
        return
    from core.fastpath_check import check_private_names, check_versions

    check_versions()
    check_private_names()
    global _prepared_message, _tcp_server
    from autobahn.websocket.protocol import PreparedMessage
    from daphne.http_protocol import WebRequest
    from daphne.server import Server as DaphneServer
    from twisted.internet.tcp import Server

    _prepared_message, _tcp_server = PreparedMessage, Server
    if getattr(WebSocketProtocol, "_parley_patched", False):
        return
    if os.environ.get(STATS_ENV) == "1":
        _log_counters_on_sigusr1()

    counts = COUNTERS
    original = WebSocketProtocol.serverSend
    original_close = WebSocketProtocol.serverClose
    original_reply = WebSocketProtocol.handle_reply
    original_http_reply = WebRequest.handle_reply
    original_create_application = DaphneServer.create_application

    def too_slow(self: Any) -> bool:
        """Cut a connection whose unsent bytes passed the bound (once); True if cut."""
        if getattr(self, "_parley_too_slow", False):
            return True
        if (
            self.state == self.STATE_OPEN
            and not self._parley_unbounded
            and unsent_bytes(self.transport) > limit
        ):
            self._parley_too_slow = True
            self.closeHandshakeTimeout = SLOW_CLOSE_GRACE
            logger.warning("closing a WebSocket that fell %d bytes behind (4408)", limit)
            counts.ws_cut += 1
            self.sendClose(code=CLOSE_TOO_SLOW, reason=contract.TOO_SLOW.reason)
            return True
        return False

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        if message.get("type") == "websocket.send":
            # A member that left mid-reply: drop the frame (autobahn would raise
            # Disconnected and crash the sender, which then never ran its cleanup).
            if self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
                return
            prepared = message.get(PREPARED_FRAME)
            if prepared is not None and self.state == self.STATE_OPEN:
                if too_slow(self):
                    return
                if self.send_queue:  # autobahn is mid-way through a chopped send
                    self.sendPreparedMessage(prepared)
                else:
                    write_now(self.transport, prepared.payloadHybi)
                counts.ws_prepared += 1
                return
        original_reply(self, message)

    def http_reply(self: Any, message: dict[str, Any]) -> None:
        original_http_reply(self, message)
        if message.get("type") == "http.response.start" and _is_event_stream(self):
            # An event stream writes one small chunk per event. With Nagle on (Twisted's
            # default for HTTP; autobahn turns it off for WebSockets) a chunk waits for
            # the client's delayed ACK of the one before, up to 40 ms on Linux.
            transport = getattr(self.channel, "transport", None)
            if transport is not None:
                transport.setTcpNoDelay(True)
            return
        if (
            message.get("type") == "http.response.body"
            and message.get("more_body")
            and _is_event_stream(self)
        ):
            # Only an event stream: a large ordinary response (a long reply's JSON, sent in
            # 64 KiB chunks) is bounded by its own size and must not be cut.
            transport = getattr(self.channel, "transport", None)
            if (
                transport is not None
                and not self._parley_unbounded
                and unsent_bytes(transport) > limit
            ):
                logger.warning("ending a streamed response that fell %d bytes behind", limit)
                _cut_response(self, transport)

    original_send_data = WebSocketProtocol.sendData

    def send_data(self: Any, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Every frame autobahn makes (pings above all: one per idle member per ping
        # interval) goes the same cheap way as a prepared frame; autobahn's own sendData
        # also formats a debug line per call whether or not debug logging is on.
        if sync or chopsize or self.send_queue:
            original_send_data(self, data, sync, chopsize)
        else:
            write_now(self.transport, data)

    def server_close(self: Any, code: int | None = None) -> None:
        if code == CLOSE_TOO_SLOW and self.state == self.STATE_OPEN:
            counts.ws_cut += 1  # the application's bound (a catch-up backlog overflowed)
        if code in PROTOCOL_CLOSE_CODES:
            self.sendCloseFrame(code=code, reasonUtf8=None, isReply=False)
            return
        original_close(self, code)

    def server_send(self: Any, content: Any, binary: bool = False) -> None:
        if self.state in (self.STATE_CLOSING, self.STATE_CLOSED) or too_slow(self):
            return
        # The plain path: daphne encodes and frames this one for this member alone.
        counts.ws_plain += 1
        original(self, content, binary)

    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        transport = getattr(protocol, "transport", None)
        if transport is not None and not isinstance(transport, Server):
            # Not plain TCP (daphne terminating TLS itself): its buffer is not Twisted's TCP
            # one, so the bound cannot be read. Serve it as daphne would, without the bound,
            # and say so once in the log and in the counters: Parley's topology puts TLS
            # in nginx, in front of daphne on plain TCP (README "Production").
            protocol._parley_unbounded = True
            counts.unbounded += 1
            if counts.unbounded == 1:
                logger.error(
                    "a connection on a %s transport: no slow-reader bound for it (and any "
                    "like it); terminate TLS in a proxy and run daphne on plain TCP",
                    type(transport).__name__,
                )
        extensions = scope.setdefault("extensions", {})
        if isinstance(protocol, WebRequest):
            extensions[DIRECT_WRITE] = {"request": protocol}
        elif isinstance(protocol, WebSocketProtocol):
            extensions[PREPARED_FRAME] = {}
        return original_create_application(self, protocol, scope)

    _skip_eager_debug_formatting()
    DaphneServer.create_application = create_application
    WebSocketProtocol.sendData = send_data
    WebSocketProtocol.serverSend = server_send
    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol.handle_reply = handle_reply
    WebRequest.handle_reply = http_reply
    WebSocketProtocol._parley_unbounded = False
    WebRequest._parley_unbounded = False
    WebSocketProtocol._parley_patched = True
