"""Loopback fake of Qwen-TTS on Alibaba Cloud Model Studio (DashScope), for tests.

FakeQwenServer: the two APIs described in ``voice/engines/qwen/``, each on its own port of
127.0.0.1, in one event loop (the test's, ``async with``; or a background thread's,
``with`` / ``start()``):

HTTP (``base_url`` = ``http://127.0.0.1:PORT/api/v1``), a real HTTP/1.1 server:

- ``POST /api/v1/services/aigc/multimodal-generation/generation`` with ``Authorization:
  Bearer <api_key>`` (else 401 ``{"code": "InvalidApiKey", "message", "request_id"}``) and
  ``{"model", "input": {"text", "voice", ...}}`` (else 400 ``InvalidParameter``).
  Without ``X-DashScope-SSE: enable`` it answers ``{"output": {"finish_reason": "stop",
  "audio": {"url", "id", "expires_at", "data": ""}}, "usage", "request_id"}`` where
  ``url`` is a signed-looking link to this server's ``/files/<id>.wav``; with it, a
  ``text/event-stream`` in DashScope's shape (``id:``, ``event:result``,
  ``:HTTP_STATUS/200``, ``data:``), each event carrying ``piece_bytes`` of base64 PCM
  and the last ``finish_reason: "stop"``.
- ``GET /files/<id>.wav``: the WAV file (24 kHz s16le mono, Content-Length), sent in
  ``piece_bytes`` pieces. It needs no key, as the vendor's object store; the request's
  headers are recorded so a test can see none was sent.

The audio is a tone of ``ms_per_char`` per character of ``input.text``. Scripted per
generation request (``server.script(...)``, then ``set_default``), :class:`QwenScenario`:
``normal()``; ``slow(delay)`` (a pause before each SSE event or file piece);
``endless(interval)`` (SSE events, or file pieces, until the client leaves);
``error_status(status, code, message)``; ``error_event(after, code, message)`` (SSE:
``after`` events then ``event:error``); ``disconnect(after)`` (``after`` events or file
pieces, then the server closes the socket); ``hang(after)`` (``after`` events or pieces,
then silence; 0 for the non-streaming answer itself); ``no_url()`` (200 JSON without
an audio URL); ``file_error(status)`` (the file GET answers the store's XML error).

Records: ``server.requests`` / ``server.request(n)`` → :class:`QwenRequest` (``kind``:
"generation", "file" or "other"; ``method``, ``path``, ``headers``, ``body``, ``sse``,
``connection``, ``sent`` (events or pieces), ``finished``, ``disconnected_at``,
``closed_by``). Waits: ``wait_request(n)``, ``wait_finished(n)``, ``wait_disconnect(n)``
and their ``await_*`` forms.

Realtime (``realtime_url`` = ``ws://127.0.0.1:PORT/api-ws/v1/realtime``), a ``websockets``
server: the handshake needs the bearer key (else 401 with the JSON body above) and
``?model=``. It sends ``session.created`` at once; the first client event must be
``session.update`` (``voice``, ``response_format: "pcm"``, ``sample_rate``, ``mode``),
answered by ``session.updated``; each ``input_text_buffer.append`` is spoken right away
as one response (``response.created``, output item and content part added,
``response.audio.delta`` of ``frame_ms`` each, their ``.done`` events, ``response.done``);
``session.finish`` gets the rest, ``session.finished`` and the server's close. Every
client event needs a unique ``event_id``. Anything against the protocol is answered
with an ``error`` event and listed in ``server.protocol_errors``. Scripted per
connection, :class:`QwenRealtimeScenario`: ``normal()``; ``slow(interval)``;
``endless(interval)`` (after the first text, audio until the client leaves or
finishes); ``reject_session(message)`` (``error`` instead of ``session.updated``);
``fail_after_text(code, message)`` (an ``error`` event after the first text);
``drop_after_text()`` (the server aborts the TCP connection); ``silent_finish()`` (never
answers ``session.finish``).

Records: ``server.events`` (every client event, :class:`QwenEvent`: ``connection``,
``type``, ``payload``, ``text``), ``server.sent`` (``(connection, type)`` of every event
sent), ``server.sockets`` (:class:`QwenSocket`: ``path``, ``headers``, ``closed_at``).
Waits: ``wait_events(type, count)``, ``wait_sent(type, count)``, ``wait_closed(n)`` and
their ``await_*`` forms.
"""

