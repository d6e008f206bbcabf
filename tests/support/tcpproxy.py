"""A loopback TCP proxy in the test's event loop, to break connections on purpose.

``cut()`` drops every connection through it at once, as a network failure or a server
restart would; ``stop()`` / ``start()`` stop and restart listening on the same port (a
server that is away for a while); ``cut_after`` drops each connection once the server has
sent some bytes (a server failing every connection alike); ``block_websockets`` answers
WebSocket upgrade requests with ``502 Bad Gateway``, as a proxy that does not pass
WebSockets does, while plain HTTP (SSE included) goes through.
"""

from __future__ import annotations

import asyncio
import contextlib

# A request head larger than this is not from a client we test.
_MAX_HEAD = 64 * 1024


class TCPProxy:
    def __init__(self, target_port: int, *, block_websockets: bool = False) -> None:
        self.target_port = target_port
        self.block_websockets = block_websockets
        # When set, every connection is dropped right after the server sends these bytes
        # (e.g. b'"type":"hello"'): a server that fails every connection the same way.
        self.cut_after: bytes | None = None
        self.port = 0
        self.connections = 0
        self.refused_upgrades = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> TCPProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.cut()

    async def cut(self) -> None:
        """Drop every connection through the proxy now (both sides see a reset)."""
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                writer.transport.abort()
        self._pairs.clear()

    async def aclose(self) -> None:
        await self.stop()
        # Closing the sockets ends every handler by itself (cancelling them instead makes
        # asyncio's start_server callback log the CancelledError as an error).
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.transport.abort()
            return
        if self.block_websockets and b"upgrade: websocket" in head.lower():
            self.refused_upgrades += 1
            writer.write(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        up_writer.write(head)
        try:
            await asyncio.gather(
                _pipe(reader, up_writer), _pipe(up_reader, writer, cut_after=self.cut_after)
            )
        finally:
            self._pairs.discard(pair)
            writer.transport.abort()
            up_writer.transport.abort()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut_after: bytes | None = None
) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if cut_after is not None and cut_after in data:
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()
