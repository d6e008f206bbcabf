"""Edit, delete and rate messages (issue 19; docs/protocol.md "Editing, deleting and
rating messages"). The services every transport calls.

Each write is announced the same way, so that every member ends in the state the database
holds, whatever order concurrent writes land in:

1. the write, in a transaction holding the message's row lock (``select_for_update``;
   SQLite's IMMEDIATE transactions lock the whole file), with the counts a rating changes
   recomputed in it; committed;
2. then the announcement (``_announce``): read the message, emit the event of what it
   holds *now* (its text, its tombstone, its counts), read it again, and emit again until
   what was sent is what is stored.

The last event emitted anywhere is followed by a read that found what it carried, and any
write after that read is announced by its own writer later, so the last event every member
gets carries the final state (two members rating at once: the last ``rating`` event has
the counts of both). In one process the announcements of a message also take turns (an
asyncio lock) and skip a state this process has just sent, so an edit never follows its
message's ``delete`` and nothing is sent twice; across processes a state may be sent twice
(events set state, so a repeat changes nothing). Emitting after the commit keeps snapshots
exact: a snapshot that already shows a change gets an event that sets what it shows. The
emit is never made inside a transaction: an emit may read the database itself (the store's
opening snapshot), on a connection that must not be in the middle of one.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from chat import events, selectors
from chat.errors import BadRequest, Busy, Forbidden, NotFound, NotGenerating, TooLong
from chat.extensions import STORED, EraseHook
from chat.models import (
    LIVE_STATUSES,
    Generation,
    Membership,
    Message,
    MessageEdit,
    Rating,
    Role,
)
from chat.ratelimit import action_allow
from chat.replies import reply_control_checked, reply_regenerate_for_message
from chat.serializers import MessageDict, message_to_dict
from chat.text import clean_text

logger = logging.getLogger(__name__)

RATING_VALUES = (1, -1, 0)
# A delete stops the replies still being written to the message before it tombstones it;
# a reply that completes meanwhile may ask other assistants (follow-ups), which are stopped
# in the next round. Past this many rounds the delete answers `busy`.
DELETE_STOP_ROUNDS = 3


# --- Shared -------------------------------------------------------------------------------


def _locked(pk: int) -> Message:
    return (
        Message.objects.select_for_update(of=("self",))
        .select_related("room", "author", "reply_to")
        .get(pk=pk)
    )


def _member_role(message: Message, user: User) -> str | None:
    """The user's role in the message's room: ``owner``, ``member``, or None."""
    if message.room.owner_id == user.pk:
        return Membership.Role.OWNER
    role: str | None = (
        Membership.objects.filter(room_id=message.room_id, user=user.pk)
        .values_list("role", flat=True)
        .first()
    )
    return role


def _find(message_id: object) -> int:
    pk = selectors.parse_message_id(message_id if isinstance(message_id, str | int) else "")
    if not Message.objects.filter(pk=pk).exists():
        raise NotFound("no such message")
    return pk


# Per message, in this process: (its lock, the body last sent, how many hold or await it).
_announcing: dict[int, tuple[asyncio.Lock, list[Any]]] = {}
# A message changing faster than it can be announced is announced again by each writer.
ANNOUNCE_ROUNDS = 4


def _state_body(pk: int, kind: str) -> Mapping[str, Any] | None:
    """The event of the message's state now: its tombstone once deleted, else its text
    (``edit``) or counts (``rating``)."""
    message = Message.objects.select_related("author", "deleted_by").filter(pk=pk).first()
    if message is None:
        return None
    if message.deleted_at is not None:
        by = message.deleted_by.get_username() if message.deleted_by is not None else ""
        return events.delete_body(message_id=str(pk), by=by)
    if kind == "edit":
        author = message.author.get_username() if message.author is not None else ""
        return events.edit_body(message_id=str(pk), text=message.text, by=author)
    if kind == "rating":
        up, down = message.rating_up or 0, message.rating_down or 0
        return events.rating_body(message_id=str(pk), up=up, down=down)
    return None


async def _announce(*, room_id: int, pk: int, kind: str) -> None:
    """Step 2 of the module docstring: emit the message's state until what was sent is
    what is stored."""
    entry = _announcing.get(pk)
    if entry is None:
        entry = _announcing[pk] = (asyncio.Lock(), [None, 0])
    lock, state = entry
    state[1] += 1
    try:
        async with lock:
            for _round in range(ANNOUNCE_ROUNDS):
                body = await database_sync_to_async(_state_body)(pk, kind)
                if body is None or body == state[0]:
                    return
                try:
                    await events.room_event_emit(room_id=room_id, body=body)
                except events.StoreUnavailable:
                    # Stored; members who missed it see it on their next load or snapshot.
                    logger.warning("room %s: the %s event could not be recorded", room_id, kind)
                    return
                state[0] = body
    finally:
        state[1] -= 1
        if not state[1]:
            del _announcing[pk]


def _wire(pk: int) -> MessageDict:
    message = Message.objects.select_related(
        "room", "author", "reply_to", "generation", "generation__stopped_by"
    ).get(pk=pk)
    return message_to_dict(message)


def _live_replies(message: Message) -> list[int]:
    """The replies still owned by a generation task that deleting ``message`` must stop
    first: itself if it is a live reply, else its live replies."""
    if message.role == Role.ASSISTANT:
        return [message.pk] if message.status in LIVE_STATUSES else []
    return list(
        Message.objects.filter(reply_to=message, status__in=LIVE_STATUSES).values_list(
            "pk", flat=True
        )
    )


# --- Edit ---------------------------------------------------------------------------------


async def message_edit(
    *, user: User, message_id: object, text: object, rerun: object = False
) -> MessageDict:
    """``user`` edits their own message: its text changes for everyone (an ``edit``
    event), the text before is kept (``MessageEdit``, shown in the admin) and it is marked
    edited. Prompts from then on use the new text.

    Refused, with nothing changed: not a member (``not_found``), a message that is not
    theirs or an assistant's reply (``forbidden``), a deleted one (``not_found``), one
    whose reply is still queued, being written or paused (``busy``: stop it or let it end
    first), text that a send would refuse, past the action rate limit (``rate_limited``;
    chat/ratelimit.py). The same text again changes nothing."""
    if not isinstance(rerun, bool):
        raise BadRequest("rerun must be true or false")
    text = clean_text(
        text, field="text", max_chars=settings.PARLEY_MAX_MESSAGE_CHARS, too_long=TooLong
    )
    await action_allow(user_id=user.pk)
    room_id, pk, changed = await database_sync_to_async(_edit_write)(
        user=user, message_id=message_id, text=text
    )
    if changed:
        await _announce(room_id=room_id, pk=pk, kind="edit")
    if rerun:
        # Edit and rerun: a new version of the reply to it (or a first reply), from the
        # text as now stored; refused (busy, rate limited) as a regenerate would be, after
        # the edit stands.
        await reply_regenerate_for_message(user=user, message_id=pk)
    return await database_sync_to_async(_wire)(pk)


def _edit_write(*, user: User, message_id: object, text: str) -> tuple[int, int, bool]:
    pk = _find(message_id)
    with transaction.atomic():
        message = _locked(pk)
        if _member_role(message, user) is None:
            raise NotFound("no such message")
        if message.role != Role.USER or message.author_id != user.pk:
            raise Forbidden("only its author can edit a message")
        if message.deleted_at is not None:
            raise NotFound("this message was deleted")
        if _live_replies(message):
            raise Busy(
                "the assistant is still answering this message: stop the reply or let it "
                "end, then edit"
            )
        if message.text == text:
            return message.room_id, pk, False
        MessageEdit.objects.create(message=message, text_before=message.text, by=user)
        message.text = text
        message.edited_at = timezone.now()
        message.save(update_fields=["text", "edited_at"])
    return message.room_id, pk, True


# --- Delete -------------------------------------------------------------------------------


def _delete_check(*, user: User, message_id: object) -> tuple[int, list[Message]]:
    """The message ``user`` may delete, and its replies to stop first (with what
    ``reply_control_checked`` reads)."""
    pk = selectors.parse_message_id(message_id if isinstance(message_id, str | int) else "")
    message = Message.objects.select_related("room", "author").filter(pk=pk).first()
    if message is None:
        raise NotFound("no such message")
    role = _member_role(message, user)
    if role is None and not user.is_staff:
        raise NotFound("no such message")
    own = message.role == Role.USER and message.author_id == user.pk and role is not None
    if not (own or user.is_staff or role == Membership.Role.OWNER):
        raise Forbidden("only its author, the room's owners or staff can delete a message")
    if message.deleted_at is not None:
        return pk, []
    live = list(
        Message.objects.select_related("room", "author", "reply_to", "generation").filter(
            pk__in=_live_replies(message)
        )
    )
    return pk, live


def _tombstone(*, user: User, pk: int) -> tuple[int | None, list[Message]]:
    """Tombstone the message unless a reply to it went live again meanwhile (then those
    replies, to stop first). Its room's id when this call deleted it."""
    with transaction.atomic():
        message = _locked(pk)
        if message.deleted_at is not None:
            return None, []
        live = _live_replies(message)
        if live:
            found = Message.objects.select_related("room", "author", "reply_to", "generation")
            return None, list(found.filter(pk__in=live))
        message.deleted_at = timezone.now()
        message.deleted_by = user
        message.save(update_fields=["deleted_at", "deleted_by"])
    return message.room_id, []