from __future__ import annotations

import asyncio
import base64
import http
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support.loopback import Connection, LoopbackHTTPServer, ThreadRunner
from tests.support.tts.common import Waiter, read_request, send_json, tone, wav_header

#: The rate of everything the fake speaks (the service's for qwen3-tts).
QWEN_SAMPLE_RATE = 24000
GENERATION_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
REALTIME_PATH = "/api-ws/v1/realtime"

QwenMode = Literal[
    "normal",
    "slow",
    "endless",
    "error_status",
    "error_event",
    "disconnect",
    "hang",
    "no_url",
    "file_error",
]


@dataclass(frozen=True, slots=True)
class QwenScenario:
    mode: QwenMode = "normal"
    ms_per_char: float = 20.0
    piece_bytes: int = 4800  # 0.1 s of 24 kHz PCM per SSE event or file piece
    delay: float = 0.0
    after: int = 1
    status: int = 500
    code: str = "InternalError"
    message: str = "An internal error has occured, please try again later."

    @classmethod
    def normal(cls, **kw: Any) -> QwenScenario:
        return cls(mode="normal", **kw)

    @classmethod
    def slow(cls, delay: float = 0.05, **kw: Any) -> QwenScenario:
        return cls(mode="slow", delay=delay, **kw)

    @classmethod
    def endless(cls, interval: float = 0.02, **kw: Any) -> QwenScenario:
        return cls(mode="endless", delay=interval, **kw)

    @classmethod
    def error_status(
        cls,
        status: int = 400,
        code: str = "InvalidParameter",
        message: str = "The voice is not supported by the model.",
        **kw: Any,
    ) -> QwenScenario:
        return cls(mode="error_status", status=status, code=code, message=message, **kw)

    @classmethod
    def error_event(
        cls,
        after: int = 1,
        code: str = "DataInspectionFailed",
        message: str = "Output data may contain inappropriate content.",
        **kw: Any,
    ) -> QwenScenario:
        return cls(mode="error_event", after=after, code=code, message=message, **kw)

    @classmethod
    def disconnect(cls, after: int = 1, **kw: Any) -> QwenScenario:
        return cls(mode="disconnect", after=after, **kw)

    @classmethod
    def hang(cls, after: int = 0, **kw: Any) -> QwenScenario:
        return cls(mode="hang", after=after, **kw)

    @classmethod
    def no_url(cls, **kw: Any) -> QwenScenario:
        return cls(mode="no_url", **kw)

    @classmethod
    def file_error(cls, status: int = 403, **kw: Any) -> QwenScenario:
        return cls(mode="file_error", status=status, message="Request has expired.", **kw)


@dataclass(slots=True)
class QwenRequest:
    index: int
    kind: Literal["generation", "file", "other"]
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float
    connection: int
    sse: bool = False
    scenario: QwenScenario | None = None
    sent: int = 0
    finished: bool = False
    disconnected_at: float | None = None
    closed_by: Literal["client", "server"] | None = None


@dataclass(slots=True)
class _File:
    """An audio file the generation call made, as the service's store would keep it."""

    ident: str
    pcm: bytes
    scenario: QwenScenario


def _dashscope_error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message, "request_id": str(uuid.uuid4())}


