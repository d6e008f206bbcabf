"""The per-user connection cap (docs/protocol.md: close 4429, HTTP 429).

Every long-lived connection (a room WebSocket, an SSE stream) holds one *slot* of its user
for as long as it lives; a user holding ``PARLEY_MAX_CONNECTIONS_PER_USER`` slots in this
process is refused another one. The WebSocket side is ``ConnectionCapMiddleware`` in the
authentication stack (accounts/auth.py), so a refused handshake costs no room lookup, no
presence write and no replay; the SSE view takes a slot with ``connection_slot_take`` and
releases it when its stream ends.

The count is per process, on purpose: it needs no shared store (a Redis outage must not
refuse every connection), and it bounds what one user can cost the process that serves
them, which is what the cap protects. Behind nginx with N processes a user can hold at most
N times the cap. Slots are taken and released on the event loop's thread only, so a plain
dict is enough (no lock).

This is our own code rather than a library's: it is a counter and a ``finally``, and no
ASGI library counts per authenticated Django user.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, TypeVar

from django.conf import settings

from chat.errors import TooManyConnections
from core import contract, metrics

# WebSocket close code for a refused connection (docs/protocol.md "WebSocket").
CLOSE_TOO_MANY_CONNECTIONS = contract.TOO_MANY_CONNECTIONS.code

_held: Counter[int] = Counter()

T = TypeVar("T")


def connections_held(user_id: int) -> int:
    """How many slots ``user_id`` holds in this process (for tests and the bench)."""
    return _held[user_id]


class ConnectionSlot:
    """One connection's place under its user's cap; ``release`` is safe to call twice."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        _held[self.user_id] -= 1
        if _held[self.user_id] <= 0:
            del _held[self.user_id]

    def hold(self, stream: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        """``stream``, holding this slot until it ends, fails, is cancelled or is dropped.

        For a streaming response: the slot is taken before the response exists (so the
        view can still answer 429) and released when the stream stops. A stream that is
        never started (the client left before the first byte) runs no ``finally``, so its
        garbage collection releases the slot too.
        """
        held = self._hold(stream)
        weakref.finalize(held, self.release)
        return held

    async def _hold(self, stream: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        try:
            async for item in stream:
                yield item
        finally:
            try:
                # Closed with us, not left suspended until garbage collection: its own
                # ``finally`` (leaving the room's group and presence) runs now.
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                self.release()

    async def __aenter__(self) -> ConnectionSlot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def connection_slot_take(*, user_id: int) -> ConnectionSlot:
    """A slot for a new connection of ``user_id``; TooManyConnections when the cap is full."""
    limit = settings.PARLEY_MAX_CONNECTIONS_PER_USER
    if limit > 0 and _held[user_id] >= limit:
        raise TooManyConnections(
            f"you already have {limit} connections open to this server; close one first"
        )
    _held[user_id] += 1
    return ConnectionSlot(user_id)


class ConnectionCapMiddleware:
    """ASGI middleware for WebSocket: hold a slot for the life of the connection.

    Sits inside the authentication stack, so ``scope['user']`` is known. Anonymous
    handshakes pass through (the consumer closes them with 4401). A user over the cap is
    accepted and closed with 4429 at once, like the other refusals, so the client can read
    the code (a close before accept reaches a browser as a bare HTTP 403).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        user = scope.get("user")
        if scope.get("type") != "websocket" or user is None or not user.is_authenticated:
            return await self.inner(scope, receive, send)
        try:
            slot = connection_slot_take(user_id=user.pk)
        except TooManyConnections:
            await _refuse(receive, send)
            return None
        async with slot:
            return await self.inner(scope, receive, send)


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _gate() -> asyncio.Semaphore:
    # One per event loop (daphne has one; the in-process tests make one per test).
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(settings.PARLEY_HANDSHAKE_CONCURRENCY)
    return gate


class HandshakeGateMiddleware:
    """At most PARLEY_HANDSHAKE_CONCURRENCY WebSocket handshakes worked on at once.

    A handshake's work (the session or token lookup, the room and membership checks, the
    presence write) runs on the single thread Django's ORM calls share with every open
    connection's own calls (Channels closes stale DB connections there before each frame
    it handles). A flood of handshakes queued hundreds of jobs on it, in front of an
    established member's ping. Here the rest wait in the event loop, where waiting is
    free, so at most a handful of jobs are ever ahead of a member's frame.

    A handshake is done when the app sends its first frame (``hello``) or closes; the
    wrapped ``send`` costs one flag check per frame after that.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("type") != "websocket" or settings.PARLEY_HANDSHAKE_CONCURRENCY <= 0:
            return await self.inner(scope, receive, send)
        gate = _gate()
        await gate.acquire()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                gate.release()

        async def gated_send(message: dict[str, Any]) -> None:
            if held and message["type"] in ("websocket.send", "websocket.close"):
                release()
            await send(message)

        try:
            return await self.inner(scope, receive, gated_send)
        finally:
            release()


async def _refuse(receive: Any, send: Any) -> None:
    message = await receive()
    if message.get("type") != "websocket.connect":
        return  # the client went away before its handshake completed
    await send({"type": "websocket.accept"})
    metrics.handshake("websocket", CLOSE_TOO_MANY_CONNECTIONS)
    await send({"type": "websocket.close", "code": CLOSE_TOO_MANY_CONNECTIONS})
