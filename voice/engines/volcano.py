"""Speak with Volcano Engine's (火山引擎, ByteDance doubao) bidirectional streaming TTS.

The service takes the reply's text as it streams and returns audio as it is made, over
one WebSocket (``wss://openspeech.bytedance.com/api/v3/tts/bidirection``) that carries a
binary protocol. Where the protocol facts come from: the vendor's public page
"双向流式websocket-V3-支持复刻-混音mix" (volcengine.com/docs/6561/1329505, sections
"WebSocket 二进制协议", "Event 定义", "交互示例"), checked against public client code
that ports the frame codec of the vendor's Python demo (``protocols.py``), which settles
what the page's byte tables leave open: which events carry a session id and which a
connection id. The page's own ConnectionFailed table shows the connection id's length
but not its bytes, so the decoder accepts that frame with or without the id. This
module is written from those descriptions; no code was copied.

Handshake: HTTP headers ``X-Api-App-Key`` (app id), ``X-Api-Access-Key`` (access token),
``X-Api-Resource-Id`` (e.g. ``seed-tts-1.0``, ``seed-tts-2.0``) and ``X-Api-Connect-Id``
(a fresh UUID per connection, for the vendor's tracing). A refused handshake is an HTTP
status other than 101 with the reason in the body.

Frame (all integers big-endian)::

    byte 0   protocol version (4 bits, 1) | header size in 4-byte words (4 bits, 1)
    byte 1   message type (4 bits)        | type-specific flags (4 bits)
    byte 2   serialization (4 bits: 0 raw, 1 JSON) | compression (4 bits: 0 none, 1 gzip)
    byte 3   reserved (0)
    then     [int32 event]                        when flags has 0b0100 ("with event")
             [uint32 length + connection id]      for ConnectionStarted/Failed/Finished
             [uint32 length + session id]         for every other event but Start/
                                                  FinishConnection
             [uint32 error code]                  instead, for an error frame (type 0b1111)
             uint32 payload length + payload      JSON, or raw audio for audio frames

Message types: 0b0001 full client request (JSON, with event), 0b1001 full server response
(JSON, with event), 0b1011 audio-only server response (with event), 0b1111 error.

Events (the page's table "Event 定义"): StartConnection 1, FinishConnection 2,
ConnectionStarted 50, ConnectionFailed 51, ConnectionFinished 52, StartSession 100,
CancelSession 101, FinishSession 102, SessionStarted 150, SessionCanceled 151,
SessionFinished 152, SessionFailed 153, TaskRequest 200, TTSSentenceStart 350,
TTSSentenceEnd 351, TTSResponse 352 (the audio).

Flow: StartConnection → ConnectionStarted once per connection; per reply StartSession
(JSON ``{"user", "event", "namespace": "BidirectionalTTS", "req_params": {"speaker",
"audio_params": {"format": "pcm", "sample_rate"}}}``) → SessionStarted; TaskRequests
carrying ``req_params.text`` as the text arrives, audio (TTSResponse) coming back in
between; FinishSession → the rest of the audio → SessionFinished (``{"status_code":
20000000, "message": "ok"}``). The page: one session at a time per connection, a new
session only after SessionFinished (or SessionCanceled), connections are meant to be
reused; CancelSession is meant for the time between SessionStarted and FinishSession,
so after FinishSession a reply is stopped by discarding its audio until SessionFinished.

The service cleans Markdown and emoji itself (``disable_markdown_filter`` defaults to
false), but the text is cleaned here as well, word by word, so all engines speak alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import socket
import ssl
import struct
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from voice.engines.base import (
    SESSION_BUFFER_CHUNKS,
    AudioChunk,
    PCMChunker,
    TTSEngine,
    TTSError,
    TTSSession,
    internal_error,
)
from voice.segmenter import SpeechTextStream

logger = logging.getLogger(__name__)

DEFAULT_URL: Final = "wss://openspeech.bytedance.com/api/v3/tts/bidirection"
NAMESPACE: Final = "BidirectionalTTS"
#: ``status_code`` of a successful SessionFinished.
STATUS_OK: Final = 20000000
#: Sample rates the service accepts for ``audio_params.sample_rate``.
SAMPLE_RATES: Final = frozenset({8000, 16000, 22050, 24000, 32000, 44100, 48000})

_PROTOCOL_VERSION: Final = 1
_HEADER_WORDS: Final = 1
_FLAG_WITH_EVENT: Final = 0b0100
_SERIAL_RAW: Final = 0
_SERIAL_JSON: Final = 1
_COMPRESS_NONE: Final = 0
_COMPRESS_GZIP: Final = 1
# A whole second of 48 kHz audio is 96 KB; a frame far larger than any the service sends
# is refused rather than buffered.
_MAX_FRAME_BYTES: Final = 8 * 1024 * 1024
# What of the service's error message a room member sees: one line in the chat.
_MAX_REASON_CHARS: Final = 300
# Closing a connection we no longer need: FinishConnection is a courtesy, and waiting for
# a slow network longer than this would only hold the close up. websockets then gives
# the closing handshake as long again (close_timeout) before dropping the socket.
_GOODBYE_TIMEOUT: Final = 1.0
# Keepalive pings on pooled connections: proxies and NAT between us and the service drop
# connections silent for a minute or more; the service answers pings.
_PING_INTERVAL: Final = 20.0
#: A cancelled session's connection is reused only if the service acknowledges within
#: this (SessionCanceled, or SessionFinished after FinishSession): one round trip plus
#: the audio already on its way, generously; a connection that misses it is closed.
DEFAULT_CANCEL_TIMEOUT: Final = 2.0
#: Connections kept open between replies: enough for the replies that typically speak
#: at once; idle sockets are not free for either side, so no more than that.
DEFAULT_MAX_IDLE_CONNECTIONS: Final = 4
#: An idle connection older than this is closed rather than reused: the vendor does not
#: document its idle limit, and gateways commonly drop idle sockets at 60 s. A stale
#: connection is retried on a new one anyway; this only saves that round trip.
DEFAULT_IDLE_TIMEOUT: Final = 50.0


class MsgType(IntEnum):
    FULL_CLIENT_REQUEST = 0b0001
    AUDIO_ONLY_CLIENT = 0b0010
    FULL_SERVER_RESPONSE = 0b1001
    AUDIO_ONLY_SERVER = 0b1011
    FRONTEND_SERVER = 0b1100
    ERROR = 0b1111


class Event(IntEnum):
    START_CONNECTION = 1
    FINISH_CONNECTION = 2
    CONNECTION_STARTED = 50
    CONNECTION_FAILED = 51
    CONNECTION_FINISHED = 52
    START_SESSION = 100
    CANCEL_SESSION = 101
    FINISH_SESSION = 102
    SESSION_STARTED = 150
    SESSION_CANCELED = 151
    SESSION_FINISHED = 152
    SESSION_FAILED = 153
    TASK_REQUEST = 200
    TTS_SENTENCE_START = 350
    TTS_SENTENCE_END = 351
    TTS_RESPONSE = 352


# Events with no id after the event number, and those that carry the connection's id.
_NO_ID_EVENTS: Final = frozenset({Event.START_CONNECTION, Event.FINISH_CONNECTION})
_CONNECT_ID_EVENTS: Final = frozenset(
    {Event.CONNECTION_STARTED, Event.CONNECTION_FAILED, Event.CONNECTION_FINISHED}
)


@dataclass(frozen=True, slots=True)
class Frame:
    msg_type: int
    event: int | None = None
    session_id: str | None = None
    connect_id: str | None = None
    error_code: int | None = None
    payload: bytes = b""
    serialization: int = _SERIAL_JSON
    compression: int = _COMPRESS_NONE
    flags: int | None = None  # None: "with event" when there is one, else 0

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object ({} when empty or not an object)."""
        data = self.payload
        if self.compression == _COMPRESS_GZIP:
            data = gzip.decompress(data)
        if not data:
            return {}
        value = json.loads(data)
        return value if isinstance(value, dict) else {}


