"""Database work of replies; each function runs in a worker thread."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat.errors import Busy, Conflict
from chat.llm import Usage
from chat.llm.base import ChatMessage
from chat.llm.prompt import Turn, build_messages
from chat.models import LIVE_STATUSES, Generation, InputKind, Message, Role, Room, Status


@dataclass
class Sent:
    """What a send stored: the message and its reply, and which of them are new (a resend
    with the same client_id finds the message stored the first time)."""

    message: Message
    reply: Message | None
    message_new: bool
    reply_new: bool


def create_messages(
    *,
    user: User,
    room: Room,
    text: str,
    client_id: str,
    reply_wanted: bool,
    backend: str,
    model: str,
    worker: str,
    input: str = InputKind.TEXT,
) -> Sent:
    """Store a user's message and its queued reply, once per client_id.

    A send whose ``client_id`` this user already used in this room within
    ``PARLEY_SEND_IDEMPOTENCY_WINDOW`` is a resend: it returns what the first one stored,
    adding the reply only if the first send's was discarded (its event could not be
    stored, chat/replies/__init__.py). The same client_id with other text is a conflict.
    """
    with transaction.atomic():
        message = None
        if client_id or reply_wanted:
            # One user's sends take turns here (a row lock on PostgreSQL; SQLite has one
            # writer anyway), so two copies of one resend cannot both miss the first, and
            # a burst cannot slip past the cap on waiting replies below.
            list(
                get_user_model()
                .objects.select_for_update()
                .filter(pk=user.pk)
                .values_list("pk", flat=True)
            )
        if client_id:
            since = timezone.now() - timedelta(seconds=settings.PARLEY_SEND_IDEMPOTENCY_WINDOW)
            message = (
                Message.objects.filter(
                    room=room, author=user, role=Role.USER, client_id=client_id, created__gte=since
                )
                .select_related("author")
                .order_by("-id")
                .first()
            )
            if message is not None and message.text != text:
                raise Conflict("this client_id was already used for another message")
        message_new = message is None
        if message_new and reply_wanted:
            _check_waiting(room=room, user=user)
        if message is None:
            message = Message.objects.create(
                room=room,
                role=Role.USER,
                author=user,
                text=text,
                client_id=client_id,
                input=input,
            )
        reply = (
            None
            if message_new
            else message.replies.filter(role=Role.ASSISTANT)
            .select_related("generation", "generation__stopped_by")
            .first()
        )
        if reply is not None or not reply_wanted:
            return Sent(message, reply, message_new, reply_new=False)
        reply = Message.objects.create(
            room=room, role=Role.ASSISTANT, text="", status=Status.QUEUED, reply_to=message
        )
        Generation.objects.create(
            message=reply, backend=backend, model=model, queued_at=timezone.now(), worker=worker
        )
    return Sent(message, reply, message_new, reply_new=True)


def _check_waiting(*, room: Room, user: User) -> None:
    """Refuse a reply past ``PARLEY_ROOM_QUEUE_PER_MEMBER`` of this member's waiting in
    ``room``: counted in the database, so the cap holds across every process."""
    waiting = Message.objects.filter(
        room=room, role=Role.ASSISTANT, status=Status.QUEUED, reply_to__author=user
    ).count()
    cap = settings.PARLEY_ROOM_QUEUE_PER_MEMBER
    if waiting >= cap:
        raise Busy(
            f"you already have {waiting} questions waiting for the assistant in this room "
            f"(at most {cap}); ask again once one is answered"
        )


def discard(message_ids: Iterable[int]) -> None:
    """Delete messages whose ``message`` event could not be stored (nobody saw them)."""
    Message.objects.filter(pk__in=list(message_ids)).delete()


def create_messages_with_prompt(
    *, with_prompt: bool, **kw: Any
) -> tuple[Sent, list[ChatMessage] | None]:
    """``create_messages``, and in the same thread hop the new reply's prompt when it will
    start at once (nothing queued before it): the model request can go out without
    another round trip to the database."""
    sent = create_messages(**kw)
    if with_prompt and sent.reply is not None and sent.reply_new:
        return sent, prompt_for(sent.reply.pk)
    return sent, None


def prompt_for(message_id: int) -> list[ChatMessage]:
    """The conversation the model sees for reply ``message_id``: everything before it."""
    reply = Message.objects.select_related("room").get(pk=message_id)
    history = (
        Message.objects.filter(room_id=reply.room_id, pk__lt=message_id)
        .select_related("author", "generation")
        .order_by("-id")[: settings.LLM_CONTEXT_MESSAGES]
    )
    turns = []
    for m in reversed(list(history)):
        text = m.text
        if reply.room.prompt_heard_text and m.role == Role.ASSISTANT:
            # A spoken reply cut off while heard: only what was heard was said.
            heard = getattr(getattr(m, "generation", None), "heard_text", None)
            if heard is not None:
                text = heard
                if not text:
                    continue
        turns.append(
            Turn(
                role=m.role, author=m.author.get_username() if m.author else "assistant", text=text
            )
        )
    return build_messages(
        system_prompt=reply.room.system_prompt,
        turns=turns,
        max_chars=settings.LLM_CONTEXT_CHARS,
        max_messages=settings.LLM_CONTEXT_MESSAGES,
    )


# Every write of a running reply is conditional on the reply still being live: once it
# is terminal (its owner ended it, or a survivor's sweep interrupted it) nothing changes
# it again, and the writer whose update matched nothing learns it lost (False).


def save_text(message_id: int, text: str) -> bool:
    return bool(Message.objects.filter(pk=message_id, status__in=LIVE_STATUSES).update(text=text))


def save_status(message_id: int, status: str) -> bool:
    if not Message.objects.filter(pk=message_id, status__in=LIVE_STATUSES).update(status=status):
        return False
    if status in (Status.STREAMING, Status.PAUSED):
        Generation.objects.filter(message_id=message_id, started_at__isnull=True).update(
            started_at=timezone.now()
        )
    return True


def wall_time(mono: float | None, *, now_mono: float) -> datetime | None:
    """A time.monotonic() reading as wall-clock time."""
    if mono is None:
        return None
    return timezone.now() - timedelta(seconds=now_mono - mono)


def save_final(
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
    reason: str | None = None,
    metrics: dict[str, float | int | None] | None = None,
) -> bool:
    """The reply's move to its terminal state; False if it was already terminal (then
    nothing is written and the caller must not announce an end).

    ``reason`` and ``metrics``: what the terminal ``generation`` event tells members, kept
    so the message reads the same after a reload."""
    now_mono = time.monotonic()
    with transaction.atomic():
        if not Message.objects.filter(pk=message_id, status__in=LIVE_STATUSES).update(
            text=text, status=status
        ):
            return False
        stopper = (
            get_user_model().objects.filter(username=stopped_by).first() if stopped_by else None
        )
        Generation.objects.filter(message_id=message_id).update(
            first_token_at=wall_time(first_token_at, now_mono=now_mono),
            ended_at=wall_time(ended, now_mono=now_mono),
            paused_seconds=paused_seconds,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            stop_reason=stop_reason[:40],
            stopped_by=stopper,
            error=error,
            reason=reason or "",
            metrics=metrics,
        )
        if started_at is not None:
            Generation.objects.filter(message_id=message_id, started_at__isnull=True).update(
                started_at=wall_time(started_at, now_mono=now_mono)
            )
    return True


def live_replies_by_worker(*, exclude: str) -> dict[str, list[tuple[int, int]]]:
    """Replies still queued/streaming/paused, by the worker that owns them: (room, message)."""
    rows = (
        Generation.objects.filter(message__role=Role.ASSISTANT, message__status__in=LIVE_STATUSES)
        .exclude(worker=exclude)
        .values_list("worker", "message__room_id", "message_id")
    )
    found: dict[str, list[tuple[int, int]]] = {}
    for worker, room_id, message_id in rows:
        found.setdefault(worker, []).append((room_id, message_id))
    return found


# What members are told when a reply's process died under it (its `generation` event).
INTERRUPTED_REASON = "the server running this reply stopped"


def interrupt(replies: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Mark these replies interrupted, keeping their saved text; the ones this call changed.

    Conditional per reply, so when several survivors race only one announces each.
    """
    changed = []
    now = timezone.now()
    for room_id, message_id in replies:
        with transaction.atomic():
            if Message.objects.filter(pk=message_id, status__in=LIVE_STATUSES).update(
                status=Status.INTERRUPTED
            ):
                Generation.objects.filter(message_id=message_id, ended_at__isnull=True).update(
                    ended_at=now, stop_reason="interrupted", reason=INTERRUPTED_REASON
                )
                changed.append((room_id, message_id))
    return changed