async def message_delete(*, user: User, message_id: object) -> MessageDict:
    """``user`` deletes a message: their own, or any as a room owner or staff. Every member
    sees it become a tombstone (a ``delete`` event; ``"deleted": true`` and no text from
    then on); it leaves prompts, exports and search. Its text stays for staff in the
    admin until ``purge_deleted`` erases it. What members could fetch of it elsewhere (a
    reply's audio: the ``STORED.deleted`` hooks) is removed at once.

    A reply still being written (the message itself, or a reply to it) is stopped first,
    as its stop control would (``generation`` ``stopped``, reason ``user``, by the
    deleter), so no delta follows the tombstone. Deleting a deleted message again is a
    no-op that answers the tombstone. Each delete takes from the action rate limit."""
    await action_allow(user_id=user.pk)
    pk, live = await database_sync_to_async(_delete_check)(user=user, message_id=message_id)
    for _round in range(DELETE_STOP_ROUNDS):
        for reply in live:
            try:
                await reply_control_checked(reply, user=user, action="stop", heard_ms=None)
            except NotGenerating:
                pass  # it ended meanwhile
        room_id, live = await database_sync_to_async(_tombstone)(user=user, pk=pk)
        if not live:
            if room_id is not None:
                await _announce(room_id=room_id, pk=pk, kind="delete")
                await database_sync_to_async(_erase)(STORED.deleted, [pk])
            return await database_sync_to_async(_wire)(pk)
    raise Busy("replies to this message keep starting; try again")


