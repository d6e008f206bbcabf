"""Loopback fake of Volcano Engine's bidirectional TTS, for tests.

FakeVolcanoServer: Volcano Engine bidirectional TTS over WebSocket
-----------------------------------------------------------------
The ``websockets`` server speaking the binary protocol described in
``voice/engines/volcano/`` (with its own independent codec here, so a mistake in the
client's codec is not mirrored). It checks the handshake headers (``X-Api-App-Key``,
``X-Api-Access-Key``, ``X-Api-Resource-Id``; 401 with a JSON body when wrong), answers
StartConnection with ConnectionStarted, StartSession with SessionStarted (or what the
scenario says), each TaskRequest with audio for its text right away (TTSSentenceStart,
TTSResponse frames of ``frame_ms`` each, TTSSentenceEnd: a tone of ``ms_per_char`` per
character at the session's sample rate), FinishSession with SessionFinished after the
remaining audio, CancelSession with SessionCanceled (dropping unsent audio), and
FinishConnection with ConnectionFinished. Anything against the protocol (a session
frame before StartConnection, a second concurrent session, a frame for an unknown
session, a payload without ``event``/``req_params``) is answered with an error frame and
listed in ``server.protocol_errors``.

Scripted per session (``server.script(...)`` then ``set_default``), :class:`VolcanoScenario`:
``normal()``; ``endless(interval)`` (after the first text, audio keeps coming until the
session is cancelled or finished); ``slow(interval)`` (a pause before each audio frame);
``fail_start(message)``; ``fail_after_text(message)`` (SessionFailed);
``error_frame(code, message)`` (an error frame after the first text);
``drop_after_text()`` (the server aborts the TCP connection); ``ignore_cancel()`` (never
acknowledges CancelSession); ``silent_finish()`` (never answers FinishSession). A
server-wide ``fail_connection`` message answers StartConnection with ConnectionFailed.

Records: ``server.frames`` (every frame received, :class:`VolcanoFrame`: ``connection``,
``event``, ``session_id``, ``payload``, ``text`` for TaskRequests), ``server.sent``
(``(connection, event, session_id)`` of every frame sent), ``server.connections``
(:class:`VolcanoConnection`: ``headers``, ``closed_at``). Waits: ``wait_frames(event,
count)``, ``wait_sent(event, count)``, ``wait_closed(connection)`` and ``await_*`` forms.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import json
import struct
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support.tts.common import WebSocketFake, tone

# Events, from the vendor's table "Event 定义" (see voice/engines/volcano/).
START_CONNECTION = 1
FINISH_CONNECTION = 2
CONNECTION_STARTED = 50
CONNECTION_FAILED = 51
CONNECTION_FINISHED = 52
START_SESSION = 100
CANCEL_SESSION = 101
FINISH_SESSION = 102
SESSION_STARTED = 150
SESSION_CANCELED = 151
SESSION_FINISHED = 152
SESSION_FAILED = 153
TASK_REQUEST = 200
TTS_SENTENCE_START = 350
TTS_SENTENCE_END = 351
TTS_RESPONSE = 352

_FULL_CLIENT = 0b0001
_FULL_SERVER = 0b1001
_AUDIO_SERVER = 0b1011
_ERROR = 0b1111
_WITH_EVENT = 0b0100

VolcanoMode = Literal[
    "normal",
    "endless",
    "slow",
    "fail_start",
    "fail_after_text",
    "error_frame",
    "drop_after_text",
    "ignore_cancel",
    "silent_finish",
]


@dataclass(frozen=True, slots=True)
class VolcanoScenario:
    mode: VolcanoMode = "normal"
    ms_per_char: float = 20.0
    frame_ms: float = 40.0
    interval: float = 0.0
    sentence_events: bool = True
    message: str = "synthesis failed"
    code: int = 55000000

    @classmethod
    def normal(cls, **kw: Any) -> VolcanoScenario:
        return cls(mode="normal", **kw)

    @classmethod
    def endless(cls, interval: float = 0.02, **kw: Any) -> VolcanoScenario:
        return cls(mode="endless", interval=interval, **kw)

    @classmethod
    def slow(cls, interval: float = 0.05, **kw: Any) -> VolcanoScenario:
        return cls(mode="slow", interval=interval, **kw)

    @classmethod
    def fail_start(cls, message: str = "speaker not found", **kw: Any) -> VolcanoScenario:
        return cls(mode="fail_start", message=message, code=45000001, **kw)

    @classmethod
    def fail_after_text(cls, message: str = "synthesis failed", **kw: Any) -> VolcanoScenario:
        return cls(mode="fail_after_text", message=message, **kw)

    @classmethod
    def error_frame(
        cls, code: int = 55000001, message: str = "session error", **kw: Any
    ) -> VolcanoScenario:
        return cls(mode="error_frame", code=code, message=message, **kw)

    @classmethod
    def drop_after_text(cls, **kw: Any) -> VolcanoScenario:
        return cls(mode="drop_after_text", **kw)

    @classmethod
    def ignore_cancel(cls, **kw: Any) -> VolcanoScenario:
        return cls(mode="ignore_cancel", **kw)

    @classmethod
    def silent_finish(cls, **kw: Any) -> VolcanoScenario:
        return cls(mode="silent_finish", **kw)


@dataclass(frozen=True, slots=True)
class VolcanoFrame:
    """A frame the fake received."""

    index: int
    connection: int
    msg_type: int
    event: int | None
    session_id: str | None
    payload: Any  # parsed JSON, or None
    received_at: float

    @property
    def text(self) -> str | None:
        """``req_params.text`` of a TaskRequest."""
        if isinstance(self.payload, dict):
            params = self.payload.get("req_params")
            if isinstance(params, dict) and isinstance(params.get("text"), str):
                return str(params["text"])
        return None


@dataclass(slots=True)
class VolcanoConnection:
    ident: int
    headers: dict[str, str]
    opened_at: float
    closed_at: float | None = None


@dataclass(slots=True)
class _FakeSession:
    session_id: str
    sample_rate: int
    scenario: VolcanoScenario
    texts: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    finished: bool = False


def _u32(data: bytes, at: int) -> tuple[int, int]:
    return int.from_bytes(data[at : at + 4], "big"), at + 4


def _parse_client_frame(data: bytes) -> tuple[int, int, int | None, str | None, bytes]:
    """(message type, serialization, event, session id, payload) of a client frame."""
    if len(data) < 4 or data[0] != 0x11:
        raise ValueError(f"bad header {data[:4].hex()}")
    msg_type, flags, serialization = data[1] >> 4, data[1] & 0x0F, data[2] >> 4
    at = 4
    event: int | None = None
    session_id: str | None = None
    if flags & _WITH_EVENT:
        event = int.from_bytes(data[at : at + 4], "big", signed=True)
        at += 4
        if event not in (START_CONNECTION, FINISH_CONNECTION):
            size, at = _u32(data, at)
            session_id = data[at : at + size].decode()
            at += size
    size, at = _u32(data, at)
    payload = data[at : at + size]
    if len(payload) != size or at + size != len(data):
        raise ValueError(f"payload size {size} does not match the frame ({len(data)} bytes)")
    return msg_type, serialization, event, session_id, payload


def _server_frame(
    msg_type: int,
    event: int,
    payload: bytes,
    *,
    session_id: str | None = None,
    connect_id: str | None = None,
) -> bytes:
    serialization = 0 if msg_type == _AUDIO_SERVER else 1
    out = bytearray([0x11, (msg_type << 4) | _WITH_EVENT, serialization << 4, 0])
    out += struct.pack(">i", event)
    ident = connect_id if connect_id is not None else session_id
    if ident is not None:
        raw = ident.encode()
        out += struct.pack(">I", len(raw)) + raw
    out += struct.pack(">I", len(payload)) + payload
    return bytes(out)


def _error_frame(code: int, message: str) -> bytes:
    payload = json.dumps({"error": message}).encode()
    return bytes([0x11, _ERROR << 4, 0x10, 0]) + struct.pack(">II", code, len(payload)) + payload


def _meta(status_code: int, message: str) -> bytes:
    return json.dumps({"status_code": status_code, "message": message}).encode()


class FakeVolcanoServer(WebSocketFake):
    def __init__(
        self,
        default: VolcanoScenario | None = None,
        *,
        app_key: str | None = "test-app",
        access_key: str | None = "test-access",
        resource_id: str | None = None,
        fail_connection: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(name="fake-volcano-server", host=host, port=port)
        self.app_key = app_key
        self.access_key = access_key
        self.resource_id = resource_id
        self.fail_connection = fail_connection
        self._default = default or VolcanoScenario.normal()
        self._queue: deque[VolcanoScenario] = deque()
        self._frames: list[VolcanoFrame] = []
        self._sent: list[tuple[int, int, str | None]] = []
        self._connections: list[VolcanoConnection] = []
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the fake Volcano server is not started")
        return f"ws://{self.host}:{self.port}/api/v3/tts/bidirection"

    def set_default(self, scenario: VolcanoScenario) -> None:
        with self._waiter.cond:
            self._default = scenario

    def script(self, *scenarios: VolcanoScenario) -> None:
        with self._waiter.cond:
            self._queue.extend(scenarios)

    # -- what it saw ---------------------------------------------------------------------

    @property
    def frames(self) -> list[VolcanoFrame]:
        with self._waiter.cond:
            return list(self._frames)

    def frames_of(self, event: int) -> list[VolcanoFrame]:
        return [f for f in self.frames if f.event == event]

    @property
    def sent(self) -> list[tuple[int, int, str | None]]:
        with self._waiter.cond:
            return list(self._sent)

    @property
    def connections(self) -> list[VolcanoConnection]:
        with self._waiter.cond:
            return [replace(c, headers=dict(c.headers)) for c in self._connections]

    def wait_frames(self, event: int, count: int = 1, timeout: float = 5.0) -> list[VolcanoFrame]:
        """Block until ``count`` frames of ``event`` have arrived; return them all."""

        def ready() -> list[VolcanoFrame] | None:
            found = [f for f in self._frames if f.event == event]
            return found if len(found) >= count else None

        return self._waiter.wait(ready, timeout, f"{count} frame(s) of event {event}")

    def wait_sent(self, event: int, count: int = 1, timeout: float = 5.0) -> int:
        def ready() -> int | None:
            n = sum(1 for _, e, _ in self._sent if e == event)
            return n if n >= count else None

        return self._waiter.wait(ready, timeout, f"{count} sent frame(s) of event {event}")

    def wait_closed(self, connection: int, timeout: float = 5.0) -> VolcanoConnection:
        def ready() -> VolcanoConnection | None:
            for c in self._connections:
                if c.ident == connection and c.closed_at is not None:
                    return replace(c)
            return None

        return self._waiter.wait(ready, timeout, f"connection {connection} closing")

    async def await_frames(
        self, event: int, count: int = 1, timeout: float = 5.0
    ) -> list[VolcanoFrame]:
        return await asyncio.to_thread(self.wait_frames, event, count, timeout)

    async def await_sent(self, event: int, count: int = 1, timeout: float = 5.0) -> int:
        return await asyncio.to_thread(self.wait_sent, event, count, timeout)

    async def await_closed(self, connection: int, timeout: float = 5.0) -> VolcanoConnection:
        return await asyncio.to_thread(self.wait_closed, connection, timeout)

    # -- running -------------------------------------------------------------------------

    async def close_connections(self) -> None:
        """Close every open connection from the server's side (as an idle timeout does).

        Callable from the test's loop whether the server runs there or in its thread.
        """
        if self._loop is None:
            return
        if asyncio.get_running_loop() is self._loop:
            await self._close_all()
        else:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._close_all(), self._loop)
            )

    async def _close_all(self) -> None:
        if self._server is not None:
            await asyncio.gather(
                *(ws.close() for ws in self._server.connections), return_exceptions=True
            )

    # -- the protocol --------------------------------------------------------------------

    def _check_handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        headers: Headers = request.headers
        expected = {
            "X-Api-App-Key": self.app_key,
            "X-Api-Access-Key": self.access_key,
            "X-Api-Resource-Id": self.resource_id,
        }
        for name, value in expected.items():
            got = headers.get(name)
            if got is None or (value is not None and got != value):
                response = ws.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    json.dumps({"error": f"invalid {name}", "code": 45000010}),
                )
                return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        ident = next(self._ids)
        headers = {k: v for k, v in ws.request.headers.raw_items()} if ws.request else {}
        record = VolcanoConnection(ident=ident, headers=headers, opened_at=time.monotonic())
        with self._waiter.cond:
            self._connections.append(record)
            self._waiter.cond.notify_all()
        lock = asyncio.Lock()
        state = _ConnState(ident=ident, ws=ws, lock=lock)
        try:
            async for message in ws:
                if isinstance(message, str):
                    self._protocol_error(f"connection {ident}: a text frame")
                    continue
                if not await self._on_frame(state, message):
                    break
        except ConnectionClosed:
            pass
        finally:
            for session in list(state.sessions.values()):
                if session.task is not None:
                    session.task.cancel()
                    await asyncio.gather(session.task, return_exceptions=True)
            with self._waiter.cond:
                record.closed_at = time.monotonic()
                self._waiter.cond.notify_all()

    async def _send(
        self, state: _ConnState, data: bytes, event: int, session_id: str | None
    ) -> None:
        async with state.lock:
            await state.ws.send(data)
        with self._waiter.cond:
            self._sent.append((state.ident, event, session_id))
            self._waiter.cond.notify_all()

    async def _on_frame(self, state: _ConnState, data: bytes) -> bool:
        try:
            msg_type, serialization, event, session_id, raw = _parse_client_frame(data)
            payload: Any = json.loads(raw) if raw else None
        except ValueError as exc:
            self._protocol_error(f"connection {state.ident}: {exc}")
            await self._send(state, _error_frame(45000000, str(exc)), -1, None)
            return True
        with self._waiter.cond:
            self._frames.append(
                VolcanoFrame(
                    index=len(self._frames),
                    connection=state.ident,
                    msg_type=msg_type,
                    event=event,
                    session_id=session_id,
                    payload=payload,
                    received_at=time.monotonic(),
                )
            )
            self._waiter.cond.notify_all()
        if session_id is not None and session_id in state.ended:
            return True  # crossed the server's own end of that session: nothing to do
        problem = self._check(state, msg_type, serialization, event, session_id, payload)
        if problem:
            self._protocol_error(f"connection {state.ident}: {problem}")
            await self._send(state, _error_frame(45000001, problem), -1, session_id)
            return True
        if event == START_CONNECTION:
            if self.fail_connection is not None:
                frame = _server_frame(
                    _FULL_SERVER,
                    CONNECTION_FAILED,
                    _meta(45000000, self.fail_connection),
                    connect_id=f"fake-{state.ident}",
                )
                await self._send(state, frame, CONNECTION_FAILED, None)
                return True
            state.started = True
            frame = _server_frame(
                _FULL_SERVER, CONNECTION_STARTED, b"{}", connect_id=f"fake-{state.ident}"
            )
            await self._send(state, frame, CONNECTION_STARTED, None)
        elif event == FINISH_CONNECTION:
            frame = _server_frame(
                _FULL_SERVER, CONNECTION_FINISHED, b"{}", connect_id=f"fake-{state.ident}"
            )
            await self._send(state, frame, CONNECTION_FINISHED, None)
            return False
        elif event == START_SESSION:
            await self._start_session(state, session_id or "", payload)
        elif event == TASK_REQUEST:
            session = state.sessions[session_id or ""]
            text = payload["req_params"]["text"]
            session.texts.put_nowait(text)
        elif event == FINISH_SESSION:
            session = state.sessions[session_id or ""]
            session.finished = True
            session.texts.put_nowait(None)
        elif event == CANCEL_SESSION:
            session = state.sessions[session_id or ""]
            if session.scenario.mode == "ignore_cancel":
                return True
            if session.task is not None:
                session.task.cancel()
                await asyncio.gather(session.task, return_exceptions=True)
            state.end(session.session_id)
            frame = _server_frame(
                _FULL_SERVER,
                SESSION_CANCELED,
                _meta(20000000, "canceled"),
                session_id=session.session_id,
            )
            await self._send(state, frame, SESSION_CANCELED, session.session_id)
        return True

    def _check(
        self,
        state: _ConnState,
        msg_type: int,
        serialization: int,
        event: int | None,
        session_id: str | None,
        payload: Any,
    ) -> str | None:
        if msg_type != _FULL_CLIENT or event is None:
            return f"message type {msg_type} / event {event}: a full-client request with an event"
        if serialization != 1 or not isinstance(payload, dict):
            return f"event {event}: the payload must be a JSON object"
        if event in (START_CONNECTION, FINISH_CONNECTION):
            return None
        if not state.started:
            return f"event {event} before StartConnection"
        if event == START_SESSION:
            if state.sessions:
                return "StartSession while another session is open on this connection"
            params = payload.get("req_params")
            if payload.get("event") != START_SESSION or not isinstance(params, dict):
                return "StartSession without event/req_params"
            audio = params.get("audio_params")
            if not params.get("speaker") or not isinstance(audio, dict):
                return "StartSession without speaker/audio_params"
            if audio.get("format") != "pcm":
                return f"the fake sends pcm, not {audio.get('format')}"
            if not session_id:
                return "StartSession without a session id"
            return None
        if session_id not in state.sessions:
            return f"event {event} for unknown session {session_id!r}"
        if state.sessions[session_id].finished and event != CANCEL_SESSION:
            return f"event {event} after FinishSession"
        if event == TASK_REQUEST:
            params = payload.get("req_params")
            if payload.get("event") != TASK_REQUEST or not isinstance(params, dict):
                return "TaskRequest without event/req_params"
            if not isinstance(params.get("text"), str):
                return "TaskRequest without req_params.text"
        elif event not in (FINISH_SESSION, CANCEL_SESSION):
            return f"unexpected event {event}"
        return None

    async def _start_session(
        self, state: _ConnState, session_id: str, payload: dict[str, Any]
    ) -> None:
        with self._waiter.cond:
            scenario = self._queue.popleft() if self._queue else self._default
        if scenario.mode == "fail_start":
            frame = _server_frame(
                _FULL_SERVER,
                SESSION_FAILED,
                _meta(scenario.code, scenario.message),
                session_id=session_id,
            )
            await self._send(state, frame, SESSION_FAILED, session_id)
            state.ended.add(session_id)
            return
        rate = int(payload["req_params"]["audio_params"].get("sample_rate") or 24000)
        session = _FakeSession(session_id=session_id, sample_rate=rate, scenario=scenario)
        state.sessions[session_id] = session
        frame = _server_frame(_FULL_SERVER, SESSION_STARTED, b"{}", session_id=session_id)
        await self._send(state, frame, SESSION_STARTED, session_id)
        session.task = asyncio.create_task(self._speak(state, session))

    async def _speak(self, state: _ConnState, session: _FakeSession) -> None:
        """Audio for each text in order; SessionFinished after FinishSession."""
        s = session.scenario
        sid = session.session_id
        first = True
        try:
            while True:
                text = await session.texts.get()
                if text is None:
                    break
                if first and s.mode in ("fail_after_text", "error_frame", "drop_after_text"):
                    if s.mode == "drop_after_text":
                        assert state.ws.transport is not None
                        state.ws.transport.abort()
                        return
                    if s.mode == "error_frame":
                        await self._send(state, _error_frame(s.code, s.message), -1, sid)
                    else:
                        frame = _server_frame(
                            _FULL_SERVER, SESSION_FAILED, _meta(s.code, s.message), session_id=sid
                        )
                        await self._send(state, frame, SESSION_FAILED, sid)
                    state.end(sid)
                    return
                await self._sentence(state, session, text)
                if first and s.mode == "endless":
                    await self._endless(state, session)
                    return
                first = False
            if s.mode == "silent_finish":
                return
            state.end(sid)
            frame = _server_frame(
                _FULL_SERVER, SESSION_FINISHED, _meta(20000000, "ok"), session_id=sid
            )
            await self._send(state, frame, SESSION_FINISHED, sid)
        except ConnectionClosed:
            pass

    async def _sentence(self, state: _ConnState, session: _FakeSession, text: str) -> None:
        s = session.scenario
        sid = session.session_id
        if s.sentence_events:
            meta = json.dumps({"res_params": {"text": text}}).encode()
            frame = _server_frame(_FULL_SERVER, TTS_SENTENCE_START, meta, session_id=sid)
            await self._send(state, frame, TTS_SENTENCE_START, sid)
        audio = tone(len(text) * s.ms_per_char / 1000, session.sample_rate)
        step = max(2, round(session.sample_rate * s.frame_ms / 1000) * 2)
        for at in range(0, len(audio), step):
            if s.interval:
                await asyncio.sleep(s.interval)  # server behaviour: audio made in real time
            frame = _server_frame(
                _AUDIO_SERVER, TTS_RESPONSE, audio[at : at + step], session_id=sid
            )
            await self._send(state, frame, TTS_RESPONSE, sid)
        if s.sentence_events:
            meta = json.dumps({"res_params": {"text": text}}).encode()
            frame = _server_frame(_FULL_SERVER, TTS_SENTENCE_END, meta, session_id=sid)
            await self._send(state, frame, TTS_SENTENCE_END, sid)

    async def _endless(self, state: _ConnState, session: _FakeSession) -> None:
        """Audio every ``interval`` until the session is cancelled or finished."""
        s = session.scenario
        sid = session.session_id
        audio = tone(s.frame_ms / 1000, session.sample_rate)
        while True:
            try:
                async with asyncio.timeout(s.interval):
                    text = await session.texts.get()
            except TimeoutError:
                frame = _server_frame(_AUDIO_SERVER, TTS_RESPONSE, audio, session_id=sid)
                await self._send(state, frame, TTS_RESPONSE, sid)
                continue
            if text is None:
                state.end(sid)
                frame = _server_frame(
                    _FULL_SERVER, SESSION_FINISHED, _meta(20000000, "ok"), session_id=sid
                )
                await self._send(state, frame, SESSION_FINISHED, sid)
                return


@dataclass(slots=True)
class _ConnState:
    ident: int
    ws: ServerConnection
    lock: asyncio.Lock
    started: bool = False
    sessions: dict[str, _FakeSession] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)

    def end(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self.ended.add(session_id)
