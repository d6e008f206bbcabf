"""What the loopback fakes of speech services share: test audio, waits, HTTP bits.

Every fake is a real server on 127.0.0.1 speaking its vendor's real protocol, records
everything it saw, and offers thread-safe waits with a timeout (no polling, no sleeps).
Each runs in the test's own event loop (``async with``) or in a background thread with
its own loop (``with``, or ``start()``/``stop()`` for a separate daphne process to talk
to).
"""

from __future__ import annotations

import http
import json
import math
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tests.support.loopback import Connection

# A request head larger than this is not from an HTTP client we care about.
MAX_HEAD_BYTES = 64 * 1024
_TONE_HZ = 440.0
_TONE_AMPLITUDE = 8000

T = TypeVar("T")


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
