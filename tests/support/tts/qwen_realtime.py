"""The realtime half of the Qwen-TTS fake (``tests/support/tts/qwen.py`` puts both together).

Realtime (``realtime_url`` = ``ws://127.0.0.1:PORT/api-ws/v1/realtime``), a ``websockets``
server: the handshake needs the bearer key (else 401 with the JSON body above) and
``?model=``. It sends ``session.created`` at once; the first client event must be
``session.update`` (``voice``, ``response_format: "pcm"``, ``sample_rate``, ``mode``),
answered by ``session.updated``; each ``input_text_buffer.append`` is spoken right away
as one response (``response.created``, output item and content part added,
``response.audio.delta`` of ``frame_ms`` each, their ``.done`` events, ``response.done``);
``session.finish`` gets the rest, ``session.finished`` and the server's close. Every
client event needs a unique ``event_id``. Anything against the protocol is answered
with an ``error`` event and listed in ``server.protocol_errors``. Scripted per
connection, :class:`QwenRealtimeScenario`: ``normal()``; ``slow(interval)``;
``endless(interval)`` (after the first text, audio until the client leaves or
finishes); ``reject_session(message)`` (``error`` instead of ``session.updated``);
``fail_after_text(code, message)`` (an ``error`` event after the first text);
``drop_after_text()`` (the server aborts the TCP connection); ``silent_finish()`` (never
answers ``session.finish``).

Records: ``server.events`` (every client event, :class:`QwenEvent`: ``connection``,
``type``, ``payload``, ``text``), ``server.sent`` (``(connection, type)`` of every event
sent), ``server.sockets`` (:class:`QwenSocket`: ``path``, ``headers``, ``closed_at``).
Waits: ``wait_events(type, count)``, ``wait_sent(type, count)``, ``wait_closed(n)`` and
their ``await_*`` forms.
"""

from __future__ import annotations

import asyncio
import base64
import http
import itertools
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support.tts.common import WebSocketFake, tone
from tests.support.tts.qwen_http import QWEN_SAMPLE_RATE, dashscope_error

REALTIME_PATH = "/api-ws/v1/realtime"


RealtimeMode = Literal[
    "normal",
    "slow",
    "endless",
    "reject_session",
    "fail_after_text",
    "drop_after_text",
    "silent_finish",
]


@dataclass(frozen=True, slots=True)
class QwenRealtimeScenario:
    mode: RealtimeMode = "normal"
    ms_per_char: float = 20.0
    frame_ms: float = 40.0
    interval: float = 0.0
    code: str = "InternalError"
    message: str = "synthesis failed"

    @classmethod
    def normal(cls, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="normal", **kw)

    @classmethod
    def slow(cls, interval: float = 0.05, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="slow", interval=interval, **kw)

    @classmethod
    def endless(cls, interval: float = 0.02, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="endless", interval=interval, **kw)

    @classmethod
    def reject_session(
        cls, message: str = "Invalid value: 'Nobody'. Supported values are: 'Cherry'.", **kw: Any
    ) -> QwenRealtimeScenario:
        return cls(mode="reject_session", code="invalid_value", message=message, **kw)

    @classmethod
    def fail_after_text(
        cls, code: str = "InternalError", message: str = "synthesis failed", **kw: Any
    ) -> QwenRealtimeScenario:
        return cls(mode="fail_after_text", code=code, message=message, **kw)

    @classmethod
    def drop_after_text(cls, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="drop_after_text", **kw)

    @classmethod
    def silent_finish(cls, **kw: Any) -> QwenRealtimeScenario:
        return cls(mode="silent_finish", **kw)


@dataclass(frozen=True, slots=True)
class QwenEvent:
    """A client event the fake received."""

    index: int
    connection: int
    type: str
    payload: dict[str, Any]
    received_at: float

    @property
    def text(self) -> str | None:
        value = self.payload.get("text")
        return value if isinstance(value, str) else None


@dataclass(slots=True)
class QwenSocket:
    ident: int
    path: str
    headers: dict[str, str]
    opened_at: float
    closed_at: float | None = None

    @property
    def model(self) -> str | None:
        values = parse_qs(urlsplit(self.path).query).get("model")
        return values[0] if values else None


@dataclass(slots=True)
class _Session:
    ident: int
    ws: ServerConnection
    scenario: QwenRealtimeScenario
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    config: dict[str, Any] | None = None
    event_ids: set[str] = field(default_factory=set)
    texts: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    speaker: asyncio.Task[None] | None = None
    finishing: bool = False


