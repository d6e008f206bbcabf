"""A test client for the room WebSocket over a real connection (the ``websockets`` library).

It reads every frame into ``events`` in a background task, so a test can wait for the
event it expects (with a timeout) while everything else is kept for later assertions.

Waits move forward: each matches only events after the one the previous wait matched, so
waiting for "the next pong" or "the reply's end" never finds an earlier one. Events whose
order is not guaranteed (an audio ``cancel`` and the reply's ``generation``, say) are
waited for from a mark: ``mark = len(client.events)`` before the action, then
``wait_for(..., start=mark)`` for the second one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Origin

Predicate = Callable[[dict[str, Any]], bool]


class RoomClient:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []
        self.binary: list[bytes] = []
        # time.monotonic() as each event / binary frame arrived (bench/voice.py).
        self.event_times: list[float] = []
        self.binary_times: list[float] = []
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        # Waits search from here: one past the event the last wait matched.
        self.cursor = 0
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        base_ws_url: str,
        slug: str,
        *,
        token: str | None = None,
        after: int | None = None,
        origin: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> RoomClient:
        url = f"{base_ws_url}/ws/rooms/{slug}/"
        if after is not None:
            url += f"?after={after}"
        headers = dict(extra_headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = await websockets.connect(
            url,
            additional_headers=headers,
            origin=Origin(origin) if origin else None,
            max_size=None,
        )
        return cls(conn)

    async def _read(self) -> None:
        code: int | None = None
        try:
            async for frame in self.conn:
                async with self._changed:
                    if isinstance(frame, bytes):
                        self.binary.append(frame)
                        self.binary_times.append(time.monotonic())
                    else:
                        self.events.append(json.loads(frame))
                        self.event_times.append(time.monotonic())
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            code = self.conn.close_code
            if not self.closed.done():
                self.closed.set_result(code)
            async with self._changed:
                self._changed.notify_all()

    async def send(self, **frame: Any) -> None:
        await self.conn.send(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.conn.send(data)

    async def wait_for(
        self, predicate: Predicate, timeout: float = 10.0, *, start: int | None = None
    ) -> dict[str, Any]:
        """The first event after the last one a wait matched (``cursor``) that matches
        ``predicate``, as it arrives; the cursor then moves past it.

        ``start``: search from this index of ``events`` instead (0: all of them), for an
        event whose order against the previous match is not guaranteed. The cursor never
        moves back.
        """
        seen = self.cursor if start is None else start

        def find() -> dict[str, Any] | None:
            nonlocal seen
            for index in range(seen, len(self.events)):
                event = self.events[index]
                if predicate(event):
                    self.cursor = max(self.cursor, index + 1)
                    return event
            seen = len(self.events)
            return None

        async def wait() -> dict[str, Any]:
            async with self._changed:
                while True:
                    found = find()
                    if found is not None:
                        return found
                    if self.closed.done():
                        raise ConnectionError(
                            f"connection closed ({self.closed.result()}) before the event came"
                        )
                    await self._changed.wait()

        return await asyncio.wait_for(wait(), timeout)

    async def wait_type(
        self, type_: str, timeout: float = 10.0, *, start: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        """The next event of ``type_`` whose ``fields`` have these values (see wait_for)."""
        return await self.wait_for(
            lambda e: e.get("type") == type_ and all(e.get(k) == v for k, v in fields.items()),
            timeout,
            start=start,
        )

    async def wait_terminal(
        self, message_id: str, timeout: float = 20.0, *, start: int | None = None
    ) -> dict[str, Any]:
        """The reply's terminal ``generation`` event (see wait_for)."""
        from chat.models import TERMINAL_STATUSES

        return await self.wait_for(
            lambda e: (
                e.get("type") == "generation"
                and e.get("message_id") == message_id
                and e.get("state") in TERMINAL_STATUSES
            ),
            timeout,
            start=start,
        )

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_]

    def durable(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "seq" in e]

    def text_of(self, message_id: str) -> str:
        return "".join(
            e["text"]
            for e in self.events
            if e.get("type") == "delta" and e.get("message_id") == message_id
        )

    async def close(self) -> None:
        await self.conn.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
