"""The load generator: many cheap clients in their own process, JSON out.

    python -m bench.loadgen < plan.json > result.json

It shares two cores with the server it measures, so each member costs as little as we can
make it: a bare asyncio Protocol per connection with a minimal RFC 6455 client (server
frames are unmasked; we mask what we send, answer pings), and an SSE reader that only
de-chunks. A member only stamps each frame's arrival (``time.monotonic()``, the same clock
as the model server's token stamps on Linux) and keeps the raw payload; parsing happens
after the run. The ``websockets`` library costs several times more per frame, which on
two shared cores would show up as server latency.

Plan keys: ``kind`` (``parley`` / ``parley-sse`` / ``socketio`` / ``floor``), ``urls``
(members are spread over them round-robin), ``path``, ``tokens`` (bearer tokens, one per
member, Parley only), ``members``, ``expect`` (tokens the reply has), ``trigger`` (the
member 0 frame that starts the reply), ``concurrency`` (handshakes in flight), ``idle``
(seconds to hold the connections open and do nothing, for the idle measurement),
``wait`` (seconds to wait for the stream).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
import time
from typing import Any
from urllib.parse import urlsplit

TOKEN = re.compile(r"t(\d+) ")


def _mask(payload: bytes, opcode: int) -> bytes:
    key = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class WsClient(asyncio.Protocol):
    """One member over a WebSocket: stamps every text frame it receives."""

    def __init__(self, on_text: Any = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.frames: list[tuple[float, bytes]] = []
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.changed = asyncio.Event()
        self.on_text = on_text

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buffer[: self.buffer.find(b"\r\n")]
            self.buffer = self.buffer[end + 4 :]
            if b" 101 " not in status:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.opened.set_result(None)
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if len(buf) - pos < head + length:
                break
            payload = buf[pos + head : pos + head + length]
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 1:
                self.frames.append((now, payload))
                if self.on_text is not None:
                    self.on_text(self, payload)
            elif opcode == 9:
                self.send(payload, opcode=10)
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closed.done():
                    self.closed.set_result(code)
        self.buffer = buf[pos:]
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(1006)
        self.changed.set()

    def send(self, payload: bytes, opcode: int = 1) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_mask(payload, opcode))


async def ws_connect(url: str, path: str, headers: dict[str, str], **kw: Any) -> WsClient:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: WsClient(**kw), parts.hostname or "127.0.0.1", parts.port or 80
    )
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    assert client.transport is not None
    client.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await client.opened
    return client


class SseClient(asyncio.Protocol):
    """One member over SSE: de-chunks the response and stamps each ``data:`` line."""

    def __init__(self) -> None:
        self.raw = b""
        self.body = b""
        self.headers_done = False
        self.frames: list[tuple[float, bytes]] = []
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.raw += data
        if not self.headers_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.raw[: self.raw.find(b"\r\n")]
            self.raw = self.raw[end + 4 :]
            self.headers_done = True
            if b" 200 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                return
        # Chunked transfer encoding: size line, data, CRLF.
        while True:
            line_end = self.raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self.raw[:line_end].split(b";")[0] or b"0", 16)
            if len(self.raw) < line_end + 2 + size + 2:
                break
            self.body += self.raw[line_end + 2 : line_end + 2 + size]
            self.raw = self.raw[line_end + 2 + size + 2 :]
        while True:
            end = self.body.find(b"\n\n")
            if end < 0:
                break
            block, self.body = self.body[:end], self.body[end + 2 :]
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    self.frames.append((now, line[6:]))
                    if not self.opened.done():
                        self.opened.set_result(None)  # the hello
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed"))
        self.changed.set()


async def sse_connect(url: str, path: str, headers: dict[str, str]) -> SseClient:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        SseClient, parts.hostname or "127.0.0.1", parts.port or 80
    )
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        "Accept: text/event-stream",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    assert client.transport is not None
    client.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await client.opened
    return client


def _socketio_text(client: WsClient, payload: bytes) -> None:
    """Engine.IO / Socket.IO framing: open -> connect to the namespace, ping -> pong."""
    if payload.startswith(b"0{"):
        client.send(b"40")
    elif payload == b"2":
        client.send(b"3")
    elif payload.startswith(b"40"):
        client.ready = True  # type: ignore[attr-defined]


async def open_member(plan: dict[str, Any], index: int) -> Any:
    urls = plan["urls"]
    url = urls[index % len(urls)]
    kind = plan["kind"]
    if kind == "socketio":
        client = await ws_connect(
            url, "/socket.io/?EIO=4&transport=websocket", {}, on_text=_socketio_text
        )
        while not getattr(client, "ready", False):
            client.changed.clear()
            await client.changed.wait()
        return client
    headers = {}
    if plan.get("tokens"):
        headers["Authorization"] = f"Bearer {plan['tokens'][index]}"
    if kind == "parley-sse" or (kind == "parley-mixed" and index % 2 == 1):
        return await sse_connect(url, plan["sse_path"], headers)
    client = await ws_connect(url, plan["path"], headers)
    if kind == "floor":
        return client
    while not client.frames:  # the hello
        client.changed.clear()
        await client.changed.wait()
    return client


def _tokens_of(kind: str, payload: bytes) -> list[int]:
    if kind == "socketio":
        if not payload.startswith(b'42["token"'):
            return []
        text = json.loads(payload[2:])[1]["t"]
    else:
        if b'"type":"delta"' not in payload:
            return []
        text = json.loads(payload)["text"]
    return [int(m) for m in TOKEN.findall(text)]


def _done(kind: str, payload: bytes) -> bool:
    if kind == "socketio":
        return payload.startswith(b'42["done"')
    return b'"generation"' in payload and any(
        f'"state":"{s}"'.encode() in payload for s in ("complete", "stopped", "failed")
    )


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    members = plan["members"]
    concurrency = plan.get("concurrency", 50)
    clients: list[Any] = [None] * members
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            try:
                clients[i] = await open_member(plan, i)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failures.append(repr(exc))

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(members)))
    handshake_seconds = time.monotonic() - started
    result: dict[str, Any] = {
        "members": members,
        "connected": sum(c is not None for c in clients),
        "failures": failures[:5],
        "handshake_seconds": round(handshake_seconds, 3),
        "handshakes_per_second": round(members / handshake_seconds, 1),
    }
    if plan.get("idle"):
        print(json.dumps({"ready": True}), flush=True)  # the orchestrator samples the server
        sys.stdin.readline()  # until it says stop
    elif plan.get("trigger") is not None:
        live = [c for c in clients if c is not None]
        for c in live:
            c.frames.clear()
        first = live[0]
        first.send(plan["trigger"].encode())
        result["trigger_at"] = time.monotonic()
        deadline = time.monotonic() + plan.get("wait", 60)
        kind = plan["kind"]
        for c in live:
            while not any(_done(kind, p) for _, p in c.frames[-3:]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                c.changed.clear()
                try:
                    await asyncio.wait_for(c.changed.wait(), remaining)
                except TimeoutError:
                    break
        arrivals = []
        for c in live:
            seen: list[list[float]] = []
            member_kind = "parley-sse" if isinstance(c, SseClient) else kind
            for at, payload in c.frames:
                for token in _tokens_of(member_kind, payload):
                    seen.append([token, at])
            arrivals.append(
                {
                    "sse": isinstance(c, SseClient),
                    "tokens": seen,
                    "frames": sum(1 for _, p in c.frames if _tokens_of(member_kind, p)),
                }
            )
        result["arrivals"] = arrivals
    for c in clients:
        if c is not None and c.transport is not None:
            c.transport.close()
    return result


if __name__ == "__main__":
    plan = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(run(plan))), flush=True)
