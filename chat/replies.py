"""Assistant replies: sending messages, the per-room reply queue, and generation control.

Every transport calls the three services here: ``message_send``, ``reply_control`` and
``reply_wait``. A reply is run by a task owned by the process's ``ReplyManager`` (one per
event loop), never by the connection that asked for it, so it outlives that connection.

A running reply has two tasks. The *reader* pulls text from the model as fast as the
model makes it and appends it to ``pending``. The *runner* decides what members see:
it moves ``pending`` into ``delivered`` as ``delta`` events (coalesced Nagle-style), holds
it while paused, and applies controls. So a pause loses nothing (the reader reads on), a
resume sends what was kept, and a stop cancels the reader, which closes the upstream
request, and stores exactly ``delivered``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat.errors import BadRequest, Busy, Forbidden, NotGenerating, TooLong
from chat.events import get_hub, room_event_emit
from chat.llm import LLMError, Usage, get_backend
from chat.llm.base import ChatMessage
from chat.llm.prompt import Turn, build_messages
from chat.models import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    AssistantMode,
    Generation,
    Message,
    Role,
    Room,
    Status,
    VoiceMode,
)
from chat.ratelimit import send_allow
from chat.selectors import message_get
from chat.serializers import MessageDict, message_to_dict

logger = logging.getLogger(__name__)

MENTION = "@assistant"
CLIENT_ID_MAX = 64
ACTIONS = ("pause", "resume", "stop")


# --- Sending ----------------------------------------------------------------------------


def wants_reply(*, room: Room, text: str, ask_ai: bool) -> bool:
    if room.assistant == AssistantMode.ALWAYS:
        return True
    return ask_ai or MENTION in text.lower()


def validate_send(
    *, text: object, client_id: object, ask_ai: object, voice: object
) -> tuple[str, str, bool, str | None]:
    if not isinstance(text, str):
        raise BadRequest("text must be a string")
    if not text.strip():
        raise BadRequest("text must not be empty")
    limit = settings.PARLEY_MAX_MESSAGE_CHARS
    if len(text) > limit:
        raise TooLong(f"text is over {limit} characters")
    if client_id is None:
        client_id = ""
    if not isinstance(client_id, str) or len(client_id) > CLIENT_ID_MAX:
        raise BadRequest(f"client_id must be a string of at most {CLIENT_ID_MAX} characters")
    if ask_ai is None:
        ask_ai = False
    if not isinstance(ask_ai, bool):
        raise BadRequest("ask_ai must be true or false")
    if voice is not None and (not isinstance(voice, str) or voice not in VoiceMode.values):
        raise BadRequest("voice must be one of: " + ", ".join(VoiceMode.values))
    return text, client_id, ask_ai, voice


async def message_send(
    *,
    user: User,
    room: Room,
    text: object,
    client_id: object = None,
    ask_ai: object = None,
    voice: object = None,
) -> tuple[MessageDict, MessageDict | None]:
    """Store a user's message in ``room`` (a member's), broadcast it, queue a reply.

    Returns the message and the reply placeholder (or None) as wire dicts.
    """
    text, client_id, ask_ai, voice = validate_send(
        text=text, client_id=client_id, ask_ai=ask_ai, voice=voice
    )
    send_allow(user_id=user.pk)
    manager = get_manager()
    await manager.ensure_recovered()
    reply_wanted = wants_reply(room=room, text=text, ask_ai=ask_ai)
    if reply_wanted and manager.queue_length(room.pk) >= settings.PARLEY_ROOM_QUEUE_MAX:
        raise Busy("the assistant has too many replies queued in this room; try again soon")
    backend = get_backend() if reply_wanted else None
    message, reply = await database_sync_to_async(_create_messages)(
        user=user,
        room=room,
        text=text,
        client_id=client_id,
        reply_wanted=reply_wanted,
        backend=backend.name if backend else "",
        model=backend.model if backend else "",
        worker=manager.worker_id,
    )
    message_dict = message_to_dict(message, room_slug=room.slug)
    await room_event_emit(room_id=room.pk, body={"type": "message", "message": message_dict})
    if reply is None:
        return message_dict, None
    run = ReplyRun(
        manager=manager,
        message_id=reply.pk,
        room_id=room.pk,
        asker_id=user.pk,
        voice=voice or room.voice,
    )
    manager.register(run)
    reply_dict = message_to_dict(reply, room_slug=room.slug)
    try:
        await room_event_emit(room_id=room.pk, body={"type": "message", "message": reply_dict})
    finally:
        run.announced.set()
        manager.start(run)
    return message_dict, reply_dict


def _create_messages(
    *,
    user: User,
    room: Room,
    text: str,
    client_id: str,
    reply_wanted: bool,
    backend: str,
    model: str,
    worker: str,
) -> tuple[Message, Message | None]:
    with transaction.atomic():
        message = Message.objects.create(
            room=room, role=Role.USER, author=user, text=text, client_id=client_id
        )
        if not reply_wanted:
            return message, None
        reply = Message.objects.create(
            room=room, role=Role.ASSISTANT, text="", status=Status.QUEUED, reply_to=message
        )
        Generation.objects.create(
            message=reply, backend=backend, model=model, queued_at=timezone.now(), worker=worker
        )
    message.author = user
    return message, reply


# --- Control ----------------------------------------------------------------------------


def _control_target(*, user: User, message_id: object) -> Message:
    message = message_get(
        message_id=message_id if isinstance(message_id, str | int) else "", user=user
    )
    if message.role != Role.ASSISTANT:
        raise BadRequest("only assistant replies can be controlled")
    asker_id = message.reply_to.author_id if message.reply_to else None
    if not (user.pk == asker_id or user.pk == message.room.owner_id or user.is_staff):
        raise Forbidden("only the asker, the room owner or staff can control this reply")
    return message


async def reply_control(*, user: User, message_id: object, action: str) -> MessageDict:
    """Pause, resume or stop a reply, with PROTOCOL.md section 4's rules."""
    if action not in ACTIONS:
        raise BadRequest(f"action must be one of: {', '.join(ACTIONS)}")
    message = await database_sync_to_async(_control_target)(user=user, message_id=message_id)
    manager = get_manager()
    run = manager.runs.get(message.pk)
    if run is None or message.status in TERMINAL_STATUSES:
        raise NotGenerating(f"this reply is already {message.status}")
    await run.control(action, by=user.get_username())
    result = message_to_dict(message)
    result["text"], result["status"] = run.visible()
    return result


