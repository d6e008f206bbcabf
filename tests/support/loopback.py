"""Running a loopback test server in a background thread with its own event loop.

Fakes of outside services run in the test's loop (``async with``) or, when a separate
daphne process must reach them, in a daemon thread through ``ThreadRunner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

# Starting or stopping a loopback server takes milliseconds; this is the give-up point.
START_TIMEOUT = 10.0


class ThreadRunner:
    """Run a server's ``astart``/``astop`` in a daemon thread with its own event loop."""

    def __init__(
        self,
        name: str,
        astart: Callable[[], Awaitable[object]],
        astop: Callable[[], Awaitable[None]],
    ) -> None:
        self._name = name
        self._astart = astart
        self._astop = astop
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self._astart()
            except BaseException as exc:
                failure.append(exc)
                raise
            finally:
                ready.set()
            try:
                await self._stop.wait()
            finally:
                await self._astop()

        def run() -> None:
            with contextlib.suppress(BaseException):
                asyncio.run(main())

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise TimeoutError(f"{self._name} did not start")
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already gone
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT)
        self._thread = None


class Connection:
    """One accepted socket: a background reader fills a buffer and notices the close."""

    def __init__(
        self,
        ident: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_close: Callable[[Connection], None],
    ) -> None:
        self.ident = ident
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.closed = asyncio.Event()
        self.closed_at: float | None = None
        self.closing_by_server = False
        self._data = asyncio.Event()
        self._on_close = on_close
        self._reader_task = asyncio.create_task(self._read_forever())

    async def _read_forever(self) -> None:
        try:
            while True:
                try:
                    data = await self.reader.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                self.buffer += data
                self._data.set()
        finally:
            # The moment the peer's FIN (or RST) reached us: what tests measure.
            self.closed_at = time.monotonic()
            self.closed.set()
            self._data.set()
            self._on_close(self)

    async def _more(self) -> bool:
        if self.closed.is_set():
            return False
        self._data.clear()
        await self._data.wait()
        return True

    async def read_until(self, sep: bytes, limit: int) -> bytes | None:
        while True:
            at = self.buffer.find(sep)
            if at >= 0:
                chunk = bytes(self.buffer[: at + len(sep)])
                del self.buffer[: at + len(sep)]
                return chunk
            if len(self.buffer) > limit or not await self._more():
                return None

    async def read_exactly(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            if not await self._more():
                return None
        chunk = bytes(self.buffer[:n])
        del self.buffer[:n]
        return chunk

    async def gone_within(self, seconds: float | None) -> bool:
        """Wait up to ``seconds`` (None: forever) for the client to leave; True if it did."""
        try:
            async with asyncio.timeout(seconds):
                await self.closed.wait()
        except TimeoutError:
            return False
        return True

    async def send(self, data: bytes) -> bool:
        """Write and flush; False if the client is gone."""
        if self.closed.is_set():
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return not self.closed.is_set()

    async def close(self) -> None:
        if not self.closed.is_set():
            self.closing_by_server = True
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def aclose(self) -> None:
        if not self.closed.is_set():
            self.closing_by_server = True
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
        await self.close()


class ServedInThread:
    """A server that runs in the test's loop (``async with``) or in a daemon thread.

    Subclasses give ``astart`` (listen, return ``self``) and ``astop``; this gives the rest:
    ``async with``, and ``with`` or ``start()``/``stop()`` for a separate daphne process
    to reach, through a :class:`ThreadRunner` with its own event loop.
    """

    def __init__(self, name: str) -> None:
        self._runner = ThreadRunner(name, self.astart, self.astop)

    async def astart(self) -> Self:
        raise NotImplementedError

    async def astop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def start(self) -> Self:
        """Serve from a daemon thread with its own event loop; return once listening."""
        self._runner.start()
        return self

    def stop(self) -> None:
        self._runner.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LoopbackHTTPServer(ServedInThread):
    """An HTTP/1.1 server on 127.0.0.1 (``asyncio.start_server``, no extra dependency).

    Runs in the test's loop (``async with``) or in a daemon thread (``with``, or
    ``start()``/``stop()``, for a separate daphne process to reach). Subclasses answer
    requests in ``_serve_one`` and may note closed connections in ``connection_closed``.
    """

    def __init__(self, *, name: str, host: str, port: int) -> None:
        super().__init__(name)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._connection_ids = itertools.count(1)

    async def _serve_one(self, conn: Connection) -> bool:
        """Answer one request; False when the connection should close."""
        raise NotImplementedError

    def connection_closed(self, conn: Connection) -> None:
        """The client (or the server) closed ``conn``."""

    async def astart(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def astop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Hang up on every client; each handler then sees its connection closed and ends
        # on its own (cancelling them trips a Python 3.11 asyncio bug that logs noise).
        for conn in list(self._connections):
            await conn.aclose()
        handlers = list(self._handlers)
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=START_TIMEOUT)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = Connection(next(self._connection_ids), reader, writer, self._closed)
        self._connections.add(conn)
        try:
            while await self._serve_one(conn):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            await conn.close()
            self._handlers.discard(task)

    def _closed(self, conn: Connection) -> None:
        self._connections.discard(conn)
        self.connection_closed(conn)
