"""The Volcano engine: settings, requests and the pool of connections between replies."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any, ClassVar, Final

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from core.upstream import server_of, websocket_failure
from voice.engines.base import AudioChunk, TTSEngine, TTSError, TTSSession
from voice.engines.volcano.codec import (
    DEFAULT_URL,
    MAX_FRAME_BYTES,
    NAMESPACE,
    SAMPLE_RATES,
    Event,
    client_frame,
)
from voice.engines.volcano.connection import GOODBYE_TIMEOUT, PING_INTERVAL, Connection
from voice.engines.volcano.errors import CREDENTIALS_HINT, SERVICE, frame_error
from voice.engines.volcano.session import VolcanoSession

#: A cancelled session's connection is reused only if the service acknowledges within
#: this (SessionCanceled, or SessionFinished after FinishSession): one round trip plus
#: the audio already on its way, generously; a connection that misses it is closed.
DEFAULT_CANCEL_TIMEOUT: Final = 2.0
#: Connections kept open between replies: enough for the replies that typically speak
#: at once; idle sockets are not free for either side, so no more than that.
DEFAULT_MAX_IDLE_CONNECTIONS: Final = 4
#: An idle connection older than this is closed rather than reused: the vendor does not
#: document its idle limit, and gateways commonly drop idle sockets at 60 s. A stale
#: connection is retried on a new one anyway; this only saves that round trip.
DEFAULT_IDLE_TIMEOUT: Final = 50.0


class VolcanoEngine(TTSEngine):
    """Volcano Engine bidirectional TTS; one pooled WebSocket per reply speaking at once."""

    name: ClassVar[str] = "volcano"
    native_streaming: ClassVar[bool] = True

    def __init__(
        self,
        *,
        app_key: str,
        access_key: str,
        speaker: str,
        resource_id: str = "seed-tts-1.0",
        url: str = DEFAULT_URL,
        sample_rate: int = 24000,
        connect_timeout: float,
        read_timeout: float,
        cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
        max_idle_connections: int = DEFAULT_MAX_IDLE_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        speech_rate: int | None = None,
        model: str | None = None,
        additions: dict[str, Any] | None = None,
    ) -> None:
        """
        ``connect_timeout``: the WebSocket handshake plus ConnectionStarted and
        SessionStarted. ``read_timeout``: the longest silence accepted once the text is
        complete (while text is still coming, the service may rightly wait for more).
        ``cancel_timeout``: how long a cancelled session's connection is given to
        acknowledge before it is closed rather than reused. ``max_idle_connections`` and
        ``idle_timeout``: the pool of connections kept open between replies.
        """
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {sorted(SAMPLE_RATES)}")
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"VOLCANO_TTS_URL must be a ws:// or wss:// URL, not {url!r}")
        if speech_rate is not None and not -50 <= speech_rate <= 100:
            raise ValueError("speech_rate must be within [-50, 100]")
        super().__init__(sample_rate=sample_rate)
        self.app_key = app_key
        self.access_key = access_key
        self.resource_id = resource_id
        self.speaker = speaker
        self.url = url
        # Where errors point: scheme, host and port, never a key or a path.
        self._server = server_of(url)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.cancel_timeout = cancel_timeout
        self.max_idle_connections = max_idle_connections
        self.idle_timeout = idle_timeout
        self.speech_rate = speech_rate
        self.model = model
        self.additions = dict(additions or {})
        self._idle: list[Connection] = []
        self._idle_loop: asyncio.AbstractEventLoop | None = None

    # -- requests ------------------------------------------------------------------------

    def session_params(self) -> dict[str, Any]:
        audio: dict[str, Any] = {"format": "pcm", "sample_rate": self.sample_rate}
        if self.speech_rate is not None:
            audio["speech_rate"] = self.speech_rate
        params: dict[str, Any] = {"speaker": self.speaker, "audio_params": audio}
        if self.model:
            params["model"] = self.model
        if self.additions:
            # The service takes additions as a JSON string (the page's "jsonstring").
            params["additions"] = json.dumps(self.additions, ensure_ascii=False)
        return params

    def _request(self, event: Event, **req_params: Any) -> dict[str, Any]:
        return {
            "user": {"uid": "parley"},
            "event": int(event),
            "namespace": NAMESPACE,
            "req_params": {**self.session_params(), **req_params},
        }

    # -- the API -------------------------------------------------------------------------

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        text = text.strip()
        if not text:
            return
        session = VolcanoSession(self)
        try:
            await session.feed(text)
            await session.finish()
            async for chunk in session:
                yield chunk
        finally:
            if session.ended:
                await session.aclose()
            else:
                # Stopped early: the session drops the rest of the audio until the
                # service has finished (bounded by cancel_timeout) in its own task, owned
                # by the engine, so whoever stopped us is not kept waiting for that.
                await session.cancel()

    async def open_session(self) -> TTSSession:
        return VolcanoSession(self)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        if self._idle_loop is asyncio.get_running_loop():
            for conn in idle:
                conn.discard(goodbye=True)
        self._idle_loop = None
        await super().aclose()

    # -- the connection pool -------------------------------------------------------------

    def _take_idle(self) -> Connection | None:
        loop = asyncio.get_running_loop()
        if self._idle_loop is not loop:
            # Connections of another (likely closed) event loop cannot be used here.
            self._idle, self._idle_loop = [], loop
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.discard(goodbye=True)
        return None

    def _release(self, conn: Connection) -> None:
        """Keep a connection whose last session ended cleanly, if the pool has room."""
        if (
            conn.usable
            and self._idle_loop is asyncio.get_running_loop()
            and len(self._idle) < self.max_idle_connections
        ):
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.discard(goodbye=True)

    async def _connect(self) -> Connection:
        connect_id = str(uuid.uuid4())
        headers = {
            "X-Api-App-Key": self.app_key,
            "X-Api-Access-Key": self.access_key,
            "X-Api-Resource-Id": self.resource_id,
            "X-Api-Connect-Id": connect_id,
        }
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await connect(
                    self.url,
                    additional_headers=headers,
                    user_agent_header="parley",
                    open_timeout=self.connect_timeout,
                    max_size=MAX_FRAME_BYTES,
                    ping_interval=PING_INTERVAL,
                    ping_timeout=PING_INTERVAL,
                    close_timeout=GOODBYE_TIMEOUT,
                )
                conn = Connection(ws, connect_id, self)
                try:
                    await ws.send(client_frame(Event.START_CONNECTION, {}))
                    frame = await conn.recv()
                except BaseException:
                    conn.discard()
                    raise
        except (TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed, OSError) as exc:
            code, reason = websocket_failure(
                exc,
                service=SERVICE,
                server=self._server,
                connect_timeout=self.connect_timeout,
                auth_hint=CREDENTIALS_HINT,
            )
            raise TTSError(code, reason) from exc
        if frame.event == Event.CONNECTION_STARTED:
            conn.server_connect_id = frame.connect_id
            return conn
        conn.discard()
        raise frame_error(frame, "connecting")