class FrameError(ValueError):
    """Bytes that are not a frame of this protocol."""


def encode_frame(frame: Frame) -> bytes:
    flags = frame.flags
    if flags is None:
        flags = _FLAG_WITH_EVENT if frame.event is not None else 0
    parts = [
        bytes(
            [
                (_PROTOCOL_VERSION << 4) | _HEADER_WORDS,
                (frame.msg_type << 4) | flags,
                (frame.serialization << 4) | frame.compression,
                0,
            ]
        )
    ]
    if frame.msg_type == MsgType.ERROR:
        parts.append(struct.pack(">I", frame.error_code or 0))
    if flags & _FLAG_WITH_EVENT:
        if frame.event is None:
            raise ValueError("a frame flagged 'with event' needs an event")
        parts.append(struct.pack(">i", frame.event))
        if frame.event in _CONNECT_ID_EVENTS:
            parts.append(_sized((frame.connect_id or "").encode()))
        elif frame.event not in _NO_ID_EVENTS:
            parts.append(_sized((frame.session_id or "").encode()))
    parts.append(_sized(frame.payload))
    return b"".join(parts)


def decode_frame(data: bytes) -> Frame:
    reader = _Reader(data)
    first, second, third = reader.take(1)[0], reader.take(1)[0], reader.take(1)[0]
    if first >> 4 != _PROTOCOL_VERSION:
        raise FrameError(f"protocol version {first >> 4}, expected {_PROTOCOL_VERSION}")
    header_size = (first & 0x0F) * 4
    if header_size < 4:
        raise FrameError(f"header size {header_size}")
    reader.take(header_size - 3)  # the reserved byte and any header extension
    msg_type, flags = second >> 4, second & 0x0F
    error_code: int | None = None
    event: int | None = None
    session_id: str | None = None
    connect_id: str | None = None
    if msg_type == MsgType.ERROR:
        error_code = reader.uint32()
    if flags & _FLAG_WITH_EVENT:
        event = reader.int32()
        if event in _CONNECT_ID_EVENTS:
            if reader.sized_field_fills_rest():
                pass  # no connection id, only the payload (as the page's table shows)
            else:
                connect_id = reader.sized().decode("utf-8", "replace")
        elif event not in _NO_ID_EVENTS:
            session_id = reader.sized().decode("utf-8", "replace")
    elif flags in (0b0001, 0b0011):
        reader.int32()  # a sequence number: not used by this service's TTS frames
    payload = reader.sized()
    return Frame(
        msg_type=msg_type,
        event=event,
        session_id=session_id,
        connect_id=connect_id,
        error_code=error_code,
        payload=payload,
        serialization=third >> 4,
        compression=third & 0x0F,
        flags=flags,
    )


