"""Versions of a reply: regenerate one, pick which is current (docs/protocol.md
"Versions of a reply"). The services every transport calls.

A version is an assistant message of its own (``Message.version_of``: the first reply),
queued through the room's line like any reply, so pause, resume, stop, heard text and
voice work on it unchanged. The durable ``version`` event tells members which version is
current and how many there are; the new version's own ``message`` event precedes it and
its ``delta`` and ``generation`` events follow as for any reply.
"""

from __future__ import annotations

import logging

from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from chat.errors import BadRequest, NotFound
from chat.events import StoreUnavailable, room_event_emit, version_body
from chat.models import Message, Role
from chat.ratelimit import action_allow, send_allow
from chat.replies import db
from chat.replies.asking import queue_replies
from chat.replies.manager import get_manager
from chat.selectors import is_member, parse_message_id, reply_for_versions
from chat.serializers import MessageDict, message_to_dict

logger = logging.getLogger(__name__)

__all__ = ["reply_regenerate", "reply_regenerate_for_message", "version_pick"]


async def reply_regenerate(*, user: User, message_id: object) -> MessageDict:
    """``user`` asks for another answer: a new version of the reply ``message_id`` (the
    reply's id or any version's), queued, streamed to every member, and made current.
    Returns the new version's wire dict (status ``queued``).

    Who may: the asker, the room's owners, staff (``reply_for_versions``). ``busy`` while
    a version of it is still being written, or past the room's line bounds."""
    return await _regenerate(user=user, message_id=message_id)


async def reply_regenerate_for_message(*, user: User, message_id: object) -> list[MessageDict]:
    """The edit-and-rerun hook: a new version of the reply to the member's message
    ``message_id`` (one per assistant that answered it), or, when nobody has answered
    it yet, ask the assistants as a send of its text would. The new replies' wire dicts."""

    def replies_to() -> tuple[Message, list[int]]:
        pk = parse_message_id(message_id if isinstance(message_id, str | int) else "")
        message = Message.objects.select_related("room").filter(pk=pk).first()
        if message is None:
            raise NotFound("no such message")
        if not user.is_staff and not is_member(room=message.room, user=user):
            raise NotFound("no such message")  # as for reading it
        if message.role != Role.USER:
            raise BadRequest("only a member's message is rerun")
        if message.deleted_at is not None:
            raise NotFound("this message was deleted")
        heads = message.replies.filter(role=Role.ASSISTANT, version_of__isnull=True)
        return message, list(heads.order_by("id").values_list("pk", flat=True))

    message, heads = await database_sync_to_async(replies_to)()
    if not heads:
        return await _ask(user=user, message=message)
    return [await _regenerate(user=user, message_id=head_id) for head_id in heads]


async def _ask(*, user: User, message: Message) -> list[MessageDict]:
    """Queue the replies a send of ``message``'s text asks for (none answered it yet)."""
    manager = get_manager()
    await manager.ensure_started()
    room = message.room

    def create() -> list[db.Queued]:
        return db.create_replies_for(
            message=message, queued=manager.queue_length(room.pk), worker=manager.worker_id
        )

    queued = await database_sync_to_async(create)()
    return await queue_replies(
        manager,
        room_id=room.pk,
        room_slug=room.slug,
        queued=queued,
        asker_id=user.pk,
        voice=room.voice,
    )


async def _regenerate(*, user: User, message_id: object) -> MessageDict:
    # Another answer costs the model as a send does, and is counted as a send is: before
    # anything is read.
    await send_allow(user_id=user.pk)
    manager = get_manager()
    await manager.ensure_started()

    # One thread hop from the action to the new version (who may, read with the reply's
    # locked row, then the rows): the `version` event is as early as the rows allow.
    made = await database_sync_to_async(db.create_version)(
        user=user, message_id=message_id, queued=manager.queue_length, worker=manager.worker_id
    )
    head, room = made.head, made.room
    version = made.queued.reply
    announced = version_body(
        message_id=str(head.pk),
        current=str(version.pk),
        versions=head.version_count,
        by=user.get_username(),
    )
    dicts = await queue_replies(
        manager,
        room_id=room.pk,
        room_slug=room.slug,
        queued=[made.queued],
        asker_id=made.asker_id or user.pk,
        voice=room.voice,
        then=announced,
    )
    return dicts[0]


async def version_pick(*, user: User, message_id: object) -> MessageDict:
    """``user`` (the asker, an owner, staff) makes version ``message_id`` its reply's
    current one: durable (later prompts use it), and the room hears a ``version`` event.
    Picking the current version changes nothing and sends nothing. Returns the reply's
    wire dict as it is now. Each pick takes from the action rate limit."""
    await action_allow(user_id=user.pk)
    target = await database_sync_to_async(reply_for_versions)(message_id=message_id, user=user)
    head, changed = await database_sync_to_async(db.pick_version)(version_id=target.pk)
    if changed:
        body = version_body(
            message_id=str(head.pk),
            current=str(head.current_version_id or head.pk),
            versions=head.version_count,
            by=user.get_username(),
        )
        try:
            await room_event_emit(room_id=head.room_id, body=body)
        except StoreUnavailable:
            # Stored: pages that missed the event see the pick on their next load (the
            # reply's `current`); say `busy`, so the picker knows members were not told.
            logger.warning("reply %s: the version event could not be recorded", head.pk)
            raise

    def answer() -> MessageDict:
        return message_to_dict(
            Message.objects.select_related("room", "generation", "generation__stopped_by").get(
                pk=head.pk
            )
        )

    return await database_sync_to_async(answer)()
