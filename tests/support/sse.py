"""A server-sent events client over httpx for tests: parses the stream as a browser would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx


class SSEClient:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        # Waits search from here: one past the event the last wait matched (as RoomClient).
        self.cursor = 0
        self._changed = asyncio.Condition()
        self._done = False
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        data: list[str] = []
        event_id: str | None = None
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if data:
                        event = json.loads("\n".join(data))
                        async with self._changed:
                            self.events.append(event)
                            if event_id is not None:
                                self.ids.append(event_id)
                            self._changed.notify_all()
                    data, event_id = [], None
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "":
                    async with self._changed:
                        self.comments.append(value)
                        self._changed.notify_all()
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    event_id = value
                elif field == "retry":
                    self.retry = int(value)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            pass
        finally:
            async with self._changed:
                self._done = True
                self._changed.notify_all()

    async def wait_for(
        self, predicate: Any, timeout: float = 10.0, *, start: int | None = None
    ) -> dict[str, Any]:
        """The first event after the last one a wait matched that matches ``predicate``;
        ``start`` searches from that index of ``events`` instead (tests/support/wsclient.py
        RoomClient.wait_for says why)."""
        seen = self.cursor if start is None else start

        async def wait() -> dict[str, Any]:
            nonlocal seen
            async with self._changed:
                while True:
                    for index in range(seen, len(self.events)):
                        event = self.events[index]
                        if predicate(event):
                            self.cursor = max(self.cursor, index + 1)
                            return event
                    seen = len(self.events)
                    if self._done:
                        raise ConnectionError("the stream ended before the event came")
                    await self._changed.wait()

        return await asyncio.wait_for(wait(), timeout)

    async def wait_comment(self, text: str, timeout: float = 10.0) -> None:
        async def wait() -> None:
            async with self._changed:
                while text not in self.comments:
                    await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    def durable(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "seq" in e]

    def text_of(self, message_id: str) -> str:
        return "".join(
            e["text"]
            for e in self.events
            if e.get("type") == "delta" and e.get("message_id") == message_id
        )

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.response.aclose()


async def open_sse(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> SSEClient:
    request = client.build_request("GET", url, headers=headers or {})
    response = await client.send(request, stream=True)
    return SSEClient(response)
