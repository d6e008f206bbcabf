"""Database work of replies; each function runs in a worker thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import DateTimeField, F, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat.assistants import providers
from chat.assistants.providers import ProviderConfig
from chat.assistants.routing import DEFAULT_HANDLE, mentioned, route
from chat.errors import BadRequest, Busy, Conflict, NotFound
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
from chat.selectors import (
    VERSIONS_RELATED,
    parse_message_id,
    reply_for_versions,
    versions_allowed,
    with_member_role,
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
    """Resolve ``placement``'s assistant to what its run needs (``configs``: every
    provider, read once for several placements; without it, only this one's is read). An
    assistant whose provider was removed gets a "missing" one: its reply fails with that
    reason (the send still stands), rather than sending the conversation to a server its
    owner did not pick."""
    assistant = placement.assistant
    if configs is not None:
        found = configs.get(assistant.provider)
    else:
        found = providers.provider_or_none(assistant.provider)  # its row, if any: no other
    config = found or providers.ProviderConfig(assistant.provider, "missing")
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
    *,
    room: Room,
    reply_to: Message,
    speaker: Speaker,
    backend: str,
    worker: str,
    version_of: Message | None = None,
    version: int = 1,
) -> Queued:
    reply = Message.objects.create(
        room=room,
        role=Role.ASSISTANT,
        text="",
        status=Status.QUEUED,
        reply_to=reply_to,
        version_of=version_of,
        version=version,
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
                message.replies.filter(role=Role.ASSISTANT, version_of__isnull=True)
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
            _check_waiting(room=room, asker_id=user.pk, asking=len(targets))
        if message is None:
            message = Message.objects.create(
                room=room,
                role=Role.USER,
                author=user,
                text=text,
                client_id=client_id,
                input=input,
            )
        new = _queue_replies(
            room=room,
            message=message,
            targets=targets,
            configs=configs,
            worker=worker,
            sampling=sampling,
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
    line bound holds too (past it, nobody more is asked). Nobody is asked for a question
    or a reply deleted meanwhile.
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
        # Locked as a delete locks them (chat/lifecycle.py): a delete of the question or
        # of this reply either came first (then nobody is asked) or comes after and stops
        # what is queued here first, as it stops any reply to the question.
        alive = Message.objects.select_for_update().filter(
            pk__in=(asker_message.pk, reply.pk), deleted_at__isnull=True
        )
        if len(alive.order_by("pk").values_list("pk", flat=True)) < 2:
            return reply.room.slug, []
        earlier = list(
            # Replies, not their later versions (a regenerated answer is the same reply).
            Message.objects.filter(
                reply_to=asker_message, role=Role.ASSISTANT, version_of__isnull=True
            ).values_list("status", "generation__handle")
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


def _check_waiting(*, room: Room, asker_id: int, asking: int = 1) -> None:
    """Refuse replies past ``PARLEY_ROOM_QUEUE_PER_MEMBER`` of member ``asker_id``'s
    waiting in ``room`` (a send that asks several assistants counts as the replies it
    queues): counted in the database, so the cap holds across every process."""
    waiting = Message.objects.filter(
        room=room, role=Role.ASSISTANT, status=Status.QUEUED, reply_to__author_id=asker_id
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
    # A later version of a reply sees what its first version saw: the conversation up to
    # the reply's place, no earlier version of it. Each earlier reply is there once, at
    # its place, as its current version (the one members picked, or the last made).
    cutoff = reply.version_of_id or message_id
    history = (
        # A deleted message has left the conversation (issue 19): the model never sees it.
        Message.objects.filter(
            room_id=reply.room_id, pk__lt=cutoff, version_of__isnull=True, deleted_at__isnull=True
        )
        .select_related("author", "generation", "current_version__generation")
        .order_by("-id")[: settings.LLM_CONTEXT_MESSAGES]
    )
    turns = []
    for row in reversed(list(history)):
        m = row.current_version if row.current_version_id is not None else row
        assert m is not None
        if m.deleted_at is not None:
            continue  # the version shown was deleted: its text has left the conversation
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


# --- Versions of a reply (docs/protocol.md "Versions of a reply") ---------------------


@dataclass
class NewVersion:
    """A new version stored as queued: the room, the reply it is a version of (its count
    and current updated), and who asked for it and whom it answers."""

    room: Room
    head: Message
    queued: Queued
    asker_id: int | None


def create_version(
    *, user: User, message_id: object, queued: Callable[[int], int], worker: str
) -> NewVersion:
    """Store a new version of the reply ``message_id`` (the reply's id or any version's)
    that ``user`` asks for, queued, and make it current. Who may: ``reply_for_versions``'
    rule (the asker, the room's owners, staff), checked on the reply's locked row.

    ``queued(room_id)``: replies in the room's line in this process now. Refused with
    ``Busy`` while any version of the reply is queued, streaming or paused (one answer at
    a time is written; stop it first), past the room's line bound, or past the asker's
    share of it (``_check_waiting``: a version waits in line like any reply). The version
    is written by the reply's assistant; one removed from the room since cannot write
    another (``BadRequest``)."""
    pk = parse_message_id(message_id if isinstance(message_id, str | int) else "")
    with transaction.atomic():
        head = _reply_locked(pk=pk, user=user)
        versions = Message.objects.filter(Q(pk=head.pk) | Q(version_of=head.pk))
        if versions.filter(status__in=LIVE_STATUSES).exists():
            raise Busy(
                "a version of this reply is still being written; stop it or wait for it "
                "to end, then regenerate"
            )
        if head.reply_to is None or head.reply_to.deleted_at is not None:
            raise BadRequest("the message this reply answered is gone")
        if head.deleted_at is not None:
            raise NotFound("this reply was deleted")
        generation = getattr(head, "generation", None)
        handle = (generation.handle if generation is not None else "") or DEFAULT_HANDLE
        placement = _placement(
            room_id=head.room_id,
            assistant_id=generation.assistant_id if generation is not None else None,
            handle=handle,
        )
        if placement is None:
            raise BadRequest(f"@{handle} is no longer in this room, so it cannot answer again")
        if queued(head.room_id) + 1 > settings.PARLEY_ROOM_QUEUE_MAX:
            raise Busy("the assistants have too many replies queued in this room; try again soon")
        asker_id = head.reply_to.author_id
        if asker_id is not None:
            _check_waiting(room=head.room, asker_id=asker_id)
        speaker = speaker_for(placement)
        made = _queue_reply(
            room=head.room,
            reply_to=head.reply_to,
            speaker=speaker,
            backend=backend_name(speaker.config),
            worker=worker,
            version_of=head,
            version=head.version_count + 1,
        )
        head.version_count += 1
        head.current_version = made.reply
        head.save(update_fields=["version_count", "current_version"])
    return NewVersion(room=head.room, head=head, queued=made, asker_id=asker_id)


def _reply_locked(*, pk: int, user: User) -> Message:
    """The reply (first version) that message ``pk`` is or is a version of, its row
    locked, if ``user`` may ask for another version of it (else what
    ``reply_for_versions`` raises). Asked by the reply's own id, the row and who may are
    one query; by a later version's id, that version is read (not locked) first."""
    # Only the reply's row is locked (PostgreSQL cannot lock the nullable side of the
    # outer joins select_related makes).
    locked = Message.objects.select_for_update(of=("self",)).select_related(*VERSIONS_RELATED)
    try:
        head = with_member_role(locked.filter(version_of__isnull=True), user=user).get(pk=pk)
    except Message.DoesNotExist:
        target = reply_for_versions(message_id=pk, user=user)
        return locked.get(pk=target.version_of_id or target.pk)
    versions_allowed(message=head, user=user)
    return head


def _placement(*, room_id: int, assistant_id: int | None, handle: str) -> RoomAssistant | None:
    """The room's placement of the assistant that wrote a reply: by its assistant, else
    (an assistant since deleted) by its handle. Each is unique in a room: one query."""
    found = RoomAssistant.objects.select_related("assistant").filter(room_id=room_id)
    if assistant_id is None:
        return next(iter(found.filter(handle=handle)), None)
    rows = list(found.filter(Q(assistant_id=assistant_id) | Q(handle=handle)))
    mine = [p for p in rows if p.assistant_id == assistant_id]
    return next(iter(mine or rows), None)


def create_replies_for(*, message: Message, queued: int, worker: str) -> list[Queued]:
    """Queue the replies a member's stored ``message`` asks for, as a send of its text with
    ``ask_ai`` would (a rerun of a message nobody answered: it wants an answer), within
    the same bounds as a send."""
    room = message.room
    targets = route(message.text, placements(room.pk), ask_ai=True)
    targets = targets[: settings.PARLEY_ASSISTANT_REPLIES_MAX]
    if not targets:
        raise BadRequest("this room has no assistant to answer that message")
    configs = providers.providers()
    with transaction.atomic():
        if queued + len(targets) > settings.PARLEY_ROOM_QUEUE_MAX:
            raise Busy("the assistants have too many replies queued in this room; try again soon")
        if message.author_id is not None:
            _check_waiting(room=room, asker_id=message.author_id, asking=len(targets))
        new = _queue_replies(
            room=room, message=message, targets=targets, configs=configs, worker=worker
        )
    return new


def _queue_replies(
    *,
    room: Room,
    message: Message,
    targets: list[RoomAssistant],
    configs: dict[str, ProviderConfig],
    worker: str,
    sampling: Sampling | None = None,
) -> list[Queued]:
    """One queued reply to ``message`` per assistant in ``targets``, in that order (the
    caller holds the transaction and checked the bounds)."""
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
    return new


def pick_version(*, version_id: int) -> tuple[Message, bool]:
    """Make ``version_id`` (a reply or one of its later versions) its reply's current
    version; (the reply, whether anything changed). Picking the current one is a no-op."""
    with transaction.atomic():
        target = Message.objects.get(pk=version_id)
        head = Message.objects.select_for_update().get(pk=target.version_of_id or target.pk)
        current = None if target.pk == head.pk else target.pk
        if (head.current_version_id or None) == current:
            return head, False
        head.current_version_id = current
        head.save(update_fields=["current_version"])
    return head, True


def record_seqs(seqs: dict[int, int]) -> None:
    """Keep on each message the seq its ``message`` event was given (chat/unread.py: how
    unread counts map messages to seqs). One UPDATE by primary key per message; a seq
    once kept is not changed (a resend emits nothing new)."""
    for pk, seq in seqs.items():
        Message.objects.filter(pk=pk, seq__isnull=True).update(seq=seq)


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
    # One statement for the generation row: who stopped it looked up in it (a subquery,
    # null for a name no user has), and a start time kept if one was stored.
    ended_fields: dict[str, Any] = {
        "first_token_at": wall_time(first_token_at, now_mono=now_mono),
        "ended_at": wall_time(ended, now_mono=now_mono),
        "paused_seconds": paused_seconds,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "stop_reason": stop_reason[:40],
        "stopped_by": (
            Subquery(get_user_model().objects.filter(username=stopped_by).values("pk")[:1])
            if stopped_by
            else None
        ),
        "error": error,
        "reason": reason or "",
        "metrics": metrics,
    }
    if started_at is not None:
        start = Value(wall_time(started_at, now_mono=now_mono), output_field=DateTimeField())
        ended_fields["started_at"] = Coalesce(F("started_at"), start)
    with transaction.atomic():
        if not Message.objects.filter(pk=message_id, status__in=LIVE_STATUSES).update(
            text=text, status=status
        ):
            return False
        Generation.objects.filter(message_id=message_id).update(**ended_fields)
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