async def reply_wait(*, message_id: int, timeout: float) -> str | None:  # noqa: ASYNC109
    """Wait until the reply ends; its final status, or None on timeout / not here."""
    run = get_manager().runs.get(message_id)
    if run is None:
        return None
    try:
        return await asyncio.wait_for(asyncio.shield(run.done), timeout)
    except TimeoutError:
        return None


# --- The run of one reply -----------------------------------------------------------------


@dataclass
class _Control:
    action: str
    by: str
    future: asyncio.Future[None]


@dataclass(eq=False)
class ReplyRun:
    manager: ReplyManager
    message_id: int
    room_id: int
    asker_id: int
    voice: str
    status: str = Status.QUEUED
    # Set while the asker wants delivery held; a queued reply starts held.
    paused: bool = False
    delivered: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    controls: deque[_Control] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
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

    @property
    def message_key(self) -> str:
        return str(self.message_id)

    def visible(self) -> tuple[str, str]:
        """The text members have seen and the status they have been told."""
        return "".join(self.delivered), self.status

    # -- controls --

    async def control(self, action: str, *, by: str) -> None:
        if self.done.done():
            raise NotGenerating(f"this reply is already {self.status}")
        if not self.started:
            await self._control_queued(action, by=by)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.controls.append(_Control(action, by, future))
        self.wake.set()
        await future

    async def _control_queued(self, action: str, *, by: str) -> None:
        # A queued reply has no runner yet: apply the control here. A pause marks it to
        # start held; there is no "queued" generation state to broadcast until then.
        if action == "pause":
            self.paused = True
        elif action == "resume":
            self.paused = False
        else:
            self.manager.dequeue(self)
            await self._finish(Status.STOPPED, by=by, reason="user")

    # -- running --

    async def execute(self) -> None:
        reader: asyncio.Task[None] | None = None
        await self.announced.wait()
        if self.done.done():  # stopped while it waited in the queue
            return
        try:
            self.started = True
            self.started_at = time.monotonic()
            messages = await database_sync_to_async(_prompt_for)(self.message_id)
            if self.paused:
                self.paused_at = self.started_at
                await self._set_state(Status.PAUSED, by=None, reason=None)
            else:
                await self._set_state(Status.STREAMING, by=None, reason=None)
            reader = asyncio.create_task(self._read(messages), name=f"reply-{self.message_id}")
            await self._steer(reader)
        except Exception as exc:  # noqa: BLE001 - a bug must end the reply, not hang the room
            logger.exception("reply %s crashed", self.message_id)
            if not self.done.done():
                try:
                    await self._finish(
                        Status.FAILED,
                        by=None,
                        reason="the server hit an internal error",
                        code="internal",
                        error=repr(exc),
                    )
                except Exception:  # noqa: BLE001 - the room's queue must move on regardless
                    logger.exception("reply %s could not be ended cleanly", self.message_id)
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, messages: list[ChatMessage]) -> None:
        stream = get_backend().stream(messages, self.usage)
        try:
            async for piece in stream:
                if not piece:
                    continue
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                self.pieces += 1
                self.pending.append(piece)
                self.wake.set()
        except LLMError as exc:
            self.reader_error = exc
        finally:
            await stream.aclose()
            self.wake.set()

    async def _steer(self, reader: asyncio.Task[None]) -> None:
        window = settings.PARLEY_DELTA_WINDOW
        last_emit = -window
        last_save = time.monotonic()
        saved_len = 0
        while True:
            # Cleared before looking, so a wake-up during any await below is not lost.
            self.wake.clear()
            while self.controls:
                control = self.controls.popleft()
                try:
                    if await self._apply(control, reader):
                        return
                finally:
                    if not control.future.done():
                        control.future.set_result(None)
            now = time.monotonic()
            if self.paused and self.paused_at is not None:
                if now - self.paused_at >= settings.PARLEY_PAUSE_TIMEOUT:
                    await self._stop(reader, by=None, reason="pause_timeout")
                    return
            timeout: float | None = None
            if not self.paused and self.pending:
                wait = last_emit + window - now
                if wait <= 0:
                    await self._deliver()
                    last_emit = time.monotonic()
                    continue
                timeout = wait
            if reader.done() and not self.pending and not self.paused:
                if self.reader_error is not None:
                    err = self.reader_error
                    await self._finish(
                        Status.FAILED, by=None, reason=err.reason, code=err.code, error=err.reason
                    )
                else:
                    await self._finish(Status.COMPLETE, by=None, reason=None)
                return
            delivered_len = len(self.delivered)
            if delivered_len != saved_len and now - last_save >= settings.PARLEY_SAVE_INTERVAL:
                await database_sync_to_async(_save_text)(self.message_id, self.visible()[0])
                saved_len, last_save = delivered_len, time.monotonic()
            if delivered_len != saved_len:
                due = last_save + settings.PARLEY_SAVE_INTERVAL - now
                timeout = due if timeout is None else min(timeout, due)
            if self.paused and self.paused_at is not None:
                due = self.paused_at + settings.PARLEY_PAUSE_TIMEOUT - now
                timeout = due if timeout is None else min(timeout, due)
            try:
                await asyncio.wait_for(
                    self.wake.wait(), timeout=None if timeout is None else max(timeout, 0.0)
                )
            except TimeoutError:
                pass

    async def _apply(self, control: _Control, reader: asyncio.Task[None]) -> bool:
        """Apply one control; True when the reply has ended."""
        if control.action == "pause":
            if not self.paused:
                self.paused = True
                self.paused_at = time.monotonic()
                await self._set_state(Status.PAUSED, by=control.by, reason=None)
            return False
        if control.action == "resume":
            if self.paused:
                self.paused = False
                if self.paused_at is not None:
                    self.paused_total += time.monotonic() - self.paused_at
                self.paused_at = None
                await self._set_state(Status.STREAMING, by=control.by, reason=None)
                # The kept text goes out right after the resume, as one delta.
                if self.pending:
                    await self._deliver()
            return False
        await self._stop(reader, by=control.by, reason="user")
        return True

    async def _stop(self, reader: asyncio.Task[None], *, by: str | None, reason: str) -> None:
        # Close the upstream request first, so the model stops at once.
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        self.pending.clear()
        if self.paused_at is not None:
            self.paused_total += time.monotonic() - self.paused_at
            self.paused_at = None
        await self._finish(Status.STOPPED, by=by, reason=reason)

    async def _deliver(self) -> None:
        text = "".join(self.pending)
        self.pending.clear()
        self.delivered.append(text)
        await room_event_emit(
            room_id=self.room_id,
            body={"type": "delta", "message_id": self.message_key, "text": text},
        )

    async def _set_state(self, state: str, *, by: str | None, reason: str | None) -> None:
        self.status = state
        await database_sync_to_async(_save_status)(self.message_id, state)
        await room_event_emit(
            room_id=self.room_id,
            body={
                "type": "generation",
                "message_id": self.message_key,
                "state": state,
                "by": by,
                "reason": reason,
            },
        )

    async def _finish(
        self,
        state: str,
        *,
        by: str | None,
        reason: str | None,
        code: str | None = None,
        error: str = "",
    ) -> None:
        """End the reply: store it, then tell the room.

        ``reason`` is what members read; ``code`` the short stop reason kept for review
        (defaults to ``reason``, which for stops is already a code: user, pause_timeout).
        """
        self.status = state
        ended = time.monotonic()
        tokens = (
            self.usage.completion_tokens
            if self.usage.completion_tokens is not None
            else self.pieces
        )
        usage = {
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
        }
        streamed = None
        ttft = None
        if self.started_at is not None:
            streamed = ended - self.started_at - self.paused_total
            if self.first_token_at is not None:
                ttft = self.first_token_at - self.started_at
        metrics: dict[str, float | int | None] = {
            "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
            "duration_ms": round(streamed * 1000, 1) if streamed is not None else None,
            "tokens": tokens,
            "tokens_per_second": round(tokens / streamed, 2) if streamed else None,
            "paused_ms": round(self.paused_total * 1000, 1),
        }
        try:
            await database_sync_to_async(_save_final)(
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
            )
            await room_event_emit(
                room_id=self.room_id,
                body={
                    "type": "generation",
                    "message_id": self.message_key,
                    "state": state,
                    "by": by,
                    "reason": reason,
                    "usage": usage,
                    "metrics": metrics,
                },
            )
        finally:
            self.manager.unregister(self)
            if not self.done.done():
                self.done.set_result(state)


