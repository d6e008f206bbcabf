"""Loopback fake of an OpenAI-compatible speech server, for tests.

FakeSpeechServer: OpenAI ``POST /v1/audio/speech``
-------------------------------------------------
A real HTTP/1.1 server (``asyncio.start_server``; connection handling shared with
``tests/support/openai_server.py``). It answers a speech request with a tone whose
length is ``ms_per_char`` per input character, in the requested ``response_format``:
``pcm`` (24 kHz s16le mono, no header) or ``wav`` (a RIFF header at ``wav_sample_rate``,
with the data size a streaming server writes: 0xFFFFFFFF, or the exact size with
``exact_wav_size``). The body goes out in ``piece_bytes`` pieces with chunked transfer
encoding. With ``api_key`` set, a request without ``Authorization: Bearer <key>`` gets
OpenAI's 401. Scripted per request (``server.script(s1, s2, ...)``, then
``server.set_default(s)``), :class:`SpeechScenario`:

- ``normal()``; ``slow(delay)`` (a pause before each piece); ``endless(interval)``
  (audio until the client leaves); ``hang(after)`` (``after`` pieces, then silence);
  ``disconnect(after)`` (``after`` pieces, then the server closes the socket);
  ``error_status(status, message)`` (an OpenAI-style JSON error); ``json_instead()``
  (200 with a JSON body instead of audio).

Records: ``server.requests`` / ``server.request(n)`` → :class:`SpeechRequest` (``body``,
``headers``, ``connection``, ``bytes_sent``, ``finished``, ``disconnected_at``,
``closed_by``). Waits: ``wait_request(n)``, ``wait_finished(n)``, ``wait_disconnect(n)``
and their ``await_*`` forms.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from tests.support.loopback import Connection
from tests.support.tts.common import RecordingServer, read_request, send_json, tone, wav_header

#: The rate of OpenAI's ``pcm`` format.
PCM_SAMPLE_RATE = 24000


SpeechMode = Literal[
    "normal", "slow", "endless", "hang", "disconnect", "error_status", "json_instead"
]


@dataclass(frozen=True, slots=True)
class SpeechScenario:
    mode: SpeechMode = "normal"
    ms_per_char: float = 30.0
    piece_bytes: int = 4800
    delay: float = 0.0
    after: int = 1
    status: int = 500
    message: str = "The server had an error while processing your request."
    wav_sample_rate: int = 22050
    exact_wav_size: bool = False

    @classmethod
    def normal(cls, **kw: Any) -> SpeechScenario:
        return cls(mode="normal", **kw)

    @classmethod
    def slow(cls, delay: float = 0.05, **kw: Any) -> SpeechScenario:
        return cls(mode="slow", delay=delay, **kw)

    @classmethod
    def endless(cls, interval: float = 0.02, **kw: Any) -> SpeechScenario:
        return cls(mode="endless", delay=interval, **kw)

    @classmethod
    def hang(cls, after: int = 1, **kw: Any) -> SpeechScenario:
        return cls(mode="hang", after=after, **kw)

    @classmethod
    def disconnect(cls, after: int = 1, **kw: Any) -> SpeechScenario:
        return cls(mode="disconnect", after=after, **kw)

    @classmethod
    def error_status(
        cls, status: int = 500, message: str = "The speech model is overloaded.", **kw: Any
    ) -> SpeechScenario:
        return cls(mode="error_status", status=status, message=message, **kw)

    @classmethod
    def json_instead(cls, message: str = "Input text is empty.", **kw: Any) -> SpeechScenario:
        return cls(mode="json_instead", message=message, **kw)


@dataclass(slots=True)
class SpeechRequest:
    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float
    connection: int
    scenario: SpeechScenario | None = None
    bytes_sent: int = 0
    finished: bool = False
    disconnected_at: float | None = None
    closed_by: Literal["client", "server"] | None = None


class FakeSpeechServer(RecordingServer[SpeechRequest]):
    def __init__(
        self,
        default: SpeechScenario | None = None,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(name="fake-speech-server", host=host, port=port)
        self.api_key = api_key
        self._default = default or SpeechScenario.normal()
        self._queue: deque[SpeechScenario] = deque()

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the fake speech server is not started")
        return f"http://{self.host}:{self.port}/v1"

    def set_default(self, scenario: SpeechScenario) -> None:
        with self._waiter.cond:
            self._default = scenario

    def script(self, *scenarios: SpeechScenario) -> None:
        with self._waiter.cond:
            self._queue.extend(scenarios)

    # -- running -------------------------------------------------------------------------

    async def _serve_one(self, conn: Connection) -> bool:
        request = await read_request(conn)
        if request is None:
            return False
        method = request.method
        try:
            body = json.loads(request.raw_body) if request.raw_body else None
        except ValueError:
            body = None
        with self._waiter.cond:
            record = SpeechRequest(
                index=len(self._requests),
                method=method,
                path=request.path,
                headers=request.headers,
                body=body,
                received_at=time.monotonic(),
                connection=conn.ident,
            )
            self._requests.append(record)
            self._waiter.cond.notify_all()
        if method == "POST" and record.path.endswith("/audio/speech"):
            keep_alive = await self._speech(conn, record, body)
        else:
            await send_json(conn, 404, _openai_error(f"Unknown URL: {method} {record.path}"))
            keep_alive = True
        return keep_alive and not conn.closed.is_set()

    def _next(self) -> SpeechScenario:
        with self._waiter.cond:
            return self._queue.popleft() if self._queue else self._default

    async def _speech(self, conn: Connection, record: SpeechRequest, body: Any) -> bool:
        s = self._next()
        with self._waiter.cond:
            record.scenario = s
        if (
            self.api_key is not None
            and record.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            await send_json(conn, 401, _openai_error("Incorrect API key provided."))
            return True
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("input"), str)
            or not body.get("model")
            or not body.get("voice")
        ):
            await send_json(conn, 400, _openai_error("Missing 'model', 'input' or 'voice'."))
            return True
        if s.mode == "error_status":
            await send_json(conn, s.status, _openai_error(s.message))
            return True
        if s.mode == "json_instead":
            await send_json(conn, 200, _openai_error(s.message))
            return True
        fmt = body.get("response_format", "mp3")
        if fmt not in ("pcm", "wav"):
            await send_json(conn, 400, _openai_error(f"The fake speaks pcm and wav, not {fmt}."))
            return True
        rate = PCM_SAMPLE_RATE if fmt == "pcm" else s.wav_sample_rate
        audio = tone(len(body["input"]) * s.ms_per_char / 1000, rate)
        data = audio
        if fmt == "wav":
            data = wav_header(rate, len(audio) if s.exact_wav_size else 0xFFFFFFFF) + audio
        content_type = "audio/pcm" if fmt == "pcm" else "audio/wav"
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        if not await conn.send(head.encode()):
            return False
        pieces = [data[at : at + s.piece_bytes] for at in range(0, len(data), s.piece_bytes)]
        if s.mode == "endless":
            for n in itertools.count():
                piece = pieces[n % len(pieces)] if n < len(pieces) else audio[: s.piece_bytes]
                if not await self._piece(conn, record, piece):
                    return False
                if await conn.gone_within(s.delay):
                    return False
        for n, piece in enumerate(pieces):
            if s.mode in ("hang", "disconnect") and n == s.after:
                if s.mode == "disconnect":
                    await conn.close()
                else:
                    await conn.gone_within(None)
                return False
            if s.delay and await conn.gone_within(s.delay):
                return False
            if not await self._piece(conn, record, piece):
                return False
        if not await conn.send(b"0\r\n\r\n"):
            return False
        with self._waiter.cond:
            record.finished = not conn.closed.is_set()
            self._waiter.cond.notify_all()
        return True

    async def _piece(self, conn: Connection, record: SpeechRequest, piece: bytes) -> bool:
        if not await conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n"):
            return False
        with self._waiter.cond:
            record.bytes_sent += len(piece)
            self._waiter.cond.notify_all()
        return True


def _openai_error(message: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