class QwenRealtimeServer(WebSocketFake):
    """The realtime WebSocket API: one session per connection."""

    def __init__(
        self,
        default: QwenRealtimeScenario | None = None,
        *,
        api_key: str = "sk-test-qwen",
        model: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(name="fake-qwen-realtime", host=host, port=port)
        self.api_key = api_key
        self.model = model  # if set, the handshake's ?model= must be it
        self._default = default or QwenRealtimeScenario.normal()
        self._queue: deque[QwenRealtimeScenario] = deque()
        self._events: list[QwenEvent] = []
        self._sent: list[tuple[int, str]] = []
        self._sockets: list[QwenSocket] = []
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the fake Qwen server is not started")
        return f"ws://{self.host}:{self.port}{REALTIME_PATH}"

    def set_default(self, scenario: QwenRealtimeScenario) -> None:
        with self._waiter.cond:
            self._default = scenario

    def script(self, *scenarios: QwenRealtimeScenario) -> None:
        with self._waiter.cond:
            self._queue.extend(scenarios)

    # -- what it saw: realtime -----------------------------------------------------------

    @property
    def events(self) -> list[QwenEvent]:
        with self._waiter.cond:
            return list(self._events)

    def events_of(self, kind: str) -> list[QwenEvent]:
        return [e for e in self.events if e.type == kind]

    @property
    def sent(self) -> list[tuple[int, str]]:
        with self._waiter.cond:
            return list(self._sent)

    @property
    def sockets(self) -> list[QwenSocket]:
        with self._waiter.cond:
            return [replace(c, headers=dict(c.headers)) for c in self._sockets]

    def wait_events(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[QwenEvent]:
        def ready() -> list[QwenEvent] | None:
            found = [e for e in self._events if e.type == kind]
            return found if len(found) >= count else None

        return self._waiter.wait(ready, timeout, f"{count} client event(s) {kind}")

    def wait_sent(self, kind: str, count: int = 1, timeout: float = 5.0) -> int:
        def ready() -> int | None:
            n = sum(1 for _, k in self._sent if k == kind)
            return n if n >= count else None

        return self._waiter.wait(ready, timeout, f"{count} sent event(s) {kind}")

    def wait_closed(self, socket: int, timeout: float = 5.0) -> QwenSocket:
        def ready() -> QwenSocket | None:
            for c in self._sockets:
                if c.ident == socket and c.closed_at is not None:
                    return replace(c)
            return None

        return self._waiter.wait(ready, timeout, f"socket {socket} closing")

    async def await_events(
        self, kind: str, count: int = 1, timeout: float = 5.0
    ) -> list[QwenEvent]:
        return await asyncio.to_thread(self.wait_events, kind, count, timeout)

    async def await_sent(self, kind: str, count: int = 1, timeout: float = 5.0) -> int:
        return await asyncio.to_thread(self.wait_sent, kind, count, timeout)

    async def await_closed(self, socket: int, timeout: float = 5.0) -> QwenSocket:
        return await asyncio.to_thread(self.wait_closed, socket, timeout)

    # -- the protocol --------------------------------------------------------------------

    def _check_handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        problem: tuple[int, str, str] | None = None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            problem = (401, "InvalidApiKey", "Invalid API-key provided.")
        elif url.path != REALTIME_PATH:
            problem = (404, "NotFound", f"No such API: {url.path}")
        else:
            model = parse_qs(url.query).get("model")
            if not model or (self.model is not None and model[0] != self.model):
                problem = (400, "InvalidParameter", f"Model not found: {model}")
        if problem is None:
            return None
        status, code, message = problem
        response = ws.respond(http.HTTPStatus(status), json.dumps(dashscope_error(code, message)))
        response.headers["Content-Type"] = "application/json"
        return response

    async def _send(self, to: _Session, kind: str, /, **fields: Any) -> None:
        event = {"event_id": f"event_{uuid.uuid4().hex[:21]}", "type": kind, **fields}
        async with to.lock:
            await to.ws.send(json.dumps(event))
        with self._waiter.cond:
            self._sent.append((to.ident, kind))
            self._waiter.cond.notify_all()

    async def _handle(self, ws: ServerConnection) -> None:
        ident = next(self._ids)
        request = ws.request
        record = QwenSocket(
            ident=ident,
            path=request.path if request else "",
            headers=dict(request.headers.raw_items()) if request else {},
            opened_at=time.monotonic(),
        )
        with self._waiter.cond:
            self._sockets.append(record)
            scenario = self._queue.popleft() if self._queue else self._default
            self._waiter.cond.notify_all()
        session = _Session(ident=ident, ws=ws, scenario=scenario)
        try:
            await self._send(
                session,
                "session.created",
                session={
                    "object": "realtime.session",
                    "mode": "server_commit",
                    "model": record.model,
                    "voice": "Cherry",
                    "response_format": "pcm",
                    "sample_rate": QWEN_SAMPLE_RATE,
                    "id": f"sess_{ident}",
                },
            )
            async for message in ws:
                if not await self._on_message(session, message):
                    break
        except ConnectionClosed:
            pass
        finally:
            if session.speaker is not None:
                session.speaker.cancel()
                await asyncio.gather(session.speaker, return_exceptions=True)
            with self._waiter.cond:
                record.closed_at = time.monotonic()
                self._waiter.cond.notify_all()

    async def _reject(self, session: _Session, problem: str) -> None:
        self._protocol_error(f"socket {session.ident}: {problem}")
        await self._send(
            session,
            "error",
            error={"type": "invalid_request_error", "code": "invalid_value", "message": problem},
        )

    async def _on_message(self, session: _Session, message: str | bytes) -> bool:
        if not isinstance(message, str):
            await self._reject(session, "a binary message")
            return True
        try:
            event = json.loads(message)
        except ValueError:
            await self._reject(session, "a message that is not JSON")
            return True
        if not isinstance(event, dict):
            await self._reject(session, "an event that is not an object")
            return True
        kind = event.get("type")
        with self._waiter.cond:
            self._events.append(
                QwenEvent(
                    index=len(self._events),
                    connection=session.ident,
                    type=str(kind),
                    payload=event,
                    received_at=time.monotonic(),
                )
            )
            self._waiter.cond.notify_all()
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id or event_id in session.event_ids:
            await self._reject(session, f"{kind}: a missing or repeated event_id")
            return True
        session.event_ids.add(event_id)
        if session.finishing:
            await self._reject(session, f"{kind} after session.finish")
            return True
        if kind == "session.update":
            return await self._update(session, event)
        if session.config is None:
            await self._reject(session, f"{kind} before session.update")
            return True
        if kind == "input_text_buffer.append":
            text = event.get("text")
            if not isinstance(text, str):
                await self._reject(session, "input_text_buffer.append without text")
                return True
            session.texts.put_nowait(text)
        elif kind == "session.finish":
            session.finishing = True
            session.texts.put_nowait(None)
        else:
            await self._reject(session, f"unexpected event {kind}")
        return True

    async def _update(self, session: _Session, event: dict[str, Any]) -> bool:
        config = event.get("session")
        if session.config is not None:
            await self._reject(session, "a second session.update (the fake takes one)")
            return True
        if (
            not isinstance(config, dict)
            or not config.get("voice")
            or config.get("response_format") != "pcm"
            or config.get("sample_rate") != QWEN_SAMPLE_RATE
            or config.get("mode") not in ("server_commit", "commit")
        ):
            await self._reject(session, f"session.update the fake cannot honour: {config}")
            return True
        s = session.scenario
        if s.mode == "reject_session":
            error = {"type": "invalid_request_error", "code": s.code, "message": s.message}
            await self._send(session, "error", error=error)
            return True
        session.config = config
        await self._send(
            session, "session.updated", session={**config, "id": f"sess_{session.ident}"}
        )
        session.speaker = asyncio.create_task(self._speak(session))
        return True

    async def _speak(self, session: _Session) -> None:
        """One response per appended text, in order; session.finished after finish."""
        s = session.scenario
        first = True
        try:
            while True:
                text = await session.texts.get()
                if text is None:
                    break
                if first and s.mode in ("fail_after_text", "drop_after_text"):
                    if s.mode == "drop_after_text":
                        assert session.ws.transport is not None
                        session.ws.transport.abort()
                        return
                    error = {"type": "server_error", "code": s.code, "message": s.message}
                    await self._send(session, "error", error=error)
                    return
                await self._response(session, text)
                if first and s.mode == "endless":
                    await self._endless(session)
                    return
                first = False
            if s.mode == "silent_finish":
                return
            await self._send(session, "session.finished")
            await session.ws.close()
        except ConnectionClosed:
            pass

    async def _response(self, session: _Session, text: str) -> None:
        s = session.scenario
        rid = f"resp_{uuid.uuid4().hex[:12]}"
        iid = f"item_{uuid.uuid4().hex[:12]}"
        part = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        await self._send(session, "response.created", response={"id": rid, "status": "in_progress"})
        await self._send(
            session,
            "response.output_item.added",
            response_id=rid,
            output_index=0,
            item={"id": iid, "type": "message", "role": "assistant"},
        )
        await self._send(session, "response.content_part.added", **part, part={"type": "audio"})
        audio = tone(len(text) * s.ms_per_char / 1000, QWEN_SAMPLE_RATE)
        step = max(2, round(QWEN_SAMPLE_RATE * s.frame_ms / 1000) * 2)
        for at in range(0, len(audio), step):
            if s.interval:
                await asyncio.sleep(s.interval)  # server behaviour: audio made in real time
            delta = base64.b64encode(audio[at : at + step]).decode()
            await self._send(session, "response.audio.delta", **part, delta=delta)
        await self._send(session, "response.audio.done", **part)
        await self._send(session, "response.content_part.done", **part)
        await self._send(session, "response.output_item.done", response_id=rid, output_index=0)
        await self._send(session, "response.done", response={"id": rid, "status": "completed"})

    async def _endless(self, session: _Session) -> None:
        """Audio every ``interval`` until the client finishes or leaves."""
        s = session.scenario
        frame = base64.b64encode(tone(s.frame_ms / 1000, QWEN_SAMPLE_RATE)).decode()
        part = {"response_id": "resp_endless", "item_id": "item_endless"}
        while True:
            try:
                async with asyncio.timeout(s.interval):
                    text = await session.texts.get()
            except TimeoutError:
                await self._send(session, "response.audio.delta", **part, delta=frame)
                continue
            if text is None:
                await self._send(session, "session.finished")
                await session.ws.close()
                return