def _sized(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise FrameError(f"frame ends early ({len(self._data)} bytes)")
        chunk = self._data[self._at : self._at + n]
        self._at += n
        return chunk

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def sized_field_fills_rest(self) -> bool:
        """Whether the length-prefixed field that starts here ends the frame exactly."""
        rest = len(self._data) - self._at
        if rest < 4:
            return False
        (size,) = struct.unpack_from(">I", self._data, self._at)
        return bool(4 + size == rest)

    def sized(self) -> bytes:
        size = self.uint32()
        if size > _MAX_FRAME_BYTES:
            raise FrameError(f"field of {size} bytes")
        return self.take(size)


def client_frame(event: Event, payload: dict[str, Any], session_id: str | None = None) -> bytes:
    return encode_frame(
        Frame(
            msg_type=MsgType.FULL_CLIENT_REQUEST,
            event=event,
            session_id=session_id,
            payload=json.dumps(payload, ensure_ascii=False).encode(),
        )
    )


# -- the engine --------------------------------------------------------------------------


class VolcanoEngine(TTSEngine):
    """Volcano Engine bidirectional TTS; one pooled WebSocket per reply speaking at once."""

    name: ClassVar[str] = "volcano"
    native_streaming: ClassVar[bool] = True

    def __init__(
        self,
        *,
        app_key: str,
        access_key: str,
        speaker: str,
        resource_id: str = "seed-tts-1.0",
        url: str = DEFAULT_URL,
        sample_rate: int = 24000,
        connect_timeout: float,
        read_timeout: float,
        cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
        max_idle_connections: int = DEFAULT_MAX_IDLE_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        speech_rate: int | None = None,
        model: str | None = None,
        additions: dict[str, Any] | None = None,
    ) -> None:
        """
        ``connect_timeout``: the WebSocket handshake plus ConnectionStarted and
        SessionStarted. ``read_timeout``: the longest silence accepted once the text is
        complete (while text is still coming, the service may rightly wait for more).
        ``cancel_timeout``: how long a cancelled session's connection is given to
        acknowledge before it is closed rather than reused. ``max_idle_connections`` and
        ``idle_timeout``: the pool of connections kept open between replies.
        """
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {sorted(SAMPLE_RATES)}")
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"VOLCANO_TTS_URL must be a ws:// or wss:// URL, not {url!r}")
        if speech_rate is not None and not -50 <= speech_rate <= 100:
            raise ValueError("speech_rate must be within [-50, 100]")
        super().__init__(sample_rate=sample_rate)
        self.app_key = app_key
        self.access_key = access_key
        self.resource_id = resource_id
        self.speaker = speaker
        self.url = url
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.cancel_timeout = cancel_timeout
        self.max_idle_connections = max_idle_connections
        self.idle_timeout = idle_timeout
        self.speech_rate = speech_rate
        self.model = model
        self.additions = dict(additions or {})
        self._idle: list[_Connection] = []
        self._idle_loop: asyncio.AbstractEventLoop | None = None

    # -- requests ------------------------------------------------------------------------

    def session_params(self) -> dict[str, Any]:
        audio: dict[str, Any] = {"format": "pcm", "sample_rate": self.sample_rate}
        if self.speech_rate is not None:
            audio["speech_rate"] = self.speech_rate
        params: dict[str, Any] = {"speaker": self.speaker, "audio_params": audio}
        if self.model:
            params["model"] = self.model
        if self.additions:
            # The service takes additions as a JSON string (the page's "jsonstring").
            params["additions"] = json.dumps(self.additions, ensure_ascii=False)
        return params

    def _request(self, event: Event, **req_params: Any) -> dict[str, Any]:
        return {
            "user": {"uid": "parley"},
            "event": int(event),
            "namespace": NAMESPACE,
            "req_params": {**self.session_params(), **req_params},
        }

    # -- the API -------------------------------------------------------------------------

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        text = text.strip()
        if not text:
            return
        session = VolcanoSession(self)
        try:
            await session.feed(text)
            await session.finish()
            async for chunk in session:
                yield chunk
        finally:
            if session.ended:
                await session.aclose()
            else:
                # Stopped early: the session drops the rest of the audio until the
                # service has finished (bounded by cancel_timeout) in its own task, owned
                # by the engine, so whoever stopped us is not kept waiting for that.
                await session.cancel()

    async def open_session(self) -> TTSSession:
        return VolcanoSession(self)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        if self._idle_loop is asyncio.get_running_loop():
            for conn in idle:
                conn.discard(goodbye=True)
        self._idle_loop = None
        await super().aclose()

    # -- the connection pool -------------------------------------------------------------

    def _take_idle(self) -> _Connection | None:
        loop = asyncio.get_running_loop()
        if self._idle_loop is not loop:
            # Connections of another (likely closed) event loop cannot be used here.
            self._idle, self._idle_loop = [], loop
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.discard(goodbye=True)
        return None

    def _release(self, conn: _Connection) -> None:
        """Keep a connection whose last session ended cleanly, if the pool has room."""
        if (
            conn.usable
            and self._idle_loop is asyncio.get_running_loop()
            and len(self._idle) < self.max_idle_connections
        ):
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.discard(goodbye=True)

    async def _connect(self) -> _Connection:
        connect_id = str(uuid.uuid4())
        headers = {
            "X-Api-App-Key": self.app_key,
            "X-Api-Access-Key": self.access_key,
            "X-Api-Resource-Id": self.resource_id,
            "X-Api-Connect-Id": connect_id,
        }
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await connect(
                    self.url,
                    additional_headers=headers,
                    user_agent_header="parley",
                    open_timeout=self.connect_timeout,
                    max_size=_MAX_FRAME_BYTES,
                    ping_interval=_PING_INTERVAL,
                    ping_timeout=_PING_INTERVAL,
                    close_timeout=_GOODBYE_TIMEOUT,
                )
                conn = _Connection(ws, connect_id, self)
                try:
                    await ws.send(client_frame(Event.START_CONNECTION, {}))
                    frame = await conn.recv()
                except BaseException:
                    conn.discard()
                    raise
        except TimeoutError:
            raise TTSError(
                "refused",
                f"Could not connect to the Volcano speech service: no answer within "
                f"{self.connect_timeout:g} s.",
            ) from None
        except InvalidStatus as exc:
            raise _handshake_error(exc) from exc
        except (InvalidHandshake, InvalidURI) as exc:
            raise TTSError(
                "refused", f"Could not connect to the Volcano speech service: {_clip(str(exc))}"
            ) from exc
        except ConnectionClosed as exc:
            raise TTSError(
                "disconnected", "The Volcano speech service closed the connection at once."
            ) from exc
        except OSError as exc:
            raise TTSError(
                "refused",
                f"Could not connect to the Volcano speech service: {_os_failure(exc)}.",
            ) from exc
        if frame.event == Event.CONNECTION_STARTED:
            conn.server_connect_id = frame.connect_id
            return conn
        conn.discard()
        raise _frame_error(frame, "connecting")