class _QwenHTTP(LoopbackHTTPServer):
    def __init__(self, owner: FakeQwenServer, host: str) -> None:
        super().__init__(name="fake-qwen-http", host=host, port=0)
        self._owner = owner
        self._files: dict[str, _File] = {}

    def connection_closed(self, conn: Connection) -> None:
        owner = self._owner
        with owner._waiter.cond:
            for r in owner._requests:
                if r.connection == conn.ident and r.disconnected_at is None:
                    r.disconnected_at = conn.closed_at
                    r.closed_by = "server" if conn.closing_by_server else "client"
            owner._waiter.cond.notify_all()

    async def _serve_one(self, conn: Connection) -> bool:
        request = await read_request(conn)
        if request is None:
            return False
        try:
            body = json.loads(request.raw_body) if request.raw_body else None
        except ValueError:
            body = None
        path = request.path
        kind: Literal["generation", "file", "other"] = "other"
        if request.method == "POST" and path == GENERATION_PATH:
            kind = "generation"
        elif request.method == "GET" and path.startswith("/files/"):
            kind = "file"
        owner = self._owner
        with owner._waiter.cond:
            record = QwenRequest(
                index=len(owner._requests),
                kind=kind,
                method=request.method,
                path=path,
                headers=request.headers,
                body=body,
                received_at=time.monotonic(),
                connection=conn.ident,
                sse=request.headers.get("x-dashscope-sse") == "enable",
            )
            owner._requests.append(record)
            owner._waiter.cond.notify_all()
        if kind == "generation":
            keep_alive = await self._generation(conn, record, body)
        elif kind == "file":
            keep_alive = await self._file(conn, record, path)
        else:
            error = _dashscope_error("NotFound", f"No such API: {request.method} {path}")
            await send_json(conn, 404, error)
            keep_alive = True
        return keep_alive and not conn.closed.is_set()

    async def _generation(self, conn: Connection, record: QwenRequest, body: Any) -> bool:
        owner = self._owner
        s = owner._next()
        with owner._waiter.cond:
            record.scenario = s
        if record.headers.get("authorization") != f"Bearer {owner.api_key}":
            error = _dashscope_error("InvalidApiKey", "Invalid API-key provided.")
            await send_json(conn, 401, error)
            return True
        speech = body.get("input") if isinstance(body, dict) else None
        if (
            not isinstance(speech, dict)
            or not body.get("model")
            or not isinstance(speech.get("text"), str)
            or not speech["text"].strip()
            or not speech.get("voice")
        ):
            error = _dashscope_error("InvalidParameter", "Missing model, input.text or voice.")
            await send_json(conn, 400, error)
            return True
        if s.mode == "error_status":
            await send_json(conn, s.status, _dashscope_error(s.code, s.message))
            return True
        pcm = tone(len(speech["text"]) * s.ms_per_char / 1000, QWEN_SAMPLE_RATE)
        if record.sse:
            return await self._stream(conn, record, s, pcm)
        if s.mode == "hang":
            await conn.gone_within(None)
            return False
        ident = uuid.uuid4().hex
        self._files[ident] = _File(ident=ident, pcm=pcm, scenario=s)
        audio: dict[str, Any] = {"id": f"audio_{ident}", "expires_at": int(time.time()) + 86400}
        audio["data"] = ""
        if s.mode != "no_url":
            audio["url"] = (
                f"http://{self.host}:{self.port}/files/{ident}.wav"
                f"?Expires={audio['expires_at']}&OSSAccessKeyId=fake&Signature=fake%3D"
            )
        answer = {
            "output": {"finish_reason": "stop", "audio": audio},
            "usage": {"characters": len(speech["text"])},
            "request_id": str(uuid.uuid4()),
        }
        ok = await send_json(conn, 200, answer)
        with owner._waiter.cond:
            record.finished = ok
            owner._waiter.cond.notify_all()
        return ok

    async def _stream(
        self, conn: Connection, record: QwenRequest, s: QwenScenario, pcm: bytes
    ) -> bool:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream;charset=UTF-8\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        if not await conn.send(head.encode()):
            return False
        request_id = str(uuid.uuid4())
        pieces = [pcm[at : at + s.piece_bytes] for at in range(0, len(pcm), s.piece_bytes)]
        n = 0

        async def event(payload: dict[str, Any], kind: str = "result", status: int = 200) -> bool:
            nonlocal n
            n += 1
            data = json.dumps(payload)
            text = f"id:{n}\nevent:{kind}\n:HTTP_STATUS/{status}\ndata:{data}\n\n".encode()
            if not await conn.send(f"{len(text):x}\r\n".encode() + text + b"\r\n"):
                return False
            with self._owner._waiter.cond:
                record.sent += 1
                self._owner._waiter.cond.notify_all()
            return True

        def result(piece: bytes, finish: str = "null") -> dict[str, Any]:
            audio = {"data": base64.b64encode(piece).decode(), "id": f"audio_{request_id}"}
            return {
                "output": {"finish_reason": finish, "audio": audio},
                "usage": {"characters": 0},
                "request_id": request_id,
            }

        sequence = itertools.cycle(pieces) if s.mode == "endless" else iter(pieces)
        for index, piece in enumerate(sequence):
            if index == s.after and s.mode in ("error_event", "disconnect", "hang"):
                if s.mode == "error_event":
                    error = _dashscope_error(s.code, s.message)
                    await event(error, kind="error", status=400)
                    await conn.send(b"0\r\n\r\n")
                    return True
                if s.mode == "disconnect":
                    await conn.close()
                else:
                    await conn.gone_within(None)
                return False
            if s.delay and await conn.gone_within(s.delay):
                return False
            if not await event(result(piece)):
                return False
        if not await event(result(b"", finish="stop")):
            return False
        if not await conn.send(b"0\r\n\r\n"):
            return False
        with self._owner._waiter.cond:
            record.finished = not conn.closed.is_set()
            self._owner._waiter.cond.notify_all()
        return True

    async def _file(self, conn: Connection, record: QwenRequest, path: str) -> bool:
        ident = path.removeprefix("/files/").removesuffix(".wav")
        stored = self._files.get(ident)
        if stored is None or stored.scenario.mode == "file_error":
            status = stored.scenario.status if stored is not None else 404
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>AccessDenied</Code>\n'
                f"  <Message>{stored.scenario.message if stored else 'No such key.'}</Message>\n"
                "  <RequestId>fake</RequestId>\n</Error>\n"
            ).encode()
            head = (
                f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
                f"Content-Type: application/xml\r\nContent-Length: {len(xml)}\r\n\r\n"
            )
            return await conn.send(head.encode() + xml)
        s = stored.scenario
        endless = s.mode == "endless"
        data = wav_header(QWEN_SAMPLE_RATE, 0xFFFFFFFF if endless else len(stored.pcm))
        data += stored.pcm
        framing = "Transfer-Encoding: chunked" if endless else f"Content-Length: {len(data)}"
        head = f"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n{framing}\r\n\r\n"
        if not await conn.send(head.encode()):
            return False
        pieces = [data[at : at + s.piece_bytes] for at in range(0, len(data), s.piece_bytes)]
        if endless:  # then the tone again and again, until the client leaves
            again = itertools.cycle([stored.pcm[: s.piece_bytes - s.piece_bytes % 2]])
            pieces = itertools.chain(pieces, again)  # type: ignore[assignment]
        for index, piece in enumerate(pieces):
            if index == s.after and s.mode in ("disconnect", "hang"):
                if s.mode == "disconnect":
                    await conn.close()
                else:
                    await conn.gone_within(None)
                return False
            if s.delay and await conn.gone_within(s.delay):
                return False
            if endless:
                piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            if not await conn.send(piece):
                return False
            with self._owner._waiter.cond:
                record.sent += 1
                self._owner._waiter.cond.notify_all()
        if endless and not await conn.send(b"0\r\n\r\n"):
            return False
        with self._owner._waiter.cond:
            record.finished = not conn.closed.is_set()
            self._owner._waiter.cond.notify_all()
        return True


