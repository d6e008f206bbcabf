"""A fake OpenAI-compatible model server on loopback, for tests.

It is a real HTTP/1.1 server (``asyncio.start_server``, no extra dependency) that speaks the
chat completions streaming protocol the way OpenAI does: ``text/event-stream`` with chunked
transfer encoding, one ``data: {"object": "chat.completion.chunk", ...}`` event per piece
(the first carries ``delta.role``), a last chunk with ``finish_reason``, a usage chunk with
empty ``choices`` when the request asks ``stream_options.include_usage``, then
``data: [DONE]``. It keeps connections alive between requests like a real server, and
records everything it saw.

Start and stop::

    with FakeOpenAIServer() as server:          # in a background thread with its own loop
        backend = OpenAIBackend(base_url=server.base_url, ...)   # http://127.0.0.1:PORT/v1

    async with FakeOpenAIServer() as server:    # in the running event loop
        ...

    server = FakeOpenAIServer().start()         # same as ``with``, for a separate process
    ...                                         # (daphne) to talk to; then server.stop()

Constructor: ``FakeOpenAIServer(default=Scenario.normal(), *, model="fake-model",
api_key=None, host="127.0.0.1", port=0)``. With ``api_key`` set, a chat request without
``Authorization: Bearer <api_key>`` gets 401 like OpenAI's.

Script what each ``POST .../chat/completions`` does: ``server.script(s1, s2, ...)`` queues
scenarios, taken one per request in order; when the queue is empty ``server.default`` (set
it with ``server.set_default(s)``) answers. Scenarios (all pieces are the reply's text
deltas, in order; ``delay`` is in seconds):

- ``Scenario.normal(pieces)``: the whole reply, no pauses.
- ``Scenario.slow(pieces, delay=0.05)``: ``delay`` between pieces (the one place the fake
  sleeps, as server behaviour; it stops early when the client leaves).
- ``Scenario.error_status(status=500, message=..., error_type=..., code=None)``: that HTTP
  status with an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``.
- ``Scenario.malformed(pieces, after=2, bad_line=...)``: ``after`` good pieces, then a
  ``data:`` line that is not JSON (or any ``bad_line`` you give), then the rest.
- ``Scenario.error_event(pieces, after=2, message=...)``: ``after`` pieces, then
  ``data: {"error": {...}}`` and ``[DONE]``, as vLLM reports a failure mid-stream.
- ``Scenario.disconnect(pieces, after=2, chunked=True)``: ``after`` pieces, then the server
  closes the socket without ``[DONE]`` (with ``chunked=False`` the body is delimited by the
  close, so the client sees a clean end of body without ``[DONE]``).
- ``Scenario.hang(pieces, after=1)``: headers and ``after`` pieces, then silence until the
  client leaves.
- ``Scenario.endless(pieces=("tick ",), interval=0.02)``: a piece every ``interval``
  seconds, cycling through ``pieces``, until the client disconnects.

Every scenario also takes ``prompt_tokens`` / ``completion_tokens`` (the usage chunk;
completion defaults to the number of pieces sent), ``finish_reason``, ``chunked`` and
``sse_extras`` (a comment line and ``id:`` / ``retry:`` fields a client must skip).
A request with ``"stream": false`` gets one ``chat.completion`` JSON of the joined pieces.
``GET .../models`` lists ``model``. Anything else is a 404 with an OpenAI-style body.

What it saw: ``server.requests`` (a snapshot list) and ``server.request(n)`` give
:class:`RecordedRequest`: ``index`` (0-based over all requests), ``method``, ``path``,
``headers`` (lower-case names), ``body`` (parsed JSON or None), ``raw_body``,
``received_at``, ``connection`` (an id per TCP connection, to see reuse), ``scenario``,
``pieces_sent``, ``finished`` (the whole response was written while the client was still
connected), ``disconnected_at`` (``time.monotonic()`` when the connection that carried the
request closed, else None) and ``closed_by`` (``"client"`` or ``"server"``).

Waiting, thread-safe, with a timeout and no polling (``TimeoutError`` when it runs out):
``server.wait_request(n, timeout=5)``, ``server.wait_finished(n, timeout=5)`` (the whole
response was written) and ``server.wait_disconnect(n, timeout=5)`` block;
``await server.await_request(n)`` and ``await server.await_disconnect(n)`` do the same
without blocking the event loop (so they work when the server runs in that same loop).
Each returns the request's record as it is at that moment.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tests.support.loopback import Connection, LoopbackHTTPServer

Mode = Literal[
    "normal",
    "slow",
    "error_status",
    "malformed",
    "error_event",
    "disconnect",
    "hang",
    "endless",
    "stepped",
]

# How long a stepped stream waits for its next step before it gives up (a test that
# failed stops stepping; the stream must not outlive it).
STEP_TIMEOUT = 30.0

DEFAULT_PIECES: tuple[str, ...] = ("Hello", ", ", "world", "!")
# A request head larger than this is not from an HTTP client we care about.
_MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Scenario:
    """What the server does for one chat completions request. Build with the classmethods."""

    mode: Mode = "normal"
    pieces: tuple[str, ...] = DEFAULT_PIECES
    delay: float = 0.0
    after: int = 2
    status: int = 500
    error_message: str = "The server had an error while processing your request."
    error_type: str = "server_error"
    error_code: str | None = None
    bad_line: str = 'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content": "oo'
    finish_reason: str = "stop"
    prompt_tokens: int = 12
    completion_tokens: int | None = None
    chunked: bool = True
    sse_extras: bool = False

    @classmethod
    def normal(cls, pieces: Sequence[str] = DEFAULT_PIECES, **kw: Any) -> Scenario:
        return cls(mode="normal", pieces=tuple(pieces), **kw)

    @classmethod
    def slow(
        cls, pieces: Sequence[str] = DEFAULT_PIECES, delay: float = 0.05, **kw: Any
    ) -> Scenario:
        return cls(mode="slow", pieces=tuple(pieces), delay=delay, **kw)

    @classmethod
    def error_status(
        cls,
        status: int = 500,
        message: str = "The server had an error while processing your request.",
        error_type: str = "server_error",
        code: str | None = None,
        **kw: Any,
    ) -> Scenario:
        return cls(
            mode="error_status",
            status=status,
            error_message=message,
            error_type=error_type,
            error_code=code,
            **kw,
        )

    @classmethod
    def malformed(
        cls, pieces: Sequence[str] = DEFAULT_PIECES, after: int = 2, **kw: Any
    ) -> Scenario:
        return cls(mode="malformed", pieces=tuple(pieces), after=after, **kw)

    @classmethod
    def error_event(
        cls,
        pieces: Sequence[str] = DEFAULT_PIECES,
        after: int = 2,
        message: str = "The model crashed while generating.",
        **kw: Any,
    ) -> Scenario:
        return cls(
            mode="error_event", pieces=tuple(pieces), after=after, error_message=message, **kw
        )

    @classmethod
    def disconnect(
        cls, pieces: Sequence[str] = DEFAULT_PIECES, after: int = 2, **kw: Any
    ) -> Scenario:
        return cls(mode="disconnect", pieces=tuple(pieces), after=after, **kw)

    @classmethod
    def hang(cls, pieces: Sequence[str] = DEFAULT_PIECES, after: int = 1, **kw: Any) -> Scenario:
        return cls(mode="hang", pieces=tuple(pieces), after=after, **kw)

    @classmethod
    def endless(
        cls, pieces: Sequence[str] = ("tick ",), interval: float = 0.02, **kw: Any
    ) -> Scenario:
        return cls(mode="endless", pieces=tuple(pieces), delay=interval, **kw)

    @classmethod
    def stepped(cls, pieces: Sequence[str] = DEFAULT_PIECES, **kw: Any) -> Scenario:
        """Each piece is written only when the test calls ``server.step()``: the test, not
        a clock, decides when the model speaks."""
        return cls(mode="stepped", pieces=tuple(pieces), **kw)


@dataclass(slots=True)
class RecordedRequest:
    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    received_at: float
    connection: int
    scenario: Scenario | None = None
    pieces_sent: int = 0
    # time.monotonic() as each piece was written, for latency measurements (bench/).
    piece_times: list[float] = field(default_factory=list)
    finished: bool = False
    disconnected_at: float | None = None
    closed_by: Literal["client", "server"] | None = None


class _Reply:
    """Writes one HTTP response, chunked or delimited by the close."""

    def __init__(self, conn: Connection, chunked: bool) -> None:
        self.conn = conn
        self.chunked = chunked

    async def head(self, status: int, headers: dict[str, str]) -> bool:
        phrase = http.HTTPStatus(status).phrase
        lines = [f"HTTP/1.1 {status} {phrase}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append("Connection: close")
        return await self.conn.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def body(self, text: str) -> bool:
        data = text.encode()
        if self.chunked:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        return await self.conn.send(data)

    async def end(self) -> bool:
        if self.chunked:
            return await self.conn.send(b"0\r\n\r\n")
        return True


def _copy(record: RecordedRequest) -> RecordedRequest:
    return replace(record, headers=dict(record.headers), piece_times=list(record.piece_times))


class FakeOpenAIServer(LoopbackHTTPServer):
    def __init__(
        self,
        default: Scenario | None = None,
        *,
        model: str = "fake-model",
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(name="fake-openai-server", host=host, port=port)
        self.model = model
        self.api_key = api_key
        self._default = default or Scenario.normal()
        self._queue: deque[Scenario] = deque()
        self._requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._steps = threading.Semaphore(0)

    # -- what tests use ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the fake OpenAI server is not started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def default(self) -> Scenario:
        with self._cond:
            return self._default

    def set_default(self, scenario: Scenario) -> None:
        with self._cond:
            self._default = scenario

    def step(self) -> None:
        """Let a stepped stream write its next piece."""
        self._steps.release()

    def script(self, *scenarios: Scenario) -> None:
        """Queue scenarios for the next chat completions requests, in order."""
        with self._cond:
            self._queue.extend(scenarios)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return [_copy(r) for r in self._requests]

    def request(self, index: int) -> RecordedRequest:
        with self._cond:
            r = self._requests[index]
            return _copy(r)

    def wait_request(self, index: int = 0, timeout: float = 5.0) -> RecordedRequest:
        """Block until request ``index`` has arrived."""
        return self._wait(lambda: len(self._requests) > index, index, timeout, "arrive")

    def wait_disconnect(self, index: int = 0, timeout: float = 5.0) -> RecordedRequest:
        """Block until the connection that carried request ``index`` has closed."""
        return self._wait(
            lambda: (
                len(self._requests) > index and self._requests[index].disconnected_at is not None
            ),
            index,
            timeout,
            "disconnect",
        )

    def wait_finished(self, index: int = 0, timeout: float = 5.0) -> RecordedRequest:
        """Block until the whole response to request ``index`` has been written."""
        return self._wait(
            lambda: len(self._requests) > index and self._requests[index].finished,
            index,
            timeout,
            "finish",
        )

    async def await_request(self, index: int = 0, timeout: float = 5.0) -> RecordedRequest:
        return await asyncio.to_thread(self.wait_request, index, timeout)

    async def await_disconnect(self, index: int = 0, timeout: float = 5.0) -> RecordedRequest:
        return await asyncio.to_thread(self.wait_disconnect, index, timeout)

    async def await_finished(self, index: int = 0, timeout: float = 5.0) -> RecordedRequest:
        return await asyncio.to_thread(self.wait_finished, index, timeout)

    def _wait(
        self, ready: Callable[[], bool], index: int, timeout: float, what: str
    ) -> RecordedRequest:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise TimeoutError(
                    f"request {index} did not {what} within {timeout} s "
                    f"({len(self._requests)} requests seen)"
                )
            r = self._requests[index]
            return _copy(r)

    # -- the HTTP side -------------------------------------------------------------------

    def connection_closed(self, conn: Connection) -> None:
        with self._cond:
            for r in self._requests:
                if r.connection == conn.ident and r.disconnected_at is None:
                    r.disconnected_at = conn.closed_at
                    r.closed_by = "server" if conn.closing_by_server else "client"
            self._cond.notify_all()

    async def _serve_one(self, conn: Connection) -> bool:
        """Read and answer one request; False when the connection is done."""
        head = await conn.read_until(b"\r\n\r\n", _MAX_HEAD_BYTES)
        if head is None:
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        raw_body = await self._read_body(conn, headers)
        if raw_body is None:
            return False
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None
        with self._cond:
            record = RecordedRequest(
                index=len(self._requests),
                method=method,
                path=target.partition("?")[0],
                headers=headers,
                body=body,
                raw_body=raw_body,
                received_at=time.monotonic(),
                connection=conn.ident,
            )
            self._requests.append(record)
            self._cond.notify_all()
        keep_alive = headers.get("connection", "").lower() != "close"
        path = record.path
        if method == "POST" and path.endswith("/chat/completions"):
            keep_alive = await self._chat(conn, record, body) and keep_alive
        elif method == "GET" and path.endswith("/models"):
            await self._json(conn, 200, self._model_list())
        else:
            await self._json(conn, 404, _error_body(f"Unknown URL: {method} {path}", "not_found"))
        return keep_alive and not conn.closed.is_set()

    async def _read_body(self, conn: Connection, headers: dict[str, str]) -> bytes | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size_line = await conn.read_until(b"\r\n", _MAX_HEAD_BYTES)
                if size_line is None:
                    return None
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                data = await conn.read_exactly(size + 2)
                if data is None:
                    return None
                if size == 0:
                    return bytes(body)
                body += data[:-2]
        length = int(headers.get("content-length", "0") or "0")
        return await conn.read_exactly(length)

    async def _json(self, conn: Connection, status: int, payload: object) -> bool:
        data = json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        return await conn.send(head.encode() + data)

    def _model_list(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "parley-tests"}
            ],
        }

    def _next_scenario(self) -> Scenario:
        with self._cond:
            return self._queue.popleft() if self._queue else self._default

    async def _chat(self, conn: Connection, record: RecordedRequest, body: Any) -> bool:
        """Answer a chat completions request; False if the connection must not be reused."""
        scenario = self._next_scenario()
        with self._cond:
            record.scenario = scenario
        if self.api_key is not None:
            expected = f"Bearer {self.api_key}"
            if record.headers.get("authorization") != expected:
                message = "Incorrect API key provided."
                await self._json(conn, 401, _error_body(message, "invalid_request_error"))
                return True
        if not isinstance(body, dict) or "messages" not in body or "model" not in body:
            message = "Missing required parameter: 'model' and 'messages'."
            await self._json(conn, 400, _error_body(message, "invalid_request_error"))
            return True
        if scenario.mode == "error_status":
            payload = _error_body(scenario.error_message, scenario.error_type, scenario.error_code)
            await self._json(conn, scenario.status, payload)
            return True
        model = str(body.get("model") or self.model)
        if not body.get("stream"):
            text = "".join(scenario.pieces)
            await self._json(conn, 200, _completion(record.index, model, text, scenario))
            with self._cond:
                record.pieces_sent = len(scenario.pieces)
                record.finished = not conn.closed.is_set()
            return True
        stream_options = body.get("stream_options") or {}
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )
        await _Stream(self, conn, record, scenario, model, include_usage).run()
        return scenario.chunked

    def _count_piece(self, record: RecordedRequest) -> None:
        with self._cond:
            record.pieces_sent += 1
            record.piece_times.append(time.monotonic())

    def _mark_finished(self, record: RecordedRequest, conn: Connection) -> None:
        with self._cond:
            record.finished = not conn.closed.is_set()
            self._cond.notify_all()


class _Stream:
    """One streamed chat completion, following its scenario."""

    def __init__(
        self,
        server: FakeOpenAIServer,
        conn: Connection,
        record: RecordedRequest,
        scenario: Scenario,
        model: str,
        include_usage: bool,
    ) -> None:
        self.server = server
        self.conn = conn
        self.record = record
        self.s = scenario
        self.model = model
        self.include_usage = include_usage
        self.reply = _Reply(conn, scenario.chunked)
        self.id = f"chatcmpl-fake{record.index}"
        self.created = int(time.time())
        self.events = 0

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    async def event(self, payload: dict[str, Any] | str) -> bool:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.events += 1
        prefix = f"id: {self.events}\n" if self.s.sse_extras else ""
        return await self.reply.body(f"{prefix}data: {data}\n\n")

    async def piece(self, text: str) -> bool:
        if not await self.event(self.chunk({"content": text})):
            return False
        self.server._count_piece(self.record)
        return True

    async def run(self) -> None:
        s = self.s
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Request-Id": f"req_fake{self.record.index}",
        }
        if not await self.reply.head(200, headers):
            return
        if s.sse_extras and not await self.reply.body(": keep-alive\n\nretry: 3000\n\n"):
            return
        if not await self.event(self.chunk({"role": "assistant", "content": ""})):
            return
        if s.mode in ("disconnect", "hang", "malformed", "error_event"):
            for text in s.pieces[: s.after]:
                if not await self.piece(text):
                    return
            if s.mode == "disconnect":
                await self.conn.close()
                return
            if s.mode == "hang":
                await self.conn.gone_within(None)
                return
            if s.mode == "error_event":
                error = _error_body(s.error_message, s.error_type, s.error_code)
                if await self.event(error) and await self.event("[DONE]"):
                    await self.reply.end()
                return
            if not await self.reply.body(s.bad_line + "\n\n"):
                return
            rest: Sequence[str] = s.pieces[s.after :]
        elif s.mode == "endless":
            for text in itertools.cycle(s.pieces):
                if not await self.piece(text) or await self.conn.gone_within(s.delay):
                    return
            return
        elif s.mode == "stepped":
            for text in s.pieces:
                if not await asyncio.to_thread(self.server._steps.acquire, True, STEP_TIMEOUT):
                    return
                if not await self.piece(text):
                    return
            await self.finish()
            return
        else:
            rest = s.pieces
        for i, text in enumerate(rest):
            if i and s.delay and await self.conn.gone_within(s.delay):
                return
            if not await self.piece(text):
                return
        await self.finish()

    async def finish(self) -> None:
        s = self.s
        if not await self.event(self.chunk({}, s.finish_reason)):
            return
        if self.include_usage:
            completion = (
                s.completion_tokens if s.completion_tokens is not None else self.record.pieces_sent
            )
            usage = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": {
                    "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": s.prompt_tokens + completion,
                },
            }
            if not await self.event(usage):
                return
        if not await self.event("[DONE]"):
            return
        # Finished once [DONE] is out: a client (like the OpenAI SDK) may hang up on [DONE]
        # without reading the chunked terminator, and that is a whole response, not a cut one.
        self.server._mark_finished(self.record, self.conn)
        if not await self.reply.end():
            return
        if not s.chunked:
            await self.conn.close()


def _error_body(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _completion(index: int, model: str, text: str, s: Scenario) -> dict[str, Any]:
    completion = s.completion_tokens if s.completion_tokens is not None else len(s.pieces)
    return {
        "id": f"chatcmpl-fake{index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": s.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": s.prompt_tokens + completion,
        },
    }


__all__ = ["DEFAULT_PIECES", "FakeOpenAIServer", "RecordedRequest", "Scenario"]