# --- Database helpers (run in a worker thread) --------------------------------------------


def _prompt_for(message_id: int) -> list[ChatMessage]:
    reply = Message.objects.select_related("room").get(pk=message_id)
    history = (
        Message.objects.filter(room_id=reply.room_id, pk__lt=message_id)
        .select_related("author")
        .order_by("-id")[: settings.LLM_CONTEXT_MESSAGES]
    )
    turns = [
        Turn(
            role=m.role,
            author=m.author.get_username() if m.author else "assistant",
            text=m.text,
        )
        for m in reversed(list(history))
    ]
    return build_messages(
        system_prompt=reply.room.system_prompt,
        turns=turns,
        max_chars=settings.LLM_CONTEXT_CHARS,
        max_messages=settings.LLM_CONTEXT_MESSAGES,
    )


def _save_text(message_id: int, text: str) -> None:
    Message.objects.filter(pk=message_id).update(text=text)


def _save_status(message_id: int, status: str) -> None:
    Message.objects.filter(pk=message_id).update(status=status)
    if status in (Status.STREAMING, Status.PAUSED):
        Generation.objects.filter(message_id=message_id, started_at__isnull=True).update(
            started_at=timezone.now()
        )


def _wall(mono: float | None, *, now_mono: float) -> datetime | None:
    if mono is None:
        return None
    return timezone.now() - timedelta(seconds=now_mono - mono)