# == the realtime WebSocket ================================================================

RealtimeMode = Literal[
    "normal",
    "slow",
    "endless",
    "reject_session",
    "fail_after_text",
    "drop_after_text",
    "silent_finish",
]


@dataclass(frozen=True, slots=True)
class QwenRealtimeScenario:
    mode: RealtimeMode = "normal"
    ms_per_char: float = 20.0
    frame_ms: float = 40.0
    interval: float = 0.0
    code: str = "InternalError"
    message: str = "synthesis failed"

    @classmethod
    def normal(cls, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="normal", **kw)

    @classmethod
    def slow(cls, interval: float = 0.05, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="slow", interval=interval, **kw)

    @classmethod
    def endless(cls, interval: float = 0.02, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="endless", interval=interval, **kw)

    @classmethod
    def reject_session(
        cls, message: str = "Invalid value: 'Nobody'. Supported values are: 'Cherry'.", **kw: Any
    ) -> QwenRealtimeScenario:
        return cls(mode="reject_session", code="invalid_value", message=message, **kw)

    @classmethod
    def fail_after_text(
        cls, code: str = "InternalError", message: str = "synthesis failed", **kw: Any
    ) -> QwenRealtimeScenario:
        return cls(mode="fail_after_text", code=code, message=message, **kw)

    @classmethod
    def drop_after_text(cls, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="drop_after_text", **kw)

    @classmethod
    def silent_finish(cls, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="silent_finish", **kw)


