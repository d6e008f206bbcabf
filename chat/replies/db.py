"""Database work of replies; each function runs in a worker thread."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat.assistants import providers
from chat.assistants.providers import ProviderConfig
from chat.assistants.routing import DEFAULT_HANDLE, mentioned, route
from chat.errors import Busy, Conflict, NotFound
from chat.llm import Options, Usage
from chat.llm.base import ChatMessage
from chat.llm.prompt import Turn, build_messages, system_text
from chat.models import (
    LIVE_STATUSES,
    Generation,
    InputKind,
    Membership,
    Message,
    Role,
    Room,
    RoomAssistant,
    Status,
)


@dataclass(frozen=True)
class Speaker:
    """Who writes a reply, resolved when it is queued: its assistant, and the provider,
    model and sampling its run streams with (the provider read from the database in the
    same thread hop as the rest of the send)."""

    assistant_id: int | None
    handle: str
    name: str
    config: ProviderConfig
    model: str
    temperature: float | None
    max_tokens: int | None
    voice: str  # the assistant's TTS voice name ("": the engine's default)
    stop: tuple[str, ...] = ()

    @property
    def options(self) -> Options:
        return Options(
            model=self.model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            stop=self.stop,
        )


@dataclass(frozen=True)
class Sampling:
    """What one send asks of its assistant's sampling (the OpenAI-compatible API's
    ``temperature``, ``max_tokens`` and ``stop``), within what the assistant allows: a
    temperature replaces the assistant's, ``max_tokens`` can only lower the assistant's
    own cap, and ``stop`` goes to the model server (the bundled model ignores it)."""

    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()

    def apply(self, speaker: Speaker) -> Speaker:
        max_tokens = speaker.max_tokens
        if self.max_tokens is not None:
            max_tokens = self.max_tokens if max_tokens is None else min(max_tokens, self.max_tokens)
        temperature = speaker.temperature if self.temperature is None else self.temperature
        return replace(speaker, temperature=temperature, max_tokens=max_tokens, stop=self.stop)


@dataclass
class Queued:
    """A reply stored as queued, with who writes it."""

    reply: Message
    speaker: Speaker


@dataclass
class Sent:
    """What a send stored: the message and its replies, and which of them are new (a
    resend with the same client_id finds what the first send stored)."""

    message: Message
    replies: list[Message]
    message_new: bool
    new: list[Queued]

    @property
    def reply(self) -> Message | None:
        return self.replies[0] if self.replies else None


def placements(room_id: int) -> list[RoomAssistant]:
    """The room's assistants, in the order they were added."""
    return list(
        RoomAssistant.objects.filter(room_id=room_id).select_related("assistant").order_by("id")
    )


def speaker_for(
    placement: RoomAssistant, configs: dict[str, ProviderConfig] | None = None
) -> Speaker:
    """Resolve ``placement``'s assistant to what its run needs. An assistant whose provider
    was removed gets a "missing" one: its reply fails with that reason (the send still
    stands), rather than sending the conversation to a server its owner did not pick."""
    assistant = placement.assistant
    configs = configs if configs is not None else providers.providers()
    config = configs.get(assistant.provider) or providers.ProviderConfig(
        assistant.provider, "missing"
    )
    model = assistant.model
    return Speaker(
        assistant_id=assistant.pk,
        handle=placement.handle,
        name=assistant.name,
        config=config,
        model=model or providers.default_model(config),
        temperature=assistant.temperature,
        max_tokens=assistant.max_tokens,
        voice=assistant.voice,
    )


def _queue_reply(
    *, room: Room, reply_to: Message, speaker: Speaker, backend: str, worker: str
) -> Queued:
    reply = Message.objects.create(
        room=room, role=Role.ASSISTANT, text="", status=Status.QUEUED, reply_to=reply_to
    )
    reply.generation = Generation.objects.create(
        message=reply,
        backend=backend,
        model=speaker.model,
        assistant_id=speaker.assistant_id,
        handle=speaker.handle,
        assistant_name=speaker.name,
        provider=speaker.config.name,
        queued_at=timezone.now(),
        worker=worker,
    )
    return Queued(reply, speaker)


def backend_name(config: ProviderConfig) -> str:
    """The backend kind kept with a reply (Generation.backend)."""
    return config.kind


