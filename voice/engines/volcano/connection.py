"""One WebSocket to the Volcano service, used by one session at a time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from core.upstream import error_message_from_body
from voice.engines.base import TTSEngine, TTSError
from voice.engines.volcano.codec import Event, Frame, FrameError, client_frame, decode_frame
from voice.engines.volcano.errors import SERVICE

# Closing a connection we no longer need: FinishConnection is a courtesy, and waiting for
# a slow network longer than this would only hold the close up. websockets then gives
# the closing handshake as long again (close_timeout) before dropping the socket.
GOODBYE_TIMEOUT: Final = 1.0
# Keepalive pings on pooled connections: proxies and NAT between us and the service drop
# connections silent for a minute or more; the service answers pings.
PING_INTERVAL: Final = 20.0


class Connection:
    """One WebSocket to the service, used by one session at a time."""

    def __init__(self, ws: ClientConnection, connect_id: str, owner: TTSEngine) -> None:
        self.ws = ws
        self._owner = owner
        self.connect_id = connect_id
        self.server_connect_id: str | None = None
        self.idle_since = time.monotonic()
        self.broken = False
        self._closer: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        return not self.broken and self.ws.state is State.OPEN

    async def recv(self) -> Frame:
        """The next binary frame. Raises ConnectionClosed or TTSError."""
        while True:
            message = await self.ws.recv()
            if isinstance(message, str):
                # The service reports some failures as a text frame (the page, "文本帧").
                raise TTSError(
                    "upstream_status",
                    f"The {SERVICE} reported: {error_message_from_body(message)}",
                )
            try:
                return decode_frame(message)
            except FrameError as exc:
                raise TTSError(
                    "malformed", f"The {SERVICE} sent a frame we cannot read: {exc}"
                ) from exc

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)

    def discard(self, *, goodbye: bool = False) -> None:
        """Stop using this connection and close it in the background (owned by the engine).

        ``goodbye``: the connection is healthy and idle, so say FinishConnection first.
        """
        if self._closer is not None:
            return
        healthy = goodbye and not self.broken
        self.broken = True
        if self.ws.state is State.CLOSED:
            return
        self._closer = asyncio.create_task(self.close(goodbye=healthy), name="tts-volcano-close")
        self._owner._adopt(self._closer, cleanup=True)

    async def close(self, *, goodbye: bool = True) -> None:
        """Close, saying FinishConnection first if ``goodbye`` and the socket is open."""
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            if goodbye and self.ws.state is State.OPEN:
                async with asyncio.timeout(GOODBYE_TIMEOUT):
                    await self.ws.send(client_frame(Event.FINISH_CONNECTION, {}))
            await self.ws.close()