@dataclass(frozen=True, slots=True)
class QwenEvent:
    """A client event the fake received."""

    index: int
    connection: int
    type: str
    payload: dict[str, Any]
    received_at: float

    @property
    def text(self) -> str | None:
        value = self.payload.get("text")
        return value if isinstance(value, str) else None


@dataclass(slots=True)
class QwenSocket:
    ident: int
    path: str
    headers: dict[str, str]
    opened_at: float
    closed_at: float | None = None

    @property
    def model(self) -> str | None:
        values = parse_qs(urlsplit(self.path).query).get("model")
        return values[0] if values else None


@dataclass(slots=True)
class _Session:
    ident: int
    ws: ServerConnection
    scenario: QwenRealtimeScenario
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    config: dict[str, Any] | None = None
    event_ids: set[str] = field(default_factory=set)
    texts: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    speaker: asyncio.Task[None] | None = None
    finishing: bool = False


class FakeQwenServer:
    def __init__(
        self,
        default: QwenScenario | None = None,
        realtime_default: QwenRealtimeScenario | None = None,
        *,
        api_key: str = "sk-test-qwen",
        realtime_model: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.api_key = api_key
        self.realtime_model = realtime_model  # if set, the handshake's ?model= must be it
        self.host = host
        self._default = default or QwenScenario.normal()
        self._queue: deque[QwenScenario] = deque()
        self._realtime_default = realtime_default or QwenRealtimeScenario.normal()
        self._realtime_queue: deque[QwenRealtimeScenario] = deque()
        self._requests: list[QwenRequest] = []
        self._events: list[QwenEvent] = []
        self._sent: list[tuple[int, str]] = []
        self._sockets: list[QwenSocket] = []
        self._protocol_errors: list[str] = []
        self._waiter = Waiter()
        self._ids = itertools.count(1)
        self._http = _QwenHTTP(self, host)
        self._ws_server: Server | None = None
        self.realtime_port = 0
        self._runner = ThreadRunner("fake-qwen-server", self.astart, self.astop)

    @property
    def base_url(self) -> str:
        if not self._http.port:
            raise RuntimeError("the fake Qwen server is not started")
        return f"http://{self.host}:{self._http.port}/api/v1"

    @property
    def realtime_url(self) -> str:
        if not self.realtime_port:
            raise RuntimeError("the fake Qwen server is not started")
        return f"ws://{self.host}:{self.realtime_port}{REALTIME_PATH}"

    def set_default(self, scenario: QwenScenario) -> None:
        with self._waiter.cond:
            self._default = scenario

    def script(self, *scenarios: QwenScenario) -> None:
        with self._waiter.cond:
            self._queue.extend(scenarios)

    def script_realtime(self, *scenarios: QwenRealtimeScenario) -> None:
        with self._waiter.cond:
            self._realtime_queue.extend(scenarios)

    def _next(self) -> QwenScenario:
        with self._waiter.cond:
            return self._queue.popleft() if self._queue else self._default

    # -- what it saw: HTTP ---------------------------------------------------------------

    @property
    def requests(self) -> list[QwenRequest]:
        with self._waiter.cond:
            return [replace(r, headers=dict(r.headers)) for r in self._requests]

    def request(self, index: int) -> QwenRequest:
        with self._waiter.cond:
            return replace(self._requests[index], headers=dict(self._requests[index].headers))

    def _wait_on(
        self, index: int, ready: Callable[[QwenRequest], bool], what: str, timeout: float
    ) -> QwenRequest:
        def check() -> QwenRequest | None:
            if len(self._requests) > index and ready(self._requests[index]):
                return replace(self._requests[index])
            return None

        return self._waiter.wait(check, timeout, f"request {index}: {what}")

    def wait_request(self, index: int = 0, timeout: float = 5.0) -> QwenRequest:
        return self._wait_on(index, lambda r: True, "arrive", timeout)

    def wait_finished(self, index: int = 0, timeout: float = 5.0) -> QwenRequest:
        return self._wait_on(index, lambda r: r.finished, "finish", timeout)

    def wait_disconnect(self, index: int = 0, timeout: float = 5.0) -> QwenRequest:
        return self._wait_on(index, lambda r: r.disconnected_at is not None, "disconnect", timeout)

    async def await_request(self, index: int = 0, timeout: float = 5.0) -> QwenRequest:
        return await asyncio.to_thread(self.wait_request, index, timeout)

    async def await_finished(self, index: int = 0, timeout: float = 5.0) -> QwenRequest:
        return await asyncio.to_thread(self.wait_finished, index, timeout)

    async def await_disconnect(self, index: int = 0, timeout: float = 5.0) -> QwenRequest:
        return await asyncio.to_thread(self.wait_disconnect, index, timeout)

    # -- what it saw: realtime -----------------------------------------------------------

    @property
    def events(self) -> list[QwenEvent]:
        with self._waiter.cond:
            return list(self._events)

    def events_of(self, kind: str) -> list[QwenEvent]:
        return [e for e in self.events if e.type == kind]

    @property
    def sent(self) -> list[tuple[int, str]]:
        with self._waiter.cond:
            return list(self._sent)

    @property
    def sockets(self) -> list[QwenSocket]:
        with self._waiter.cond:
            return [replace(c, headers=dict(c.headers)) for c in self._sockets]

    @property
    def protocol_errors(self) -> list[str]:
        with self._waiter.cond:
            return list(self._protocol_errors)

    def wait_events(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[QwenEvent]:
        def ready() -> list[QwenEvent] | None:
            found = [e for e in self._events if e.type == kind]
            return found if len(found) >= count else None

        return self._waiter.wait(ready, timeout, f"{count} client event(s) {kind}")

    def wait_sent(self, kind: str, count: int = 1, timeout: float = 5.0) -> int:
        def ready() -> int | None:
            n = sum(1 for _, k in self._sent if k == kind)
            return n if n >= count else None

        return self._waiter.wait(ready, timeout, f"{count} sent event(s) {kind}")

    def wait_closed(self, socket: int, timeout: float = 5.0) -> QwenSocket:
        def ready() -> QwenSocket | None:
            for c in self._sockets:
                if c.ident == socket and c.closed_at is not None:
                    return replace(c)
            return None

        return self._waiter.wait(ready, timeout, f"socket {socket} closing")

    async def await_events(
        self, kind: str, count: int = 1, timeout: float = 5.0
    ) -> list[QwenEvent]:
        return await asyncio.to_thread(self.wait_events, kind, count, timeout)

    async def await_sent(self, kind: str, count: int = 1, timeout: float = 5.0) -> int:
        return await asyncio.to_thread(self.wait_sent, kind, count, timeout)

    async def await_closed(self, socket: int, timeout: float = 5.0) -> QwenSocket:
        return await asyncio.to_thread(self.wait_closed, socket, timeout)

    # -- running -------------------------------------------------------------------------

    async def astart(self) -> FakeQwenServer:
        await self._http.astart()
        self._ws_server = await serve(
            self._handle, self.host, 0, process_request=self._check_handshake
        )
        self.realtime_port = next(iter(self._ws_server.sockets)).getsockname()[1]
        return self

    async def astop(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None
        await self._http.astop()

    async def __aenter__(self) -> FakeQwenServer:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def start(self) -> FakeQwenServer:
        self._runner.start()
        return self

    def stop(self) -> None:
        self._runner.stop()

    def __enter__(self) -> FakeQwenServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the realtime protocol -----------------------------------------------------------

    def _check_handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        problem: tuple[int, str, str] | None = None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            problem = (401, "InvalidApiKey", "Invalid API-key provided.")
        elif url.path != REALTIME_PATH:
            problem = (404, "NotFound", f"No such API: {url.path}")
        else:
            model = parse_qs(url.query).get("model")
            if not model or (self.realtime_model is not None and model[0] != self.realtime_model):
                problem = (400, "InvalidParameter", f"Model not found: {model}")
        if problem is None:
            return None
        status, code, message = problem
        response = ws.respond(http.HTTPStatus(status), json.dumps(_dashscope_error(code, message)))
        response.headers["Content-Type"] = "application/json"
        return response

    def _protocol_error(self, message: str) -> None:
        with self._waiter.cond:
            self._protocol_errors.append(message)
            self._waiter.cond.notify_all()

    async def _send(self, to: _Session, kind: str, /, **fields: Any) -> None:
        event = {"event_id": f"event_{uuid.uuid4().hex[:21]}", "type": kind, **fields}
        async with to.lock:
            await to.ws.send(json.dumps(event))
        with self._waiter.cond:
            self._sent.append((to.ident, kind))
            self._waiter.cond.notify_all()

    async def _handle(self, ws: ServerConnection) -> None:
        ident = next(self._ids)
        request = ws.request
        record = QwenSocket(
            ident=ident,
            path=request.path if request else "",
            headers=dict(request.headers.raw_items()) if request else {},
            opened_at=time.monotonic(),
        )
        with self._waiter.cond:
            self._sockets.append(record)
            scenario = (
                self._realtime_queue.popleft() if self._realtime_queue else self._realtime_default
            )
            self._waiter.cond.notify_all()
        session = _Session(ident=ident, ws=ws, scenario=scenario)
        try:
            await self._send(
                session,
                "session.created",
                session={
                    "object": "realtime.session",
                    "mode": "server_commit",
                    "model": record.model,
                    "voice": "Cherry",
                    "response_format": "pcm",
                    "sample_rate": QWEN_SAMPLE_RATE,
                    "id": f"sess_{ident}",
                },
            )
            async for message in ws:
                if not await self._on_message(session, message):
                    break
        except ConnectionClosed:
            pass
        finally:
            if session.speaker is not None:
                session.speaker.cancel()
                await asyncio.gather(session.speaker, return_exceptions=True)
            with self._waiter.cond:
                record.closed_at = time.monotonic()
                self._waiter.cond.notify_all()

    async def _reject(self, session: _Session, problem: str) -> None:
        self._protocol_error(f"socket {session.ident}: {problem}")
        await self._send(
            session,
            "error",
            error={"type": "invalid_request_error", "code": "invalid_value", "message": problem},
        )

    async def _on_message(self, session: _Session, message: str | bytes) -> bool:
        if not isinstance(message, str):
            await self._reject(session, "a binary message")
            return True
        try:
            event = json.loads(message)
        except ValueError:
            await self._reject(session, "a message that is not JSON")
            return True
        if not isinstance(event, dict):
            await self._reject(session, "an event that is not an object")
            return True
        kind = event.get("type")
        with self._waiter.cond:
            self._events.append(
                QwenEvent(
                    index=len(self._events),
                    connection=session.ident,
                    type=str(kind),
                    payload=event,
                    received_at=time.monotonic(),
                )
            )
            self._waiter.cond.notify_all()
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id or event_id in session.event_ids:
            await self._reject(session, f"{kind}: a missing or repeated event_id")
            return True
        session.event_ids.add(event_id)
        if session.finishing:
            await self._reject(session, f"{kind} after session.finish")
            return True
        if kind == "session.update":
            return await self._update(session, event)
        if session.config is None:
            await self._reject(session, f"{kind} before session.update")
            return True
        if kind == "input_text_buffer.append":
            text = event.get("text")
            if not isinstance(text, str):
                await self._reject(session, "input_text_buffer.append without text")
                return True
            session.texts.put_nowait(text)
        elif kind == "session.finish":
            session.finishing = True
            session.texts.put_nowait(None)
        else:
            await self._reject(session, f"unexpected event {kind}")
        return True

    async def _update(self, session: _Session, event: dict[str, Any]) -> bool:
        config = event.get("session")
        if session.config is not None:
            await self._reject(session, "a second session.update (the fake takes one)")
            return True
        if (
            not isinstance(config, dict)
            or not config.get("voice")
            or config.get("response_format") != "pcm"
            or config.get("sample_rate") != QWEN_SAMPLE_RATE
            or config.get("mode") not in ("server_commit", "commit")
        ):
            await self._reject(session, f"session.update the fake cannot honour: {config}")
            return True
        s = session.scenario
        if s.mode == "reject_session":
            error = {"type": "invalid_request_error", "code": s.code, "message": s.message}
            await self._send(session, "error", error=error)
            return True
        session.config = config
        await self._send(
            session, "session.updated", session={**config, "id": f"sess_{session.ident}"}
        )
        session.speaker = asyncio.create_task(self._speak(session))
        return True

    async def _speak(self, session: _Session) -> None:
        """One response per appended text, in order; session.finished after finish."""
        s = session.scenario
        first = True
        try:
            while True:
                text = await session.texts.get()
                if text is None:
                    break
                if first and s.mode in ("fail_after_text", "drop_after_text"):
                    if s.mode == "drop_after_text":
                        assert session.ws.transport is not None
                        session.ws.transport.abort()
                        return
                    error = {"type": "server_error", "code": s.code, "message": s.message}
                    await self._send(session, "error", error=error)
                    return
                await self._response(session, text)
                if first and s.mode == "endless":
                    await self._endless(session)
                    return
                first = False
            if s.mode == "silent_finish":
                return
            await self._send(session, "session.finished")
            await session.ws.close()
        except ConnectionClosed:
            pass

    async def _response(self, session: _Session, text: str) -> None:
        s = session.scenario
        rid = f"resp_{uuid.uuid4().hex[:12]}"
        iid = f"item_{uuid.uuid4().hex[:12]}"
        part = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        await self._send(session, "response.created", response={"id": rid, "status": "in_progress"})
        await self._send(
            session,
            "response.output_item.added",
            response_id=rid,
            output_index=0,
            item={"id": iid, "type": "message", "role": "assistant"},
        )
        await self._send(session, "response.content_part.added", **part, part={"type": "audio"})
        audio = tone(len(text) * s.ms_per_char / 1000, QWEN_SAMPLE_RATE)
        step = max(2, round(QWEN_SAMPLE_RATE * s.frame_ms / 1000) * 2)
        for at in range(0, len(audio), step):
            if s.interval:
                await asyncio.sleep(s.interval)  # server behaviour: audio made in real time
            delta = base64.b64encode(audio[at : at + step]).decode()
            await self._send(session, "response.audio.delta", **part, delta=delta)
        await self._send(session, "response.audio.done", **part)
        await self._send(session, "response.content_part.done", **part)
        await self._send(session, "response.output_item.done", response_id=rid, output_index=0)
        await self._send(session, "response.done", response={"id": rid, "status": "completed"})

    async def _endless(self, session: _Session) -> None:
        """Audio every ``interval`` until the client finishes or leaves."""
        s = session.scenario
        frame = base64.b64encode(tone(s.frame_ms / 1000, QWEN_SAMPLE_RATE)).decode()
        part = {"response_id": "resp_endless", "item_id": "item_endless"}
        while True:
            try:
                async with asyncio.timeout(s.interval):
                    text = await session.texts.get()
            except TimeoutError:
                await self._send(session, "response.audio.delta", **part, delta=frame)
                continue
            if text is None:
                await self._send(session, "session.finished")
                await session.ws.close()
                return


__all__ = [
    "GENERATION_PATH",
    "QWEN_SAMPLE_RATE",
    "REALTIME_PATH",
    "FakeQwenServer",
    "QwenEvent",
    "QwenRealtimeScenario",
    "QwenRequest",
    "QwenScenario",
    "QwenSocket",
]