def _handshake_error(exc: InvalidStatus) -> TTSError:
    response = exc.response
    body = response.body.decode("utf-8", "replace") if response.body else ""
    message = _message_from_text(body)
    status = f"HTTP {response.status_code}"
    if response.reason_phrase:
        status += f" {response.reason_phrase}"
    reason = f"The Volcano speech service refused the connection ({status})"
    if response.status_code in (401, 403):
        reason += ": check VOLCANO_APP_KEY, VOLCANO_ACCESS_KEY and VOLCANO_RESOURCE_ID"
    return TTSError("upstream_status", f"{reason}: {message}" if message else f"{reason}.")


class _Connection:
    """One WebSocket to the service, used by one session at a time."""

    def __init__(self, ws: ClientConnection, connect_id: str, owner: TTSEngine) -> None:
        self.ws = ws
        self._owner = owner
        self.connect_id = connect_id
        self.server_connect_id: str | None = None
        self.idle_since = time.monotonic()
        self.broken = False
        self._closer: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        return not self.broken and self.ws.state is State.OPEN

    async def recv(self) -> Frame:
        """The next binary frame. Raises ConnectionClosed or TTSError."""
        while True:
            message = await self.ws.recv()
            if isinstance(message, str):
                # The service reports some failures as a text frame (the page, "文本帧").
                raise TTSError(
                    "upstream_status",
                    f"The Volcano speech service reported: {_message_from_text(message)}",
                )
            try:
                return decode_frame(message)
            except FrameError as exc:
                raise TTSError(
                    "malformed", f"The Volcano speech service sent a frame we cannot read: {exc}"
                ) from exc

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)

    def discard(self, *, goodbye: bool = False) -> None:
        """Stop using this connection and close it in the background (owned by the engine).

        ``goodbye``: the connection is healthy and idle, so say FinishConnection first.
        """
        if self._closer is not None:
            return
        healthy = goodbye and not self.broken
        self.broken = True
        if self.ws.state is State.CLOSED:
            return
        self._closer = asyncio.create_task(self.close(goodbye=healthy), name="tts-volcano-close")
        self._owner._adopt(self._closer, cleanup=True)

    async def close(self, *, goodbye: bool = True) -> None:
        """Close, saying FinishConnection first if ``goodbye`` and the socket is open."""
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            if goodbye and self.ws.state is State.OPEN:
                async with asyncio.timeout(_GOODBYE_TIMEOUT):
                    await self.ws.send(client_frame(Event.FINISH_CONNECTION, {}))
            await self.ws.close()