def create_messages(
    *,
    user: User,
    room: Room,
    text: str,
    client_id: str,
    ask_ai: bool,
    queued: int,
    worker: str,
    input: str = InputKind.TEXT,
    ask: bool = True,
    only: str | None = None,
    sampling: Sampling | None = None,
) -> Sent:
    """Store a user's message and the replies it asks for (chat.assistants.routing), once
    per client_id.

    ``queued``: replies in the room's line in this process now; a send that would take
    it past ``PARLEY_ROOM_QUEUE_MAX`` is ``Busy``, as is one past the member's share
    (``_check_waiting``). A send asks at most ``PARLEY_ASSISTANT_REPLIES_MAX`` assistants
    (the bound on replies to one message); further mentions are not asked.

    A send whose ``client_id`` this user already used in this room within
    ``PARLEY_SEND_IDEMPOTENCY_WINDOW`` is a resend: it returns what the first one stored
    (every reply to that message so far), adding only the asked replies that are missing
    because their announcement failed (chat/replies/__init__.py discards them). The same
    client_id with other text is a conflict. ``ask=False`` stores the message alone.

    ``only``: the handle of the one assistant to ask, whatever the text mentions (the
    OpenAI-compatible API's model, chat/openai_api/); ``NotFound`` if the room has none by
    that handle. ``sampling``: that send's own sampling, applied to the replies it queues.
    """
    found = placements(room.pk) if ask else []
    if only is not None:
        targets = [p for p in found if p.handle.lower() == only.lower()]
        if not targets:
            raise NotFound(f"this room has no assistant @{only}")
    else:
        targets = route(text, found, ask_ai=ask_ai)
    targets = targets[: settings.PARLEY_ASSISTANT_REPLIES_MAX]
    configs = providers.providers() if targets else {}
    with transaction.atomic():
        message = None
        if client_id or targets:
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
        existing: list[Message] = []
        if message is not None:
            existing = list(
                message.replies.filter(role=Role.ASSISTANT)
                .select_related("generation", "generation__stopped_by")
                .order_by("id")
            )
            answered = {r.generation.handle for r in existing}
            targets = [t for t in targets if t.handle not in answered]
        if targets:
            if queued + len(targets) > settings.PARLEY_ROOM_QUEUE_MAX:
                raise Busy(
                    "the assistants have too many replies queued in this room; try again soon"
                )
            _check_waiting(room=room, user=user, asking=len(targets))
        if message is None:
            message = Message.objects.create(
                room=room,
                role=Role.USER,
                author=user,
                text=text,
                client_id=client_id,
                input=input,
            )
        new = []
        for placement in targets:
            speaker = speaker_for(placement, configs)
            if sampling is not None:
                speaker = sampling.apply(speaker)
            new.append(
                _queue_reply(
                    room=room,
                    reply_to=message,
                    speaker=speaker,
                    backend=backend_name(speaker.config),
                    worker=worker,
                )
            )
    return Sent(message, existing + [q.reply for q in new], message_new, new)


def create_followups(
    *, reply_id: int, text: str, handle: str, queued: int, worker: str
) -> tuple[str, list[Queued]]:
    """The assistants that reply ``reply_id`` (complete, with ``text``) asks by mentioning
    them, queued as replies to the same member's message: (the room's slug, the replies).

    Bounded: a member's message has at most ``PARLEY_ASSISTANT_REPLIES_MAX`` replies in
    all, the first answers included, so no exchange between assistants can run away. An
    assistant that already has a reply waiting (queued) to that message is not asked
    again: that reply reads the room, this one included, when its turn comes. The room's
    line bound holds too (past it, nobody more is asked).
    """
    reply = Message.objects.select_related("room", "reply_to").get(pk=reply_id)
    asker_message = reply.reply_to
    if asker_message is None:
        return reply.room.slug, []
    targets = mentioned(text, placements(reply.room_id), exclude=handle)
    if not targets:
        return reply.room.slug, []
    configs = providers.providers()
    with transaction.atomic():
        earlier = list(
            Message.objects.filter(reply_to=asker_message, role=Role.ASSISTANT).values_list(
                "status", "generation__handle"
            )
        )
        waiting = {h for status, h in earlier if status == Status.QUEUED}
        room_left = max(0, settings.PARLEY_ROOM_QUEUE_MAX - queued)
        allowed = min(settings.PARLEY_ASSISTANT_REPLIES_MAX - len(earlier), room_left)
        targets = [t for t in targets if t.handle not in waiting][: max(0, allowed)]
        new = []
        for placement in targets:
            speaker = speaker_for(placement, configs)
            new.append(
                _queue_reply(
                    room=reply.room,
                    reply_to=asker_message,
                    speaker=speaker,
                    backend=backend_name(speaker.config),
                    worker=worker,
                )
            )
    return reply.room.slug, new