def _save_final(
    message_id: int,
    *,
    text: str,
    status: str,
    started_at: float | None,
    first_token_at: float | None,
    ended: float,
    paused_seconds: float,
    usage: Usage,
    stop_reason: str,
    stopped_by: str | None,
    error: str,
) -> None:
    from django.contrib.auth import get_user_model

    now_mono = time.monotonic()
    with transaction.atomic():
        Message.objects.filter(pk=message_id).update(text=text, status=status)
        stopper = (
            get_user_model().objects.filter(username=stopped_by).first() if stopped_by else None
        )
        Generation.objects.filter(message_id=message_id).update(
            first_token_at=_wall(first_token_at, now_mono=now_mono),
            ended_at=_wall(ended, now_mono=now_mono),
            paused_seconds=paused_seconds,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            stop_reason=stop_reason,
            stopped_by=stopper,
            error=error,
        )
        if started_at is not None:
            Generation.objects.filter(message_id=message_id, started_at__isnull=True).update(
                started_at=_wall(started_at, now_mono=now_mono)
            )


def _interrupt_orphans(worker_id: str) -> list[tuple[int, int]]:
    """Mark replies left live by other (dead) workers as interrupted; (room, message) ids."""
    with transaction.atomic():
        orphans = list(
            Generation.objects.select_for_update(of=("self",))
            .filter(message__role=Role.ASSISTANT, message__status__in=LIVE_STATUSES)
            .exclude(worker=worker_id)
            .values_list("message__room_id", "message_id")
        )
        ids = [pk for _, pk in orphans]
        Message.objects.filter(pk__in=ids).update(status=Status.INTERRUPTED)
        Generation.objects.filter(message_id__in=ids, ended_at__isnull=True).update(
            ended_at=timezone.now(), stop_reason="interrupted"
        )
    return orphans