# -- a session ---------------------------------------------------------------------------

_FINISH: Final = object()
_CANCEL: Final = object()


class VolcanoSession(TTSSession):
    """One reply's speech: one protocol session on a pooled connection.

    A background task, owned by the engine, connects (or takes an idle connection),
    starts the protocol session, then sends fed text as TaskRequests while it receives
    audio, until SessionFinished. Text fed before the session has started waits and goes
    out as one TaskRequest; later text is sent as it comes (whatever queued while a send
    was in flight goes out together).
    """

    def __init__(self, engine: VolcanoEngine) -> None:
        super().__init__(sample_rate=engine.sample_rate, buffer_chunks=SESSION_BUFFER_CHUNKS)
        self._engine = engine
        self.session_id = uuid.uuid4().hex
        self._cleaner = SpeechTextStream()
        self._outbox: deque[object] = deque()
        self._outbox_ready = asyncio.Event()
        self._started = False  # SessionStarted received
        self._finish_sent = False
        self._cancel_sent = False
        # The timeout around the frame being awaited, so that finish and cancel can
        # shorten a wait that began while the service could rightly stay silent.
        self._receiving: asyncio.Timeout | None = None
        self._task = asyncio.create_task(self._run(), name="tts-session-volcano")
        engine._adopt(self._task)

    # -- TTSSession ----------------------------------------------------------------------

    def _feed(self, text: str) -> None:
        spoken = self._cleaner.feed(text)
        if spoken:
            self._post(spoken)

    def _finish(self) -> None:
        rest = self._cleaner.flush()
        if rest:
            self._post(rest)
        self._post(_FINISH)

    async def _cancel(self) -> None:
        if not self._started:
            # Still connecting or starting: nothing to tell the service; close instead.
            self._task.cancel()
            return
        self._post(_CANCEL)
        self._wait_at_most(self._engine.cancel_timeout)

    async def _wait_closed(self) -> None:
        await asyncio.wait({self._task})
        if not self._task.cancelled():
            self._task.exception()

    def _post(self, item: object) -> None:
        self._outbox.append(item)
        self._outbox_ready.set()

    def _wait_at_most(self, seconds: float) -> None:
        receiving = self._receiving
        if receiving is None:
            return
        deadline = asyncio.get_running_loop().time() + seconds
        current = receiving.when()
        if current is None or current > deadline:
            receiving.reschedule(deadline)

    # -- the background task -------------------------------------------------------------

    async def _run(self) -> None:
        conn: _Connection | None = None
        try:
            conn = await self._start()
            self._started = True
            if self.cancelled:
                self._post(_CANCEL)
            sender = asyncio.create_task(self._send_loop(conn), name="tts-volcano-send")
            # A failed send closes the connection, which ends the receive loop too.
            started = conn
            sender.add_done_callback(lambda task: _on_sender_done(task, started))
            try:
                reusable = await self._receive_loop(conn)
            finally:
                sender.cancel()
                await asyncio.wait({sender})
            if reusable:
                self._engine._release(conn)
                conn = None
            self._pipe.end()
        except TTSError as exc:
            self._pipe.fail(exc)
        except (ConnectionClosed, OSError):
            self._pipe.fail(
                TTSError(
                    "disconnected",
                    "The Volcano speech service closed the connection before the audio "
                    "was complete.",
                )
            )
        except Exception:
            logger.exception("Volcano speech session failed")
            self._pipe.fail(internal_error())
        finally:
            if conn is not None:
                conn.discard()
            if not self._pipe.closed:
                self._pipe.abort()  # cancelled from outside the session

    async def _start(self) -> _Connection:
        """A connection on which this session has started; one retry on a stale one."""
        conn = self._engine._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._engine._connect()
        try:
            await self._start_session(conn)
            return conn
        except (ConnectionClosed, OSError):
            conn.discard()
            if not reused:
                raise
        except BaseException:
            conn.discard()
            raise
        # The pooled connection had died while idle: once more on a new one.
        conn = await self._engine._connect()
        try:
            await self._start_session(conn)
        except BaseException:
            conn.discard()
            raise
        return conn

    async def _start_session(self, conn: _Connection) -> None:
        engine = self._engine
        request = engine._request(Event.START_SESSION)
        await conn.send(client_frame(Event.START_SESSION, request, self.session_id))
        try:
            async with asyncio.timeout(engine.connect_timeout):
                while True:
                    frame = await conn.recv()
                    if frame.session_id not in (None, self.session_id):
                        continue  # a late frame of an earlier session on this connection
                    if frame.event == Event.SESSION_STARTED:
                        return
                    raise _frame_error(frame, "starting the session")
        except TimeoutError:
            raise TTSError(
                "timeout",
                f"The Volcano speech service did not start a session within "
                f"{engine.connect_timeout:g} s.",
            ) from None

    async def _send_loop(self, conn: _Connection) -> None:
        engine = self._engine
        while True:
            while not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
            item = self._outbox.popleft()
            if item is _CANCEL:
                if not self._finish_sent and not self._cancel_sent:
                    self._cancel_sent = True
                    await conn.send(client_frame(Event.CANCEL_SESSION, {}, self.session_id))
                return
            if item is _FINISH:
                if not self._cancel_sent and not self._finish_sent:
                    self._finish_sent = True
                    await conn.send(client_frame(Event.FINISH_SESSION, {}, self.session_id))
                    self._wait_at_most(engine.read_timeout)
                continue  # a cancel may still come: the rest of the audio is dropped then
            parts = [str(item)]
            while self._outbox and isinstance(self._outbox[0], str):
                parts.append(str(self._outbox.popleft()))
            request = engine._request(Event.TASK_REQUEST, text="".join(parts))
            await conn.send(client_frame(Event.TASK_REQUEST, request, self.session_id))

    async def _receive_loop(self, conn: _Connection) -> bool:
        """Pass audio on until the session ends; True if the connection can be reused."""
        engine = self._engine
        chunker = PCMChunker(engine.sample_rate or 24000)
        loop = asyncio.get_running_loop()
        cancel_deadline: float | None = None
        while True:
            if self.cancelled and cancel_deadline is None:
                cancel_deadline = loop.time() + engine.cancel_timeout
            if cancel_deadline is not None:
                deadline: float | None = cancel_deadline
            elif self._finish_sent:
                deadline = loop.time() + engine.read_timeout
            else:
                deadline = None  # still taking text: the service may wait for more
            try:
                async with asyncio.timeout_at(deadline) as receiving:
                    self._receiving = receiving
                    frame = await conn.recv()
            except TimeoutError:
                if self.cancelled:
                    return False  # never acknowledged: do not reuse the connection
                raise TTSError(
                    "timeout",
                    f"The Volcano speech service sent nothing for {engine.read_timeout:g} s.",
                ) from None
            finally:
                self._receiving = None
            if frame.session_id not in (None, self.session_id):
                continue
            event = frame.event
            if frame.msg_type == MsgType.ERROR:
                if self.cancelled:
                    return False
                raise _frame_error(frame, "speaking")
            if event == Event.TTS_RESPONSE:
                if not self.cancelled:
                    for chunk in chunker.push(frame.payload):
                        await self._pipe.put(chunk)
            elif event == Event.SESSION_FINISHED:
                if not self.cancelled:
                    status = _status_code(frame)
                    if status not in (None, STATUS_OK):
                        raise _frame_error(frame, "finishing")
                    for chunk in chunker.flush():
                        await self._pipe.put(chunk)
                return True
            elif event == Event.SESSION_CANCELED:
                return True
            elif event == Event.SESSION_FAILED:
                if self.cancelled:
                    return True  # the session is over either way
                raise _frame_error(frame, "speaking")
            elif event in (Event.CONNECTION_FAILED, Event.CONNECTION_FINISHED):
                if self.cancelled:
                    return False
                raise _frame_error(frame, "speaking")
            # TTSSentenceStart/End (and events newer than this code) carry nothing needed.