def _check_waiting(*, room: Room, user: User, asking: int = 1) -> None:
    """Refuse replies past ``PARLEY_ROOM_QUEUE_PER_MEMBER`` of this member's waiting in
    ``room`` (a send that asks several assistants counts as the replies it queues):
    counted in the database, so the cap holds across every process."""
    waiting = Message.objects.filter(
        room=room, role=Role.ASSISTANT, status=Status.QUEUED, reply_to__author=user
    ).count()
    cap = settings.PARLEY_ROOM_QUEUE_PER_MEMBER
    if waiting + asking > cap:
        if waiting < cap:
            raise Busy(
                f"that asks {asking} assistants and you already have {waiting} questions "
                f"waiting in this room (at most {cap} replies waiting); ask fewer at once, "
                "or again once one is answered"
            )
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
    """``create_messages``, and in the same thread hop the first new reply's prompt when
    it will start at once (nothing queued before it): the model request can go out
    without another round trip to the database."""
    sent = create_messages(**kw)
    if with_prompt and sent.new and len(sent.new) == len(sent.replies):
        return sent, prompt_for(sent.new[0].reply.pk)
    return sent, None


# How many of a room's members the prompt names (the newest joiners beyond it are left
# out): enough for a team's room, bounded so a 1,000-member room's prompt stays small.
PROMPT_MEMBERS_MAX = 30


def prompt_for(message_id: int) -> list[ChatMessage]:
    """The conversation the model sees for reply ``message_id``: who it is and who is in
    the room (chat/llm/prompt.py ``system_text``), then everything before it."""
    reply = Message.objects.select_related("room", "generation", "generation__assistant").get(
        pk=message_id
    )
    room = reply.room
    generation = getattr(reply, "generation", None)
    me = (generation.handle if generation is not None else "") or DEFAULT_HANDLE
    assistant = generation.assistant if generation is not None else None
    others = [
        (p.handle, p.assistant.name) for p in placements(room.pk) if p.handle.lower() != me.lower()
    ]
    members = list(
        Membership.objects.filter(room=room)
        .order_by("id")
        .values_list("user__username", flat=True)[: PROMPT_MEMBERS_MAX + 1]
    )
    history = (
        Message.objects.filter(room_id=reply.room_id, pk__lt=message_id)
        .select_related("author", "generation")
        .order_by("-id")[: settings.LLM_CONTEXT_MESSAGES]
    )
    turns = []
    for m in reversed(list(history)):
        text = m.text
        m_generation = getattr(m, "generation", None) if m.role == Role.ASSISTANT else None
        if room.prompt_heard_text and m.role == Role.ASSISTANT:
            # A spoken reply cut off while heard: only what was heard was said.
            heard = getattr(m_generation, "heard_text", None)
            if heard is not None:
                text = heard
                if not text:
                    continue
        if m.role == Role.ASSISTANT:
            author = (m_generation.handle if m_generation is not None else "") or DEFAULT_HANDLE
        else:
            author = m.author.get_username() if m.author else DEFAULT_HANDLE
        turns.append(Turn(role=m.role, author=author, text=text))
    return build_messages(
        system_prompt=system_text(
            own=assistant.system_prompt if assistant is not None else room.system_prompt,
            name=assistant.name if assistant is not None else "Assistant",
            handle=me,
            room=room.name,
            members=members[:PROMPT_MEMBERS_MAX],
            more_members=len(members) > PROMPT_MEMBERS_MAX,
            others=others,
        ),
        turns=turns,
        max_chars=settings.LLM_CONTEXT_CHARS,
        max_messages=settings.LLM_CONTEXT_MESSAGES,
        me=me,
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
