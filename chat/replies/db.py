"""Database work of replies; each function runs in a worker thread."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat.llm import Usage
from chat.llm.base import ChatMessage
from chat.llm.prompt import Turn, build_messages
from chat.models import LIVE_STATUSES, Generation, Message, Role, Room, Status


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
    return message, reply


def prompt_for(message_id: int) -> list[ChatMessage]:
    """The conversation the model sees for reply ``message_id``: everything before it."""
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


def save_text(message_id: int, text: str) -> None:
    Message.objects.filter(pk=message_id).update(text=text)


def save_status(message_id: int, status: str) -> None:
    Message.objects.filter(pk=message_id).update(status=status)
    if status in (Status.STREAMING, Status.PAUSED):
        Generation.objects.filter(message_id=message_id, started_at__isnull=True).update(
            started_at=timezone.now()
        )


def _wall(mono: float | None, *, now_mono: float) -> datetime | None:
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
) -> None:
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
            stop_reason=stop_reason[:40],
            stopped_by=stopper,
            error=error,
        )
        if started_at is not None:
            Generation.objects.filter(message_id=message_id, started_at__isnull=True).update(
                started_at=_wall(started_at, now_mono=now_mono)
            )


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
                    ended_at=now, stop_reason="interrupted"
                )
                changed.append((room_id, message_id))
    return changed


def save_speech(
    message_id: int,
    *,
    mode: str,
    first_audio_at: float | None,
    audio_seconds: float,
    synthesis_seconds: float,
) -> None:
    Generation.objects.filter(message_id=message_id).update(
        voice=mode,
        first_audio_at=_wall(first_audio_at, now_mono=time.monotonic()),
        audio_seconds=audio_seconds,
        synthesis_seconds=synthesis_seconds,
    )
