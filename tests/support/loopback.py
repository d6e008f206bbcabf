"""Running a loopback test server in a background thread with its own event loop.

Fakes of outside services run in the test's loop (``async with``) or, when a separate
daphne process must reach them, in a daemon thread through ``ThreadRunner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

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