# --- The manager: one per event loop --------------------------------------------------------


class ReplyManager:
    """Owns every reply task of this process: queues them per room, cancels them on close."""

    def __init__(self) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.runs: dict[int, ReplyRun] = {}
        self._queues: dict[int, deque[ReplyRun]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._recovered: asyncio.Task[None] | None = None

    async def ensure_recovered(self) -> None:
        if self._recovered is None:
            self._recovered = asyncio.create_task(self._recover())
        await asyncio.shield(self._recovered)

    async def _recover(self) -> None:
        orphans = await database_sync_to_async(_interrupt_orphans)(self.worker_id)
        for room_id, message_id in orphans:
            logger.warning(
                "reply %s was left unfinished by a dead process: interrupted", message_id
            )
            await room_event_emit(
                room_id=room_id,
                body={
                    "type": "generation",
                    "message_id": str(message_id),
                    "state": Status.INTERRUPTED,
                    "by": None,
                    "reason": "server restarted",
                },
            )

    def queue_length(self, room_id: int) -> int:
        return len(self._queues.get(room_id, ()))

    def register(self, run: ReplyRun) -> None:
        self.runs[run.message_id] = run
        self._queues.setdefault(run.room_id, deque()).append(run)
        get_hub().live_messages[run.message_id] = run.visible

    def unregister(self, run: ReplyRun) -> None:
        self.runs.pop(run.message_id, None)
        get_hub().live_messages.pop(run.message_id, None)

    def dequeue(self, run: ReplyRun) -> None:
        queue = self._queues.get(run.room_id)
        if queue is not None and run in queue:
            queue.remove(run)

    def start(self, run: ReplyRun) -> None:
        """Make sure the room's worker runs; it takes replies in order, one at a time."""
        worker = self._workers.get(run.room_id)
        if worker is None or worker.done():
            self._workers[run.room_id] = asyncio.create_task(
                self._room_worker(run.room_id), name=f"room-worker-{run.room_id}"
            )

    async def _room_worker(self, room_id: int) -> None:
        queue = self._queues.setdefault(room_id, deque())
        try:
            while queue:
                run = queue[0]
                await run.execute()
                if queue and queue[0] is run:
                    queue.popleft()
        finally:
            if self._workers.get(room_id) is asyncio.current_task():
                del self._workers[room_id]

    async def aclose(self) -> None:
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


_managers: dict[asyncio.AbstractEventLoop, ReplyManager] = {}


def get_manager() -> ReplyManager:
    loop = asyncio.get_running_loop()
    manager = _managers.get(loop)
    if manager is None:
        for old in [lp for lp in _managers if lp.is_closed()]:
            del _managers[old]
        manager = _managers[loop] = ReplyManager()
    return manager