# --- Rate ---------------------------------------------------------------------------------


async def message_rate(
    *, user: User, message_id: object, value: object, comment: object = None
) -> MessageDict:
    """A member rates an assistant reply up (1) or down (-1), with an optional comment,
    or clears their rating (0). One rating per member and reply; rating again changes it.
    The ``rating`` event carries the reply's counts as they are after the write. Each
    rating takes from the action rate limit (a script flipping one would flood the room)."""
    if not isinstance(value, int) or isinstance(value, bool) or value not in RATING_VALUES:
        raise BadRequest("value must be 1 (up), -1 (down) or 0 (clear)")
    comment = clean_text(
        "" if comment is None else comment,
        field="comment",
        max_chars=settings.PARLEY_RATING_COMMENT_MAX,
        required=False,
        too_long=TooLong,
    )
    await action_allow(user_id=user.pk)
    room_id, pk, changed = await database_sync_to_async(_rate_write)(
        user=user, message_id=message_id, value=value, comment=comment
    )
    if changed:
        await _announce(room_id=room_id, pk=pk, kind="rating")
    return await database_sync_to_async(_wire)(pk)


def _rate_write(
    *, user: User, message_id: object, value: int, comment: str
) -> tuple[int, int, bool]:
    pk = _find(message_id)
    with transaction.atomic():
        message = _locked(pk)
        if _member_role(message, user) is None:
            raise NotFound("no such message")
        if message.deleted_at is not None:
            raise NotFound("this message was deleted")
        if message.role != Role.ASSISTANT:
            raise BadRequest("only assistant replies can be rated")
        before = (message.rating_up, message.rating_down)
        mine = Rating.objects.filter(message=message, user=user).first()
        if value == 0:
            if mine is None:
                return message.room_id, pk, False
            mine.delete()
        elif mine is None:
            Rating.objects.create(message=message, user=user, value=value, comment=comment)
        elif (mine.value, mine.comment) == (value, comment):
            return message.room_id, pk, False
        else:
            mine.value, mine.comment = value, comment
            mine.save(update_fields=["value", "comment", "updated"])
        counts = Rating.objects.filter(message=message).aggregate(
            up=Count("pk", filter=Q(value=1)), down=Count("pk", filter=Q(value=-1))
        )
        message.rating_up, message.rating_down = counts["up"], counts["down"]
        message.save(update_fields=["rating_up", "rating_down"])
    # A changed comment alone changes no count: nothing to tell the room.
    return message.room_id, pk, (message.rating_up, message.rating_down) != before


# --- Retention ----------------------------------------------------------------------------


def _erase(hooks: list[EraseHook], message_ids: list[int]) -> None:
    """Run other apps' erase hooks (chat/extensions.py ``STORED``) after a commit. A hook
    that fails is logged: the database change it follows stands."""
    if not message_ids:
        return
    for hook in hooks:
        try:
            hook(message_ids)
        except Exception:
            logger.exception("erasing what %r keeps of messages %s failed", hook, message_ids)


def deleted_purge(*, now: datetime.datetime | None = None) -> int:
    """Erase the text of messages deleted more than PARLEY_DELETED_RETENTION_DAYS ago, with
    their edit history, what was heard of them, and what other apps keep of them (voice:
    their audio files; the ``STORED.purged`` hooks); how many messages were erased. The
    tombstones stay (members see "message deleted" where they were)."""
    cutoff = (now or timezone.now()) - datetime.timedelta(
        days=settings.PARLEY_DELETED_RETENTION_DAYS
    )
    with transaction.atomic():
        ids = list(
            Message.objects.filter(deleted_at__lt=cutoff)
            .filter(~Q(text="") | Q(edits__isnull=False))
            .values_list("pk", flat=True)
            .distinct()
        )
        Message.objects.filter(pk__in=ids).update(text="")
        MessageEdit.objects.filter(message_id__in=ids).delete()
        Generation.objects.filter(message_id__in=ids).update(heard_text=None, speech_marks=[])
    _erase(STORED.purged, ids)
    return len(ids)
