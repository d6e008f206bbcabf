"""One reply's speech on Volcano: one protocol session on a pooled connection."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Final

from websockets.exceptions import ConnectionClosed

from core.upstream import disconnect_reason, silence_reason
from voice.engines.base import (
    FINISH,
    PCMChunker,
    TextStreamSession,
    TTSError,
    internal_error,
)
from voice.engines.volcano.codec import STATUS_OK, Event, MsgType, client_frame
from voice.engines.volcano.connection import Connection
from voice.engines.volcano.errors import SERVICE, frame_error, status_code

if TYPE_CHECKING:
    from voice.engines.volcano.engine import VolcanoEngine

logger = logging.getLogger(__name__)

_CANCEL: Final = object()


class VolcanoSession(TextStreamSession):
    """One reply's speech: one protocol session on a pooled connection.

    A background task, owned by the engine, connects (or takes an idle connection),
    starts the protocol session, then sends fed text as TaskRequests while it receives
    audio, until SessionFinished. Text fed before the session has started waits and goes
    out as one TaskRequest; later text is sent as it comes (whatever queued while a send
    was in flight goes out together).
    """

    def __init__(self, engine: VolcanoEngine) -> None:
        self._engine = engine
        self.session_id = uuid.uuid4().hex
        self._started = False  # SessionStarted received
        self._cancel_sent = False
        super().__init__(engine, sample_rate=engine.sample_rate, name="tts-session-volcano")

    # -- TTSSession ----------------------------------------------------------------------

    async def _cancel(self) -> None:
        if not self._started:
            # Still connecting or starting: nothing to tell the service; close instead.
            self._task.cancel()
            return
        self._post(_CANCEL)
        self._wait_at_most(self._engine.cancel_timeout)

    # -- the background task -------------------------------------------------------------

    async def _run(self) -> None:
        conn: Connection | None = None
        try:
            conn = await self._start()
            self._started = True
            if self.cancelled:
                self._post(_CANCEL)
            sender = asyncio.create_task(self._send_loop(conn), name="tts-volcano-send")
            # A failed send closes the connection, which ends the receive loop too.
            started = conn
            sender.add_done_callback(lambda task: _on_sender_done(task, started))
            try:
                reusable = await self._receive_loop(conn)
            finally:
                sender.cancel()
                await asyncio.wait({sender})
            if reusable:
                self._engine._release(conn)
                conn = None
            self._pipe.end()
        except TTSError as exc:
            self._pipe.fail(exc)
        except (ConnectionClosed, OSError):
            self._pipe.fail(
                TTSError("disconnected", disconnect_reason(service=SERVICE, product="audio"))
            )
        except Exception:
            logger.exception("Volcano speech session failed")
            self._pipe.fail(internal_error())
        finally:
            if conn is not None:
                conn.discard()
            if not self._pipe.closed:
                self._pipe.abort()  # cancelled from outside the session

    async def _start(self) -> Connection:
        """A connection on which this session has started; one retry on a stale one."""
        conn = self._engine._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._engine._connect()
        try:
            await self._start_session(conn)
            return conn
        except (ConnectionClosed, OSError):
            conn.discard()
            if not reused:
                raise
        except BaseException:
            conn.discard()
            raise
        # The pooled connection had died while idle: once more on a new one.
        conn = await self._engine._connect()
        try:
            await self._start_session(conn)
        except BaseException:
            conn.discard()
            raise
        return conn

    async def _start_session(self, conn: Connection) -> None:
        engine = self._engine
        request = engine._request(Event.START_SESSION)
        await conn.send(client_frame(Event.START_SESSION, request, self.session_id))
        try:
            async with asyncio.timeout(engine.connect_timeout):
                while True:
                    frame = await conn.recv()
                    if frame.session_id not in (None, self.session_id):
                        continue  # a late frame of an earlier session on this connection
                    if frame.event == Event.SESSION_STARTED:
                        return
                    raise frame_error(frame, "starting the session")
        except TimeoutError:
            raise TTSError(
                "timeout",
                f"The {SERVICE} did not start a session within {engine.connect_timeout:g} s.",
            ) from None

    async def _send_loop(self, conn: Connection) -> None:
        engine = self._engine
        while True:
            while not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
            item = self._outbox.popleft()
            if item is _CANCEL:
                if not self._finish_sent and not self._cancel_sent:
                    self._cancel_sent = True
                    await conn.send(client_frame(Event.CANCEL_SESSION, {}, self.session_id))
                return
            if item is FINISH:
                if not self._cancel_sent and not self._finish_sent:
                    self._finish_sent = True
                    await conn.send(client_frame(Event.FINISH_SESSION, {}, self.session_id))
                    self._wait_at_most(engine.read_timeout)
                continue  # a cancel may still come: the rest of the audio is dropped then
            parts = [str(item)]
            while self._outbox and isinstance(self._outbox[0], str):
                parts.append(str(self._outbox.popleft()))
            request = engine._request(Event.TASK_REQUEST, text="".join(parts))
            await conn.send(client_frame(Event.TASK_REQUEST, request, self.session_id))

    async def _receive_loop(self, conn: Connection) -> bool:
        """Pass audio on until the session ends; True if the connection can be reused."""
        engine = self._engine
        chunker = PCMChunker(engine.sample_rate or 24000)
        loop = asyncio.get_running_loop()
        cancel_deadline: float | None = None
        while True:
            if self.cancelled and cancel_deadline is None:
                cancel_deadline = loop.time() + engine.cancel_timeout
            if cancel_deadline is not None:
                deadline: float | None = cancel_deadline
            elif self._finish_sent:
                deadline = loop.time() + engine.read_timeout
            else:
                deadline = None  # still taking text: the service may wait for more
            try:
                async with asyncio.timeout_at(deadline) as receiving:
                    self._receiving = receiving
                    frame = await conn.recv()
            except TimeoutError:
                if self.cancelled:
                    return False  # never acknowledged: do not reuse the connection
                raise TTSError(
                    "timeout", silence_reason(service=SERVICE, seconds=engine.read_timeout)
                ) from None
            finally:
                self._receiving = None
            if frame.session_id not in (None, self.session_id):
                continue
            event = frame.event
            if frame.msg_type == MsgType.ERROR:
                if self.cancelled:
                    return False
                raise frame_error(frame, "speaking")
            if event == Event.TTS_RESPONSE:
                if not self.cancelled:
                    for chunk in chunker.push(frame.payload):
                        await self._pipe.put(chunk)
            elif event == Event.SESSION_FINISHED:
                if not self.cancelled:
                    status = status_code(frame)
                    if status not in (None, STATUS_OK):
                        raise frame_error(frame, "finishing")
                    for chunk in chunker.flush():
                        await self._pipe.put(chunk)
                return True
            elif event == Event.SESSION_CANCELED:
                return True
            elif event == Event.SESSION_FAILED:
                if self.cancelled:
                    return True  # the session is over either way
                raise frame_error(frame, "speaking")
            elif event in (Event.CONNECTION_FAILED, Event.CONNECTION_FINISHED):
                if self.cancelled:
                    return False
                raise frame_error(frame, "speaking")
            # TTSSentenceStart/End (and events newer than this code) carry nothing needed.


def _on_sender_done(task: asyncio.Task[None], conn: Connection) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        if not isinstance(error, ConnectionClosed | OSError):
            logger.error("Volcano speech sender failed", exc_info=error)
        conn.discard()
