"""Assistant replies: the services every transport calls.

``message_send`` stores a message and queues its replies, ``reply_control`` pauses, resumes
or stops a reply wherever it runs, ``reply_wait`` waits for one to end. A reply is run by
a task owned by the process's ``ReplyManager`` (``chat/replies/manager.py``), never by the
connection that asked for it, so it outlives that connection; how one reply is steered is
in ``chat/replies/run.py``.
"""

from __future__ import annotations

import asyncio
import time

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User

from chat.errors import BadRequest, NotGenerating, TooLong
from chat.events import StoreUnavailable, message_body, room_event_emit
from chat.models import TERMINAL_STATUSES, InputKind, Message, Room, VoiceMode
from chat.ratelimit import send_allow
from chat.replies import db
from chat.replies.asking import queue_replies
from chat.replies.db import Sampling
from chat.replies.manager import ReplyManager, get_manager
from chat.replies.versions import reply_regenerate, reply_regenerate_for_message, version_pick
from chat.selectors import reply_for_control
from chat.serializers import MessageDict, message_to_dict
from chat.text import clean_text

__all__ = [
    "ReplyManager",
    "Sampling",
    "get_manager",
    "message_send",
    "reply_control",
    "reply_control_applied",
    "reply_control_checked",
    "reply_wait",
    "replies_wait",
    "reply_regenerate",
    "reply_regenerate_for_message",
    "version_pick",
]

CLIENT_ID_MAX = 64
ACTIONS = ("pause", "resume", "stop")


# --- Sending ----------------------------------------------------------------------------


def validate_send(
    *, text: object, client_id: object, ask_ai: object, voice: object
) -> tuple[str, str, bool, str | None]:
    text = clean_text(
        text, field="text", max_chars=settings.PARLEY_MAX_MESSAGE_CHARS, too_long=TooLong
    )
    client_id = clean_text(
        "" if client_id is None else client_id,
        field="client_id",
        max_chars=CLIENT_ID_MAX,
        required=False,
        single_line=True,
    )
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
    input: str = InputKind.TEXT,
    rate_checked: bool = False,
    assistant: str | None = None,
    sampling: db.Sampling | None = None,
) -> tuple[MessageDict, list[MessageDict]]:
    """Store a user's message in ``room`` (a member's), broadcast it, queue its replies.

    Which assistants answer is chat.assistants.routing's rule; each reply runs on its own
    assistant's provider and model, one after the other through the room's line. Returns
    the message and the reply placeholders (in the order they answer; empty when nobody
    is asked) as wire dicts. Idempotent per ``client_id``: a resend returns the first
    send's message and its replies (db.create_messages). ``Busy`` means nothing was stored
    (or, when a reply could not be announced, that a resend with the same client_id
    completes the send).
    ``input="speech"``: ``text`` is a transcript (voice/conversation.py), whose utterance
    already took its turn from the sender's rate limit (``rate_checked``).
    ``assistant``: ask exactly the assistant with this handle, whatever the text mentions
    (the OpenAI-compatible API, chat/openai_api/); ``sampling``: its temperature,
    max_tokens and stop for this send (``db.Sampling``).
    """
    text, client_id, ask_ai, voice = validate_send(
        text=text, client_id=client_id, ask_ai=ask_ai, voice=voice
    )
    if not rate_checked:
        await send_allow(user_id=user.pk)
    accepted_ns = time.time_ns()  # where its replies' traces begin (core/tracing.py)
    manager = get_manager()
    await manager.ensure_started()
    # One thread hop: the room's assistants and their providers, the routing, the rows,
    # and the first reply's prompt when it starts at once.
    sent, prompt = await database_sync_to_async(db.create_messages_with_prompt)(
        with_prompt=manager.queue_length(room.pk) == 0,
        user=user,
        room=room,
        text=text,
        client_id=client_id,
        ask_ai=ask_ai,
        queued=manager.queue_length(room.pk),
        input=input,
        worker=manager.worker_id,
        only=assistant,
        sampling=sampling,
    )
    message = sent.message
    message_dict = message_to_dict(message, room_slug=room.slug)
    # The seq of each `message` event, kept on its row by queue_replies (unread counts).
    seqs: dict[int, int] = {}
    if sent.message_new:
        try:
            event = await room_event_emit(room_id=room.pk, body=message_body(message_dict))
        except StoreUnavailable:
            # Nobody saw it: take it back, so that `busy` means nothing was stored.
            await database_sync_to_async(db.discard)([message.pk, *(r.pk for r in sent.replies)])
            raise
        seqs[message.pk] = event["seq"]
    new_ids = {q.reply.pk for q in sent.new}
    # A resend's replies stored the first time, as they stand (the send's answer).
    earlier = [message_to_dict(r, room_slug=room.slug) for r in sent.replies if r.pk not in new_ids]
    queued = await queue_replies(
        manager,
        room_id=room.pk,
        room_slug=room.slug,
        queued=sent.new,
        asker_id=user.pk,
        voice=voice or room.voice,
        prompt=prompt,
        seqs=seqs,
        sent_ns=accepted_ns,
    )
    return message_dict, earlier + queued


