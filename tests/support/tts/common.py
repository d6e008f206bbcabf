"""What the loopback fakes of speech services share: test audio, waits, HTTP bits, and
the two server bases (:class:`RecordingServer` for HTTP, :class:`WebSocketFake`).

Every fake is a real server on 127.0.0.1 speaking its vendor's real protocol, records
everything it saw, and offers thread-safe waits with a timeout (no polling, no sleeps).
Each runs in the test's own event loop (``async with``) or in a background thread with
its own loop (``with``, or ``start()``/``stop()`` for a separate daphne process to talk
to).
"""

from __future__ import annotations

import asyncio
import copy
import http
import json
import math
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, Self, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from tests.support.loopback import Connection, LoopbackHTTPServer, ServedInThread

# A request head larger than this is not from an HTTP client we care about.
MAX_HEAD_BYTES = 64 * 1024
_TONE_HZ = 440.0
_TONE_AMPLITUDE = 8000

T = TypeVar("T")


class RecordedRequest(Protocol):
    """What :class:`RecordingServer` needs of the record it keeps for each request."""

    connection: int
    headers: dict[str, str]
    finished: bool
    disconnected_at: float | None
    closed_by: Literal["client", "server"] | None


R = TypeVar("R", bound=RecordedRequest)


def tone(seconds: float, sample_rate: int) -> bytes:
    """A 440 Hz tone, s16le mono: clearly not silence, easy to check."""
    count = max(1, round(seconds * sample_rate))
    step = 2 * math.pi * _TONE_HZ / sample_rate
    samples = [round(_TONE_AMPLITUDE * math.sin(step * n)) for n in range(count)]
    return struct.pack(f"<{count}h", *samples)


class Waiter:
    """A condition shared by the recording side (any thread) and the waiting side."""

    def __init__(self) -> None:
        self.cond = threading.Condition()

    def wait(self, ready: Callable[[], T | None], timeout: float, what: str) -> T:
        result: list[T] = []

        def check() -> bool:
            value = ready()
            if value is None:
                return False
            result.append(value)
            return True

        with self.cond:
            if not self.cond.wait_for(check, timeout):
                raise TimeoutError(f"{what} did not happen within {timeout} s")
        return result[-1]

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()


def pcm_rms(pcm: bytes) -> float:
    """Root mean square of s16le samples (0 for silence, about 5657 for the fake's tone)."""
    count = len(pcm) // 2
    if not count:
        return 0.0
    samples = struct.unpack(f"<{count}h", pcm[: count * 2])
    return math.sqrt(sum(s * s for s in samples) / count)


def wav_header(sample_rate: int, data_size: int) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", min(0xFFFFFFFF, 36 + data_size))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """One request as read off the socket (header names lower-case)."""

    method: str
    target: str
    headers: dict[str, str]
    raw_body: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


async def read_request(conn: Connection) -> HTTPRequest | None:
    """The next request on ``conn`` (a Content-Length body), None once the client left."""
    head = await conn.read_until(b"\r\n\r\n", MAX_HEAD_BYTES)
    if head is None:
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    raw = await conn.read_exactly(int(headers.get("content-length", "0") or "0"))
    if raw is None:
        return None
    return HTTPRequest(method=method, target=target, headers=headers, raw_body=raw)


async def send_json(conn: Connection, status: int, payload: object) -> bool:
    data = json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return await conn.send(head.encode() + data)


class RecordingServer(LoopbackHTTPServer, Generic[R]):
    """A loopback HTTP fake that records each request, with thread-safe waits on them.

    Subclasses append a record to ``_requests`` (under ``_waiter.cond``, then notify) as
    each request arrives and set its ``finished`` once answered in full; the close of
    its connection is noted here (``disconnected_at``, ``closed_by``).
    """

    def __init__(self, *, name: str, host: str, port: int) -> None:
        super().__init__(name=name, host=host, port=port)
        self._requests: list[R] = []
        self._waiter = Waiter()

    @staticmethod
    def _snapshot(record: R) -> R:
        """A copy the server's later updates do not reach."""
        snapshot = copy.copy(record)
        snapshot.headers = dict(record.headers)
        return snapshot

    @property
    def requests(self) -> list[R]:
        with self._waiter.cond:
            return [self._snapshot(r) for r in self._requests]

    def request(self, index: int) -> R:
        with self._waiter.cond:
            return self._snapshot(self._requests[index])

    def _wait_on(self, index: int, ready: Callable[[R], bool], what: str, timeout: float) -> R:
        def check() -> R | None:
            if len(self._requests) > index and ready(self._requests[index]):
                return self._snapshot(self._requests[index])
            return None

        return self._waiter.wait(check, timeout, f"request {index}: {what}")

    def wait_request(self, index: int = 0, timeout: float = 5.0) -> R:
        return self._wait_on(index, lambda r: True, "arrive", timeout)

    def wait_finished(self, index: int = 0, timeout: float = 5.0) -> R:
        return self._wait_on(index, lambda r: r.finished, "finish", timeout)

    def wait_disconnect(self, index: int = 0, timeout: float = 5.0) -> R:
        return self._wait_on(index, lambda r: r.disconnected_at is not None, "disconnect", timeout)

    async def await_request(self, index: int = 0, timeout: float = 5.0) -> R:
        return await asyncio.to_thread(self.wait_request, index, timeout)

    async def await_finished(self, index: int = 0, timeout: float = 5.0) -> R:
        return await asyncio.to_thread(self.wait_finished, index, timeout)

    async def await_disconnect(self, index: int = 0, timeout: float = 5.0) -> R:
        return await asyncio.to_thread(self.wait_disconnect, index, timeout)

    def connection_closed(self, conn: Connection) -> None:
        with self._waiter.cond:
            for r in self._requests:
                if r.connection == conn.ident and r.disconnected_at is None:
                    r.disconnected_at = conn.closed_at
                    r.closed_by = "server" if conn.closing_by_server else "client"
            self._waiter.cond.notify_all()


class WebSocketFake(ServedInThread):
    """A ``websockets`` server on loopback that checks each handshake and notes errors.

    Subclasses answer the handshake in ``_check_handshake`` (None to accept) and serve a
    connection in ``_handle``; anything a client does against the protocol goes to
    ``_protocol_error`` and shows in ``protocol_errors``.
    """

    def __init__(self, *, name: str, host: str, port: int) -> None:
        super().__init__(name)
        self.host = host
        self.port = port
        self._waiter = Waiter()
        self._protocol_errors: list[str] = []
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _check_handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        raise NotImplementedError

    async def _handle(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    @property
    def protocol_errors(self) -> list[str]:
        with self._waiter.cond:
            return list(self._protocol_errors)

    def _protocol_error(self, message: str) -> None:
        with self._waiter.cond:
            self._protocol_errors.append(message)
            self._waiter.cond.notify_all()

    async def astart(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._check_handshake
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def astop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
