"""One reply's realtime speech on Qwen: one WebSocket, one session (protocol in ``__init__``).

A background task, owned by the engine, connects and starts the session (``session.update``
until ``session.updated``), then sends fed text as ``input_text_buffer.append`` while it
receives audio, until ``session.finished``. Text fed before the session has started waits
and goes out as one append; later text is sent as it comes (whatever queued while a send
was in flight goes out together). The service cuts the text into responses itself
(``server_commit``). Cancelling closes the socket at once: a realtime session is not
reused, so there is nothing to keep clean for a next reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from core.upstream import clip, disconnect_reason, silence_reason, websocket_failure
from voice.engines.base import (
    FINISH,
    PCMChunker,
    TextStreamSession,
    TTSError,
    internal_error,
)
from voice.engines.qwen.engine import SAMPLE_RATE, b64_pcm
from voice.engines.qwen.errors import AUTH_HINT, SERVICE, dashscope_message, message_from_body

if TYPE_CHECKING:
    from voice.engines.qwen.engine import QwenEngine

logger = logging.getLogger(__name__)

# One message is an audio delta (a fraction of a second of base64 PCM) or a small event;
# one far larger than any the service sends is refused rather than buffered.
_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
# Keepalive pings: proxies and NAT drop a socket silent for a minute or more, and a
# session waits on the model's next words; the service answers pings.
_PING_INTERVAL: Final = 20.0
# Closing: websockets waits this long for the service's closing handshake, then drops
# the TCP connection. The close frame itself goes out at once.
_CLOSE_TIMEOUT: Final = 1.0


def session_config(engine: QwenEngine) -> dict[str, Any]:
    """The ``session`` of ``session.update``: who speaks, and PCM at our rate."""
    config: dict[str, Any] = {
        "voice": engine.voice,
        "mode": "server_commit",
        "response_format": "pcm",
        "sample_rate": SAMPLE_RATE,
    }
    if engine.language_type:
        config["language_type"] = engine.language_type
    return config


def client_event(kind: str, **fields: Any) -> str:
    """A client event: its ``type``, a fresh ``event_id`` and its fields, as JSON."""
    event = {"event_id": f"event_{uuid.uuid4().hex}", "type": kind, **fields}
    return json.dumps(event, ensure_ascii=False)


class QwenRealtimeSession(TextStreamSession):
    def __init__(self, engine: QwenEngine) -> None:
        self._engine = engine
        self._sender_failed = False
        self._closing = False
        super().__init__(engine, sample_rate=SAMPLE_RATE, name="tts-session-qwen")

    # -- TTSSession ----------------------------------------------------------------------

    async def _cancel(self) -> None:
        # The task's end closes the socket; the service stops speaking when it sees that.
        self._task.cancel()

    # -- the background task -------------------------------------------------------------

    async def _run(self) -> None:
        ws: ClientConnection | None = None
        try:
            ws = await self._open()
            sender = asyncio.create_task(self._send_loop(ws), name="tts-qwen-send")
            opened = ws
            sender.add_done_callback(lambda task: self._on_sender_done(task, opened))
            try:
                await self._receive_loop(ws)
            finally:
                sender.cancel()
                await asyncio.wait({sender})
            self._pipe.end()
        except TTSError as exc:
            self._pipe.fail(exc)
        except (ConnectionClosed, OSError):
            if self._sender_failed:
                self._pipe.fail(internal_error())
            else:
                reason = disconnect_reason(service=SERVICE, product="audio")
                self._pipe.fail(TTSError("disconnected", reason))
        except Exception:
            logger.exception("Qwen speech session failed")
            self._pipe.fail(internal_error())
        finally:
            if ws is not None:
                self._discard(ws)
            if not self._pipe.closed:
                self._pipe.abort()  # cancelled from outside the session

    async def _open(self) -> ClientConnection:
        """A connection on which the session has started (``session.updated``)."""
        engine = self._engine
        try:
            async with asyncio.timeout(engine.connect_timeout):
                ws = await connect(
                    engine.realtime_url,
                    additional_headers={"Authorization": f"Bearer {engine.api_key}"},
                    user_agent_header="parley",
                    open_timeout=engine.connect_timeout,
                    max_size=_MAX_MESSAGE_BYTES,
                    ping_interval=_PING_INTERVAL,
                    ping_timeout=_PING_INTERVAL,
                    close_timeout=_CLOSE_TIMEOUT,
                )
        except (TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed, OSError) as exc:
            code, reason = websocket_failure(
                exc,
                service=SERVICE,
                server=engine.realtime_server,
                connect_timeout=engine.connect_timeout,
                auth_hint=AUTH_HINT,
                read_message=message_from_body,
            )
            raise TTSError(code, reason) from exc
        try:
            # The service's session.created may come first; it is not waited for.
            await ws.send(client_event("session.update", session=session_config(engine)))
            async with asyncio.timeout(engine.connect_timeout):
                while True:
                    event = await _recv(ws)
                    kind = event.get("type")
                    if kind == "session.updated":
                        return ws
                    if kind == "error":
                        raise _error_event(event, "starting the session")
        except TimeoutError:
            self._discard(ws)
            raise TTSError(
                "timeout",
                f"The {SERVICE} did not start a session within {engine.connect_timeout:g} s.",
            ) from None
        except BaseException:
            self._discard(ws)
            raise

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            while not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
            item = self._outbox.popleft()
            if item is FINISH:
                await ws.send(client_event("session.finish"))
                self._finish_sent = True
                self._wait_at_most(self._engine.read_timeout)
                return
            parts = [str(item)]
            while self._outbox and isinstance(self._outbox[0], str):
                parts.append(str(self._outbox.popleft()))
            await ws.send(client_event("input_text_buffer.append", text="".join(parts)))

    async def _receive_loop(self, ws: ClientConnection) -> None:
        """Pass audio on until ``session.finished``."""
        engine = self._engine
        chunker = PCMChunker(SAMPLE_RATE)
        loop = asyncio.get_running_loop()
        while True:
            # Still taking text, the service may wait for more: no deadline until then.
            deadline = loop.time() + engine.read_timeout if self._finish_sent else None
            try:
                async with asyncio.timeout_at(deadline) as receiving:
                    self._receiving = receiving
                    event = await _recv(ws)
            except TimeoutError:
                reason = silence_reason(service=SERVICE, seconds=engine.read_timeout)
                raise TTSError("timeout", reason) from None
            finally:
                self._receiving = None
            kind = event.get("type")
            if kind == "response.audio.delta":
                delta = event.get("delta")
                if not isinstance(delta, str):
                    raise _shape_error(event)
                for chunk in chunker.push(b64_pcm(delta)):
                    await self._pipe.put(chunk)
            elif kind == "session.finished":
                for chunk in chunker.flush():
                    await self._pipe.put(chunk)
                return
            elif kind == "error":
                raise _error_event(event, "speaking")
            # session.created, response.created/done, output items and content parts
            # (and events newer than this code) carry nothing needed.

    def _on_sender_done(self, task: asyncio.Task[None], ws: ClientConnection) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            if not isinstance(error, ConnectionClosed | OSError):
                logger.error("Qwen speech sender failed", exc_info=error)
                self._sender_failed = True
            self._discard(ws)  # the receive loop then ends with ConnectionClosed

    def _discard(self, ws: ClientConnection) -> None:
        """Close ``ws`` in the background (owned by the engine): the close frame goes out
        now, the closing handshake does not hold up whoever stopped the session."""
        if self._closing:
            return
        self._closing = True
        closer = asyncio.create_task(_close(ws), name="tts-qwen-close")
        self._engine._adopt(closer, cleanup=True)


async def _close(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed, OSError):
        await ws.close()


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    """The next event. Raises ConnectionClosed or TTSError."""
    message = await ws.recv()
    if not isinstance(message, str):
        raise TTSError("malformed", f"The {SERVICE} sent a binary message, not a JSON event.")
    try:
        event = json.loads(message)
    except ValueError:
        raise TTSError(
            "malformed", f"The {SERVICE} sent an event that is not JSON: {clip(message)}"
        ) from None
    if not isinstance(event, dict):
        raise TTSError("malformed", f"The {SERVICE} sent an event we cannot read: {clip(message)}")
    return event


def _error_event(event: dict[str, Any], when: str) -> TTSError:
    message = dashscope_message(event)
    reason = f"The {SERVICE} reported an error while {when}"
    return TTSError("upstream_status", f"{reason}: {message}" if message else f"{reason}.")


def _shape_error(event: dict[str, Any]) -> TTSError:
    text = clip(json.dumps(event, ensure_ascii=False))
    return TTSError("malformed", f"The {SERVICE} sent an event we cannot read: {text}")
