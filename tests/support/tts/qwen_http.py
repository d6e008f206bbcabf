"""The HTTP half of the Qwen-TTS fake (``tests/support/tts/qwen.py`` puts both together).

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
"""

from __future__ import annotations

import base64
import http
import itertools
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from tests.support.loopback import Connection
from tests.support.tts.common import RecordingServer, read_request, send_json, tone, wav_header

#: The rate of everything the fake speaks (the service's for qwen3-tts).
QWEN_SAMPLE_RATE = 24000
GENERATION_PATH = "/api/v1/services/aigc/multimodal-generation/generation"


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


def dashscope_error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message, "request_id": str(uuid.uuid4())}


class QwenHTTPServer(RecordingServer[QwenRequest]):
    """The HTTP API and the audio files' store, on one port."""

    def __init__(
        self,
        default: QwenScenario | None = None,
        *,
        api_key: str = "sk-test-qwen",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(name="fake-qwen-http", host=host, port=port)
        self.api_key = api_key
        self._default = default or QwenScenario.normal()
        self._queue: deque[QwenScenario] = deque()
        self._files: dict[str, _File] = {}

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the fake Qwen server is not started")
        return f"http://{self.host}:{self.port}/api/v1"

    def set_default(self, scenario: QwenScenario) -> None:
        with self._waiter.cond:
            self._default = scenario

    def script(self, *scenarios: QwenScenario) -> None:
        with self._waiter.cond:
            self._queue.extend(scenarios)

    def _next(self) -> QwenScenario:
        with self._waiter.cond:
            return self._queue.popleft() if self._queue else self._default

    # -- running -------------------------------------------------------------------------

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
        with self._waiter.cond:
            record = QwenRequest(
                index=len(self._requests),
                kind=kind,
                method=request.method,
                path=path,
                headers=request.headers,
                body=body,
                received_at=time.monotonic(),
                connection=conn.ident,
                sse=request.headers.get("x-dashscope-sse") == "enable",
            )
            self._requests.append(record)
            self._waiter.cond.notify_all()
        if kind == "generation":
            keep_alive = await self._generation(conn, record, body)
        elif kind == "file":
            keep_alive = await self._file(conn, record, path)
        else:
            error = dashscope_error("NotFound", f"No such API: {request.method} {path}")
            await send_json(conn, 404, error)
            keep_alive = True
        return keep_alive and not conn.closed.is_set()

    async def _generation(self, conn: Connection, record: QwenRequest, body: Any) -> bool:
        s = self._next()
        with self._waiter.cond:
            record.scenario = s
        if record.headers.get("authorization") != f"Bearer {self.api_key}":
            error = dashscope_error("InvalidApiKey", "Invalid API-key provided.")
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
            error = dashscope_error("InvalidParameter", "Missing model, input.text or voice.")
            await send_json(conn, 400, error)
            return True
        if s.mode == "error_status":
            await send_json(conn, s.status, dashscope_error(s.code, s.message))
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
        with self._waiter.cond:
            record.finished = ok
            self._waiter.cond.notify_all()
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
            with self._waiter.cond:
                record.sent += 1
                self._waiter.cond.notify_all()
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
                    error = dashscope_error(s.code, s.message)
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
        with self._waiter.cond:
            record.finished = not conn.closed.is_set()
            self._waiter.cond.notify_all()
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
            with self._waiter.cond:
                record.sent += 1
                self._waiter.cond.notify_all()
        if endless and not await conn.send(b"0\r\n\r\n"):
            return False
        with self._waiter.cond:
            record.finished = not conn.closed.is_set()
            self._waiter.cond.notify_all()
        return True
