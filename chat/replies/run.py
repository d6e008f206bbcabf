"""The run of one assistant reply: a reader task and a runner that steers delivery.

The *reader* pulls text from the model as fast as the model makes it and appends it to
``pending``. The *runner* decides what members see: it moves ``pending`` into
``delivered`` as ``delta`` events (coalesced Nagle-style), holds it while paused, and
applies controls. So a pause loses nothing (the reader reads on), a resume sends what was
kept, and a stop cancels the reader, which closes the upstream request, and stores
exactly ``delivered``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings

from chat.errors import NotGenerating
from chat.events import StoreUnavailable, delta_body, generation_body, room_event_emit
from chat.llm import LLMBackend, LLMError, Options, Usage, get_backend
from chat.llm.base import ChatMessage
from chat.models import Status
from chat.replies import db
from chat.replies.observer import ReplyObserver, ReplyStart, observers_for
from chat.replies.steering import Cadence, Moment, decide, reply_metrics
from core import metrics as parley_metrics

if TYPE_CHECKING:
    from chat.events.delivery import Fanout
    from core.otel import Turn


class RunOwner(Protocol):
    """What a run needs of the manager that owns it (chat/replies/manager.py), named here
    so that the run does not import its owner."""

    runs: dict[int, ReplyRun]
    fanout: Fanout

    def adopt(self, coro: Coroutine[Any, Any, None]) -> None: ...

    def unregister(self, run: ReplyRun) -> None: ...

    async def dequeue(self, run: ReplyRun) -> None: ...


logger = logging.getLogger(__name__)


class EndedElsewhere(Exception):  # noqa: N818 - a signal, not an error
    """The reply was ended by someone else (a survivor's orphan sweep) while it ran here:
    the database said no to this run's write. It stops without emitting anything more."""


@dataclass
class _Control:
    action: str
    by: str
    future: asyncio.Future[None]
    # For a stop: how far into the reply's audio the member stopping it was (their
    # `played` reports), so what they heard is kept (Generation.heard_text).
    heard_ms: int | None = None


@dataclass(eq=False)
class ReplyRun:
    manager: RunOwner
    message_id: int
    room_id: int
    asker_id: int
    voice: str
    # Who writes it (db.Speaker): the backend of its assistant's provider and the model
    # and sampling of that assistant. None: the server's model, as configured.
    backend: LLMBackend | None = None
    options: Options | None = None
    handle: str = ""
    voice_name: str = ""  # the assistant's TTS voice ("": the engine's default)
    status: str = Status.QUEUED
    # Set while the asker wants delivery held; a queued reply starts held.
    paused: bool = False
    delivered: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    controls: deque[_Control] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by a control only: cuts short a wait for the room's outbound to drain.
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    started: bool = False
    # Set once the reply's own `message` event is out: nothing about it may precede that.
    announced: asyncio.Event = field(default_factory=asyncio.Event)
    # Timings (monotonic) and usage.
    started_at: float | None = None
    first_token_at: float | None = None
    paused_at: float | None = None
    paused_total: float = 0.0
    pieces: int = 0
    usage: Usage = field(default_factory=Usage)
    reader_error: LLMError | None = None
    # Who follows this reply's life (voice speaks it: chat/replies/observer.py).
    observers: list[ReplyObserver] = field(default_factory=list)
    # The prompt, when it was read with the send (the reply starts at once); else None and
    # it is read when the reply's turn comes.
    prompt: list[ChatMessage] | None = None
    # Its place in line as last told to the room, (room position, model position):
    # chat/replies/places.py tells the room only when it changes.
    place: tuple[int, int | None] | None = None
    # Its OpenTelemetry trace (core/tracing.py), begun by the send that asked for it; None
    # while tracing is off, the one check each hook below pays, once per turn.
    trace: Turn | None = None

    @property
    def model_backend(self) -> LLMBackend:
        return self.backend if self.backend is not None else get_backend()

    @property
    def model_name(self) -> str:
        """The model this reply asks (its assistant's, else its backend's)."""
        if self.options is not None and self.options.model:
            return self.options.model
        return self.model_backend.model

    def trace_end(self, state: str, *, reason: str | None = None) -> None:
        """End the turn's trace (if traced; a second end does nothing)."""
        if self.trace is not None:
            self.trace.end(
                state=state,
                reason=reason,
                prompt_tokens=self.usage.prompt_tokens,
                completion_tokens=self.usage.completion_tokens or self.pieces or None,
            )

    @property
    def message_key(self) -> str:
        return str(self.message_id)

    def visible(self) -> tuple[str, str]:
        """The text members have seen and the status they have been told."""
        return "".join(self.delivered), self.status

    # -- controls --

    async def control(self, action: str, *, by: str, heard_ms: int | None = None) -> None:
        if self.done.done():
            raise NotGenerating(f"this reply is already {self.status}")
        if not self.started:
            await self._control_queued(action, by=by)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.controls.append(_Control(action, by, future, heard_ms))
        self.wake.set()
        self.interrupt.set()
        await future

    async def _control_queued(self, action: str, *, by: str) -> None:
        # A queued reply has no runner yet: apply the control here. A pause marks it to
        # start held; there is no "queued" generation state to broadcast until then.
        if action == "pause":
            self.paused = True
        elif action == "resume":
            self.paused = False
        else:
            await self.manager.dequeue(self)
            try:
                await self._finish(Status.STOPPED, by=by, reason="user")
            except EndedElsewhere:
                raise NotGenerating("this reply has already ended") from None

    # -- running --

    async def execute(self) -> None:
        reader: asyncio.Task[None] | None = None
        if self.done.done():  # stopped while it waited in the queue
            return
        try:
            self.started_at = time.monotonic()
            if self.trace is not None:
                self.trace.started()
            messages = self.prompt
            if messages is None:
                messages = await database_sync_to_async(db.prompt_for)(self.message_id)
            # The model request goes out now; what it sends waits in `pending` until the
            # reply's own `message` event is out.
            if self.trace is not None:
                self.trace.model_request(self.model_name)
            reader = asyncio.create_task(self._read(messages), name=f"reply-{self.message_id}")
            await self.announced.wait()
            if self.done.done() or self.manager.runs.get(self.message_id) is not self:
                return  # stopped meanwhile, or its announcement failed and it was dropped
            self.started = True
            parley_metrics.reply_started(model=self.model_name, assistant=self.handle or None)
            if self.paused:
                self.paused_at = self.started_at
                await self._set_state(Status.PAUSED, by=None, reason=None)
            else:
                await self._set_state(Status.STREAMING, by=None, reason=None)
            self.observers = observers_for(
                ReplyStart(
                    room_id=self.room_id,
                    message_id=self.message_id,
                    voice=self.voice,
                    paused=self.paused,
                    voice_name=self.voice_name,
                ),
                self.manager.adopt,
            )
            await self._steer(reader)
        except EndedElsewhere:
            logger.warning("reply %s was ended elsewhere; this run stops", self.message_id)
            await self._abandon()
        except StoreUnavailable as exc:
            # The store stayed away longer than an emit may retry. The text is saved now,
            # while the store is away, so the end event can go out without the live copy.
            logger.warning("reply %s: event store away too long: %s", self.message_id, exc)
            if not self.done.done():
                await self._end_safely(
                    Status.FAILED,
                    reason="the server lost its event store for too long; the text so far is kept",
                    code="store_unavailable",
                    error=exc.cause,
                    live=False,
                )
        except Exception as exc:  # noqa: BLE001 - a bug must end the reply, not hang the room
            logger.exception("reply %s crashed", self.message_id)
            if not self.done.done():
                await self._end_safely(
                    Status.FAILED,
                    reason="the server hit an internal error",
                    code="internal",
                    error=repr(exc),
                )
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            self.trace_end(self.status)  # unless its end or its abandon ended it already

    async def _end_safely(
        self, state: str, *, reason: str, code: str, error: str, live: bool = True
    ) -> None:
        try:
            await self._finish(state, by=None, reason=reason, code=code, error=error, live=live)
        except EndedElsewhere:
            await self._abandon()
        except Exception:  # noqa: BLE001 - the room's queue must move on regardless
            logger.exception("reply %s could not be ended cleanly", self.message_id)

    async def _abandon(self) -> None:
        """Stop here without a word: the reply's end is someone else's to announce."""
        for observer in self.observers:
            await observer.cancel()
        self.trace_end("ended_elsewhere")
        self.manager.unregister(self)
        if not self.done.done():
            self.done.set_result(self.status)
        self._refuse_controls()

    def _refuse_controls(self) -> None:
        """Answer the controls that came while the reply was ending (after the loop last
        looked, before ``done``): it ended, so they are refused as a control of an ended
        reply is, rather than left waiting for a loop that has returned."""
        while self.controls:
            control = self.controls.popleft()
            if not control.future.done():
                control.future.set_exception(NotGenerating(f"this reply is already {self.status}"))

    async def _read(self, messages: list[ChatMessage]) -> None:
        stream = self.model_backend.stream(messages, self.usage, self.options)
        try:
            async for piece in stream:
                if not piece:
                    continue
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                    if self.trace is not None:
                        self.trace.first_token()
                self.pieces += 1
                self.pending.append(piece)
                self.wake.set()
        except LLMError as exc:
            self.reader_error = exc
        finally:
            await stream.aclose()
            if self.trace is not None:
                self.trace.model_done(
                    error_code=self.reader_error.code if self.reader_error else None,
                    tokens=self.usage.completion_tokens or self.pieces,
                )
            self.wake.set()

    async def _steer(self, reader: asyncio.Task[None]) -> None:
        # Adaptive coalescing: text goes out at once while the room's outbound is idle;
        # it is merged only while this process is still writing the previous delta to its
        # members (up to PARLEY_DELTA_MAX_WAIT), or within PARLEY_DELTA_MIN_INTERVAL. The
        # rules are steering.decide's; this loop only carries them out.
        cadence = Cadence.from_settings()
        last_emit = -cadence.gap
        last_seq = 0
        last_save = time.monotonic()
        saved_len = 0
        while True:
            # Cleared before looking, so a wake-up during any await below is not lost.
            self.wake.clear()
            self.interrupt.clear()
            while self.controls:
                control = self.controls.popleft()
                try:
                    if await self._apply(control, reader):
                        return
                finally:
                    if not control.future.done():
                        control.future.set_result(None)
            step = decide(
                Moment(
                    now=time.monotonic(),
                    paused=self.paused,
                    paused_at=self.paused_at,
                    pending=bool(self.pending),
                    reader_done=reader.done(),
                    last_emit=last_emit,
                    delivered_len=len(self.delivered),
                    saved_len=saved_len,
                    last_save=last_save,
                ),
                cadence,
            )
            if step.action == "pause_timeout":
                await self._stop(reader, by=None, reason="pause_timeout")
                return
            if step.action == "deliver":
                assert step.seconds is not None
                channel = self.manager.fanout.get(self.room_id)
                if channel is not None:
                    await channel.drained(last_seq, step.seconds, self.interrupt)
                if self.controls:
                    continue
                last_seq = await self._deliver()
                last_emit = time.monotonic()
                continue
            if step.action == "finish":
                if self.reader_error is not None:
                    err = self.reader_error
                    await self._finish(
                        Status.FAILED, by=None, reason=err.reason, code=err.code, error=err.reason
                    )
                else:
                    await self._finish(Status.COMPLETE, by=None, reason=None)
                return
            if step.action == "save":
                delivered_len = len(self.delivered)
                if not await database_sync_to_async(db.save_text)(
                    self.message_id, self.visible()[0]
                ):
                    raise EndedElsewhere
                saved_len, last_save = delivered_len, time.monotonic()
                continue
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=step.seconds)
            except TimeoutError:
                pass

    async def _apply(self, control: _Control, reader: asyncio.Task[None]) -> bool:
        """Apply one control; True when the reply has ended."""
        if control.action == "pause":
            if not self.paused:
                self.paused = True
                self.paused_at = time.monotonic()
                for observer in self.observers:
                    observer.paused()
                await self._set_state(Status.PAUSED, by=control.by, reason=None)
            return False
        if control.action == "resume":
            if self.paused:
                self.paused = False
                for observer in self.observers:
                    observer.resumed()
                if self.paused_at is not None:
                    self.paused_total += time.monotonic() - self.paused_at
                self.paused_at = None
                await self._set_state(Status.STREAMING, by=control.by, reason=None)
                # The kept text goes out right after the resume, as one delta.
                if self.pending:
                    await self._deliver()
            return False
        await self._stop(reader, by=control.by, reason="user", heard_ms=control.heard_ms)
        return True

    async def _stop(
        self,
        reader: asyncio.Task[None],
        *,
        by: str | None,
        reason: str,
        heard_ms: int | None = None,
    ) -> None:
        # Close the upstream request first, so the model stops at once.
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        self.pending.clear()
        if self.paused_at is not None:
            self.paused_total += time.monotonic() - self.paused_at
            self.paused_at = None
        await self._finish(Status.STOPPED, by=by, reason=reason, heard_ms=heard_ms)

    async def _deliver(self) -> int:
        """Send what is pending as one delta (several, past PARLEY_DELTA_MAX_CHARS: a long
        pause's kept text or a burst from a fast model must never make a frame larger than
        a client or daphne accepts); the last one's seq."""
        text = "".join(self.pending)
        self.pending.clear()
        limit = settings.PARLEY_DELTA_MAX_CHARS
        seq = 0
        for start in range(0, len(text), limit):
            part = text[start : start + limit]
            self.delivered.append(part)
            event = await room_event_emit(
                room_id=self.room_id,
                body=delta_body(message_id=self.message_key, text=part),
                live=self.visible,
            )
            seq = int(event["seq"])
        for observer in self.observers:
            observer.shown(text)
        return seq

    async def _set_state(self, state: str, *, by: str | None, reason: str | None) -> None:
        if not await database_sync_to_async(db.save_status)(self.message_id, state):
            raise EndedElsewhere
        self.status = state
        await room_event_emit(
            room_id=self.room_id,
            body=generation_body(message_id=self.message_key, state=state, by=by, reason=reason),
            live=self.visible,
        )

    async def _finish(
        self,
        state: str,
        *,
        by: str | None,
        reason: str | None,
        code: str | None = None,
        error: str = "",
        live: bool = True,
        heard_ms: int | None = None,
    ) -> None:
        """End the reply: store it, then tell the room, exactly once.

        ``reason`` is what members read; ``code`` the short stop reason kept for review
        (defaults to ``reason``, which for stops is already a code: user, pause_timeout).
        The move to a terminal state is conditional in the database: if someone else ended
        the reply first (a survivor's orphan sweep), this raises ``EndedElsewhere`` and
        emits nothing, so a reply never has two terminal events. The terminal event is
        retried until the store takes it. ``live=False``: the text was saved while the
        store was away, so every snapshot from its return on is exact without the live copy.
        """
        ended = time.monotonic()
        for observer in self.observers:
            if state == Status.STOPPED:
                await observer.cancel()  # before `stopped`: nothing of it follows
            else:
                observer.complete()  # complete, or failed: finish with what members saw
        usage = {
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
        }
        metrics = reply_metrics(
            ended=ended,
            started_at=self.started_at,
            first_token_at=self.first_token_at,
            paused_total=self.paused_total,
            completion_tokens=self.usage.completion_tokens,
            pieces=self.pieces,
        )
        won = False
        try:
            won = await database_sync_to_async(db.save_final)(
                self.message_id,
                text=self.visible()[0],
                status=state,
                started_at=self.started_at,
                first_token_at=self.first_token_at,
                ended=ended,
                paused_seconds=self.paused_total,
                usage=self.usage,
                stop_reason=code or reason or "",
                stopped_by=by,
                error=error,
                reason=reason,
                metrics=metrics,
            )
            if not won:
                raise EndedElsewhere
            if heard_ms is not None:
                for observer in self.observers:
                    await observer.stopped(heard_ms)
            self.status = state
            logger.info("reply %s saved as %s", self.message_id, state)
            parley_metrics.reply_ended(
                state=state,
                reason=code or reason,
                model=self.model_name,
                assistant=self.handle or None,
                metrics=metrics,
                prompt_tokens=self.usage.prompt_tokens,
                completion_tokens=self.usage.completion_tokens,
                error_code=self.reader_error.code if self.reader_error else None,
            )
            await room_event_emit(
                room_id=self.room_id,
                body=generation_body(
                    message_id=self.message_key,
                    state=state,
                    by=by,
                    reason=reason,
                    usage=usage,
                    metrics=metrics,
                ),
                live=self.visible if live else None,
                until_stored=True,
            )
        finally:
            if won:
                self.trace_end(state, reason=code or reason)
            self.manager.unregister(self)
            if not self.done.done():
                self.done.set_result(self.status)
            self._refuse_controls()
