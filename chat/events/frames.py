"""A room event encoded once for every member of the process (STYLE.md "encode once").

A ``Frame`` holds one event in every shape a transport writes: the JSON text, the ASGI
``websocket.send`` message (with the WebSocket frame prepared once under daphne), and
the SSE ``id:/event:/data:`` block. Each shape is built the first time a subscriber asks
for it and then shared, so a room of 500 members costs one ``json.dumps`` per event, not
500.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Mapping
from typing import Any

from core.contract import LIVE_AUDIO
from core.fastpath import PREPARED_FRAME, prepare_frame


def encode(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


class Frame:
    """One outbound event. ``seq`` is set on durable events, None on live-only ones."""

    __slots__ = ("_sse", "_sse_chunk", "_ws", "binary", "event", "seq", "text", "type")

    def __init__(self, event: Mapping[str, Any] | None, *, binary: bytes | None = None) -> None:
        self.event = event
        self.binary = binary
        self.seq: int | None = event.get("seq") if event is not None else None
        self.type: str = event["type"] if event is not None else LIVE_AUDIO
        self.text = encode(event) if event is not None else ""
        self._ws: dict[str, Any] | None = None
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.binary) if self.binary is not None else len(self.text)

    @property
    def ws(self) -> dict[str, Any]:
        """The ASGI message a WebSocket subscriber sends (daphne never mutates it)."""
        if self._ws is None:
            if self.binary is not None:
                message: dict[str, Any] = {"type": "websocket.send", "bytes": self.binary}
                prepared = prepare_frame(self.binary, binary=True)
            else:
                message = {"type": "websocket.send", "text": self.text}
                prepared = prepare_frame(self.text.encode(), binary=False)
            if prepared is not None:
                message[PREPARED_FRAME] = prepared
            self._ws = message
        return self._ws

    @property
    def sse(self) -> bytes:
        """The SSE block: ``id`` on durable events, the type, one line of JSON."""
        if self._sse is None:
            if self.binary is not None:
                text = encode(_audio_chunk(self.binary))
            else:
                text = self.text
            head = f"id: {self.seq}\n" if self.seq is not None else ""
            self._sse = f"{head}event: {self.type}\ndata: {text}\n\n".encode()
        return self._sse

    @property
    def sse_chunk(self) -> bytes:
        """The SSE block as one HTTP/1.1 chunk (size line, block, CRLF), for the responses
        that daphne lets us write to directly (core/fastpath.py ``write_chunk``)."""
        if self._sse_chunk is None:
            block = self.sse
            self._sse_chunk = b"%x\r\n%s\r\n" % (len(block), block)
        return self._sse_chunk


def _audio_chunk(frame: bytes) -> dict[str, Any]:
    """Audio on SSE: a binary PCM frame becomes a base64 ``chunk`` event."""
    stream, index = struct.unpack(">II", frame[:8])
    return {
        "type": LIVE_AUDIO,
        "state": "chunk",
        "stream": stream,
        "index": index,
        "data": base64.b64encode(frame[8:]).decode("ascii"),
    }


SSE_PING = b": ping\n\n"