def _on_sender_done(task: asyncio.Task[None], conn: _Connection) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        if not isinstance(error, ConnectionClosed | OSError):
            logger.error("Volcano speech sender failed", exc_info=error)
        conn.discard()


# -- errors ------------------------------------------------------------------------------


def _status_code(frame: Frame) -> int | None:
    try:
        code = frame.json().get("status_code")
    except (ValueError, OSError):
        return None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _frame_error(frame: Frame, when: str) -> TTSError:
    """The service's own words for a failure frame, or what we did not expect."""
    try:
        payload = frame.json()
    except (ValueError, OSError):
        payload = {}
    message = ""
    for key in ("message", "error", "status_text"):
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            message = _clip(value)
            break
    if not message and frame.payload and not payload:
        message = _clip(frame.payload.decode("utf-8", "replace"))
    code = frame.error_code if frame.msg_type == MsgType.ERROR else payload.get("status_code")
    if frame.msg_type == MsgType.ERROR or frame.event in (
        Event.CONNECTION_FAILED,
        Event.SESSION_FAILED,
        Event.SESSION_FINISHED,
    ):
        reason = f"The Volcano speech service reported an error while {when}"
        if code is not None:
            reason += f" (code {code})"
        if frame.event == Event.CONNECTION_FAILED:
            reason += "; check VOLCANO_APP_KEY, VOLCANO_ACCESS_KEY and VOLCANO_RESOURCE_ID"
        return TTSError("upstream_status", f"{reason}: {message}" if message else f"{reason}.")
    name = _event_name(frame.event)
    return TTSError(
        "malformed",
        f"The Volcano speech service sent {name} while {when}, which we did not expect.",
    )


def _event_name(event: int | None) -> str:
    if event is None:
        return "a frame without an event"
    try:
        return f"event {Event(event).name} ({event})"
    except ValueError:
        return f"event {event}"


def _message_from_text(text: str) -> str:
    try:
        parsed = json.loads(text)
    except ValueError:
        return _clip(text)
    if isinstance(parsed, dict):
        for key in ("message", "error", "Message"):
            value = parsed.get(key)
            if isinstance(value, str) and value.strip():
                return _clip(value)
            if isinstance(value, dict):
                inner = value.get("message") or value.get("Message")
                if isinstance(inner, str) and inner.strip():
                    return _clip(inner)
    return _clip(text)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MAX_REASON_CHARS:
        return text[: _MAX_REASON_CHARS - 1] + "…"
    return text


def _os_failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host not found"
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake failed"
    return _clip(str(exc)) or type(exc).__name__