# --- Control ----------------------------------------------------------------------------


def _control_target(*, user: User, message_id: object) -> Message:
    # The rule of who may control a reply is chat.selectors.can_control_reply.
    return reply_for_control(message_id=message_id, user=user)


async def reply_control(
    *, user: User, message_id: object, action: str, heard_ms: int | None = None
) -> MessageDict:
    """Pause, resume or stop a reply, with the contract's rules (docs/protocol.md "Who
    controls a reply").

    ``heard_ms`` (a stop): how far into the reply's audio the stopping member had played;
    what they heard is kept with the reply (Generation.heard_text)."""
    if action not in ACTIONS:
        raise BadRequest(f"action must be one of: {', '.join(ACTIONS)}")
    message = await database_sync_to_async(_control_target)(user=user, message_id=message_id)
    return await reply_control_checked(message, user=user, action=action, heard_ms=heard_ms)


async def reply_control_checked(
    message: Message, *, user: User, action: str, heard_ms: int | None
) -> MessageDict:
    """``reply_control`` once ``user`` is known to be allowed to control ``message``."""
    text, status = await reply_control_applied(message, user=user, action=action, heard_ms=heard_ms)
    # The message as read before the control, with what the control left (one that had
    # ended was refused before anything of it that is not loaded could be touched).
    result = message_to_dict(message)
    result["text"], result["status"] = text, status
    if result["status"] in TERMINAL_STATUSES:
        # Ended by this control (saved before its end was announced): the answer says how,
        # as the message does from now on (by, reason, metrics).
        ended = await database_sync_to_async(_ended_message)(message.pk)
        result["by"], result["reason"] = ended.get("by"), ended.get("reason")
        result["metrics"] = ended.get("metrics")
    return result


async def reply_control_applied(
    message: Message, *, user: User, action: str, heard_ms: int | None
) -> tuple[str, str]:
    """Apply the control as ``reply_control_checked`` does, without reading the message
    back for an answer: the reply's visible text and status after it (a delete stopping
    the replies first answers with the tombstone, not with them). Of ``message`` it reads
    only the id, the status and, when another process runs it, ``generation.worker``
    (a delete loads no more of it)."""
    if message.status in TERMINAL_STATUSES:
        raise NotGenerating(f"this reply is already {message.status}")
    manager = get_manager()
    await manager.ensure_started()
    run = manager.runs.get(message.pk)
    if run is not None:
        await run.control(action, by=user.get_username(), heard_ms=heard_ms)
        return run.visible()
    # Running in another process: its worker applies the control and answers.
    answer = await manager.control_remote(
        worker=message.generation.worker,
        message_id=message.pk,
        action=action,
        by=user.get_username(),
        heard_ms=heard_ms,
    )
    return answer["text"], answer["status"]


def _ended_message(message_id: int) -> MessageDict:
    message = Message.objects.select_related(
        "room", "author", "generation", "generation__stopped_by"
    ).get(pk=message_id)
    return message_to_dict(message)


async def reply_wait(*, message_id: int, timeout: float) -> str | None:  # noqa: ASYNC109
    """Wait until the reply ends; its final status, or None on timeout / not here."""
    run = get_manager().runs.get(message_id)
    if run is None:
        return None
    try:
        return await asyncio.wait_for(asyncio.shield(run.done), timeout)
    except TimeoutError:
        return None


async def replies_wait(*, message_ids: list[int], timeout: float) -> bool:  # noqa: ASYNC109
    """Wait until every one of these replies ends, within ``timeout`` in all; False on
    timeout. A reply not running here has ended already (a send's replies run in the
    process that queued them)."""
    runs = [get_manager().runs.get(mid) for mid in message_ids]
    waits = [asyncio.shield(run.done) for run in runs if run is not None]
    if not waits:
        return True
    try:
        await asyncio.wait_for(asyncio.gather(*waits), timeout)
    except TimeoutError:
        return False
    return True
