"""Edit, delete and rate messages (issue 19; docs/protocol.md "Editing, deleting and
rating messages"). The services every transport calls.

Each write is announced the same way, so that every member ends in the state the database
holds, whatever order concurrent writes land in:

1. the write, in one thread hop: a transaction holding the message's row lock
   (``select_for_update``; SQLite's IMMEDIATE transactions lock the whole file), with the
   counts a rating changes recomputed in it, and the event of what it leaves (the text,
   the tombstone, the counts) built from the values it wrote; the write also takes its
   number (``_write_numbers``), under the lock, so a process numbers the writes of a
   message in the order they commit; committed;
2. then the announcement (``_announce``): that event is emitted at once, no read between
   the commit and the emit. The announcements of a message in this process take turns
   (an asyncio lock; the writer holds its place from before its write): a write whose
   number is below one this process already sent sends nothing (it is older than what
   members have), and a state this process has just sent is not sent again. So in one
   process the last event is the latest write's, an edit never follows its message's
   ``delete``, and nothing is sent twice.
3. With Redis, other processes write too, and their events may interleave with ours: a
   write's event goes out even when this process sent that same state last (another may
   have sent a different one since; a tombstone excepted, as nothing else can follow
   it), and after its emit the writer reads the message (one hop; not after a tombstone,
   which that read could only find again) and emits what it holds *now* until what was
   sent is what is stored. The last event emitted anywhere is followed by
   a read that found what it carried, and any write after that read is announced by its
   own writer later, so the last event every member gets carries the final state (two
   members rating at once: the last ``rating`` event has the counts of both). Across
   processes a state may be sent twice (events set state, so a repeat changes nothing).
   Without Redis one process serves the room (its events live in that process's store),
   so step 2 is the whole guarantee and nothing is read after the emit.

The HTTP answer is the message's wire dict, read after the emit (with the confirming read
when there is one); the WebSocket is answered by the room's event, so it asks for none
(``answer=False``). Emitting after the commit keeps snapshots exact: a snapshot that
already shows a change gets an event that sets what it shows. The emit is never made
inside a transaction: an emit may read the database itself (the store's opening
snapshot), on a connection that must not be in the middle of one.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from chat import events, selectors
from chat.errors import (
    BadRequest,
    Busy,
    Forbidden,
    NotFound,
    NotGenerating,
    ParleyError,
    TooLong,
)
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
from chat.replies import reply_control_applied, reply_regenerate_for_message
from chat.serializers import MessageDict, message_to_dict
from chat.text import clean_text

logger = logging.getLogger(__name__)

RATING_VALUES = (1, -1, 0)


# --- Shared -------------------------------------------------------------------------------


def _locked(pk: int, *, room: bool = True) -> Message:
    """The message, its row locked, with its room (who may change it) unless ``room`` is
    False."""
    found = Message.objects.select_for_update(of=("self",))
    if room:
        found = found.select_related("room")
    try:
        return found.get(pk=pk)
    except Message.DoesNotExist:
        raise NotFound("no such message") from None


def _member_role(message: Message, user: User) -> str | None:
    """The user's role in the message's room: ``owner``, ``member``, or None."""
    if message.room.owner_id == user.pk:
        return Membership.Role.OWNER
    roles = Membership.objects.filter(room_id=message.room_id, user=user.pk)
    role: str | None = next(iter(roles.values_list("role", flat=True)[:1]), None)
    return role


def _pk(message_id: object) -> int:
    return selectors.parse_message_id(message_id if isinstance(message_id, str | int) else "")


# The writes of lifecycle services in this process, numbered in the order they commit: a
# number is taken inside the write's transaction, while it holds the message's row lock.
_write_numbers = itertools.count(1)
# A message changing faster than it can be announced is announced again by each writer.
ANNOUNCE_ROUNDS = 4


@dataclass
class _Turns:
    """A message's announcements in this process: whose turn (``lock``), the body last
    sent, the number of the latest write whose writer confirms it (``owner``), and how
    many writers hold or await this (dropped when none do)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sent: Mapping[str, Any] | None = None
    owner: int = 0
    users: int = 0


_announcing: dict[int, _Turns] = {}


@asynccontextmanager
async def _turns(pk: int) -> AsyncIterator[_Turns]:
    """The message's turns, held from before a write until its announcement ends, so a
    write's number is always compared with what this process sent since."""
    turns = _announcing.get(pk)
    if turns is None:
        turns = _announcing[pk] = _Turns()
    turns.users += 1
    try:
        yield turns
    finally:
        turns.users -= 1
        if not turns.users:
            del _announcing[pk]


@dataclass(frozen=True)
class _Written:
    """What a write left: the message's room, its event (None when nothing changed) and
    the write's number."""

    room_id: int
    body: Mapping[str, Any] | None = None
    number: int = 0


def _written(message: Message, body: Mapping[str, Any] | None = None) -> _Written:
    """Inside the write's transaction: what it left, numbered if it changed anything."""
    return _Written(message.room_id, body, next(_write_numbers) if body is not None else 0)


def _state_body(message: Message, kind: str) -> Mapping[str, Any] | None:
    """The event of the message's state: its tombstone once deleted, else its text
    (``edit``) or counts (``rating``)."""
    pk = str(message.pk)
    if message.deleted_at is not None:
        by = message.deleted_by.get_username() if message.deleted_by is not None else ""
        return events.delete_body(message_id=pk, by=by)
    if kind == "edit":
        author = message.author.get_username() if message.author is not None else ""
        return events.edit_body(message_id=pk, text=message.text, by=author)
    if kind == "rating":
        up, down = message.rating_up or 0, message.rating_down or 0
        return events.rating_body(message_id=pk, up=up, down=down)
    return None


def _read(pk: int, kind: str) -> tuple[Mapping[str, Any] | None, MessageDict]:
    """The message as stored now: the event of its state, and its wire dict (the
    service's answer), in one query."""
    message = Message.objects.select_related(
        "room", "author", "reply_to", "generation", "generation__stopped_by", "deleted_by"
    ).get(pk=pk)
    return _state_body(message, kind), message_to_dict(message)


async def _emit(room_id: int, body: Mapping[str, Any], kind: str) -> bool:
    try:
        await events.room_event_emit(room_id=room_id, body=body)
    except events.StoreUnavailable:
        # Stored; members who missed it see it on their next load or snapshot.
        logger.warning("room %s: the %s event could not be recorded", room_id, kind)
        return False
    return True


async def _announce(
    turns: _Turns, *, pk: int, kind: str, written: _Written, answer: bool
) -> MessageDict | None:
    """Steps 2 and 3 of the module docstring: emit what the write left, then, when
    another process may write the message too, read it and emit until what was sent is
    what is stored. The message's wire dict as last read (read only if ``answer`` or to
    confirm)."""
    body, number = written.body, written.number
    # A tombstone is final: nothing can follow it but that same tombstone, so its writer
    # has nothing to confirm (a read after it could only find what it sent).
    tombstone = body is not None and body.get("type") == "delete"
    confirm = body is not None and bool(settings.REDIS_URL) and not tombstone
    if body is not None:
        # In one process the state it sent last is the last one members got. With Redis
        # another process may have sent one since: the write's state goes out even if it
        # is the one this process sent last (a repeat changes nothing), but a tombstone
        # goes out once.
        again = bool(settings.REDIS_URL) and not tombstone
        async with turns.lock:
            if number < turns.owner:
                confirm = False  # a later write of this process was sent: its writer confirms
            else:
                turns.owner = number
                if again or body != turns.sent:
                    if await _emit(written.room_id, body, kind):
                        turns.sent = body
                    else:
                        confirm = False
    # Without Redis one process serves the room (its events live in this process's
    # store): every write of the message was numbered here, and the latest one was sent.
    if not (answer or confirm):
        return None
    for _round in range(ANNOUNCE_ROUNDS):
        stored, wire = await database_sync_to_async(_read)(pk, kind)
        if not confirm or stored is None:
            return wire
        async with turns.lock:
            if number < turns.owner or stored == turns.sent:
                return wire
            if not await _emit(written.room_id, stored, kind):
                return wire
            turns.sent = stored
    return wire


# --- Edit ---------------------------------------------------------------------------------


async def message_edit(
    *, user: User, message_id: object, text: object, rerun: object = False, answer: bool = True
) -> MessageDict | None:
    """``user`` edits their own message: its text changes for everyone (an ``edit``
    event), the text before is kept (``MessageEdit``, shown in the admin) and it is marked
    edited. Prompts from then on use the new text.

    Refused, with nothing changed: not a member (``not_found``), a message that is not
    theirs or an assistant's reply (``forbidden``), a deleted one (``not_found``), one
    whose reply is still queued, being written or paused (``busy``: stop it or let it end
    first), text that a send would refuse, past the action rate limit (``rate_limited``;
    chat/ratelimit.py). The same text again changes nothing.

    The message's wire dict, or None with ``answer=False`` (the WebSocket, answered by
    the room's event: no read after the event for it)."""
    if not isinstance(rerun, bool):
        raise BadRequest("rerun must be true or false")
    text = clean_text(
        text, field="text", max_chars=settings.PARLEY_MAX_MESSAGE_CHARS, too_long=TooLong
    )
    await action_allow(user_id=user.pk)
    pk = _pk(message_id)
    async with _turns(pk) as turns:
        written = await database_sync_to_async(_edit_write)(user=user, pk=pk, text=text)
        wire = await _announce(turns, pk=pk, kind="edit", written=written, answer=answer)
    if rerun:
        # Edit and rerun: a new version of the reply to it (or a first reply), from the
        # text as now stored; refused (busy, rate limited) as a regenerate would be, after
        # the edit stands.
        await reply_regenerate_for_message(user=user, message_id=pk)
    return wire


def _edit_write(*, user: User, pk: int, text: str) -> _Written:
    with transaction.atomic():
        message = _locked(pk)
        if _member_role(message, user) is None:
            raise NotFound("no such message")
        if message.role != Role.USER or message.author_id != user.pk:
            raise Forbidden("only its author can edit a message")
        if message.deleted_at is not None:
            raise NotFound("this message was deleted")
        if _live_replies(message).exists():
            raise Busy(
                "the assistant is still answering this message: stop the reply or let it "
                "end, then edit"
            )
        if message.text == text:
            return _written(message)
        MessageEdit.objects.create(message=message, text_before=message.text, by=user)
        message.text = text
        message.edited_at = timezone.now()
        message.save(update_fields=["text", "edited_at"])
        return _written(
            message, events.edit_body(message_id=str(pk), text=text, by=user.get_username())
        )


def _live_replies(message: Message) -> QuerySet[Message]:
    """The replies still owned by a generation task that deleting ``message`` must stop
    first: itself if it is a live reply, else its live replies. Each with what
    ``reply_control_applied`` reads of it (its status, the worker running it), nothing
    more: one query."""
    if message.role == Role.ASSISTANT:
        if message.status not in LIVE_STATUSES:
            return Message.objects.none()
        mine = Q(pk=message.pk)
    else:
        mine = Q(reply_to=message)
    found = Message.objects.filter(mine, status__in=LIVE_STATUSES)
    return found.select_related("generation").only("status", "generation__worker")


# --- Delete -------------------------------------------------------------------------------


def _tombstone(*, user: User, pk: int) -> tuple[_Written, list[Message]]:
    """Tombstone the message ``user`` may delete, with the replies to it still being
    written (to stop before the tombstone is announced). Its event when this call deleted
    it; a message deleted already: no event and nothing to stop."""
    with transaction.atomic():
        message = _locked(pk)
        role = _member_role(message, user)
        if role is None and not user.is_staff:
            raise NotFound("no such message")
        own = message.role == Role.USER and message.author_id == user.pk and role is not None
        if not (own or user.is_staff or role == Membership.Role.OWNER):
            raise Forbidden("only its author, the room's owners or staff can delete a message")
        if message.deleted_at is not None:
            return _written(message), []
        live = list(_live_replies(message))
        message.deleted_at = timezone.now()
        message.deleted_by = user
        message.save(update_fields=["deleted_at", "deleted_by"])
        return _written(
            message, events.delete_body(message_id=str(pk), by=user.get_username())
        ), live


def _after_delete(pk: int) -> list[Message]:
    """After a delete's announcement: erase what other apps keep of the message, and the
    replies to it still live, which started after its tombstone was committed (a
    regenerate that read the message before it), to stop too."""
    _erase(STORED.deleted, [pk])
    message = Message.objects.only("role", "status").filter(pk=pk).first()
    return [] if message is None else list(_live_replies(message))  # None: its room went


async def _stop(replies: list[Message], *, user: User) -> None:
    """Stop each reply as the deleter's ``stop`` would. One that ended meanwhile needs
    nothing; one that cannot be stopped now (its process is away) is logged and ends as
    any reply of a gone process does: the tombstone stands, and is announced."""
    for reply in replies:
        try:
            await reply_control_applied(reply, user=user, action="stop", heard_ms=None)
        except NotGenerating:
            pass  # it ended meanwhile
        except ParleyError as exc:
            logger.warning("reply %s: a delete could not stop it: %s", reply.pk, exc)


async def message_delete(
    *, user: User, message_id: object, answer: bool = True
) -> MessageDict | None:
    """``user`` deletes a message: their own, or any as a room owner or staff. Every member
    sees it become a tombstone (a ``delete`` event; ``"deleted": true`` and no text from
    then on); it leaves prompts, exports and search. Its text stays for staff in the
    admin until ``purge_deleted`` erases it. What members could fetch of it elsewhere (a
    reply's audio: the ``STORED.deleted`` hooks) is removed at once.

    A reply still being written (the message itself, or a reply to it) is stopped before
    the ``delete`` event, as its stop control would (``generation`` ``stopped``, reason
    ``user``, by the deleter), so no delta follows the tombstone. The tombstone is
    written first, in the same hop as the checks: from its commit on nothing new can
    answer the message (follow-ups and reruns check for it), and the action makes one
    database hop of its own before the ``delete`` event, not two. Deleting a deleted
    message again is a no-op that answers the tombstone (``answer``: as
    ``message_edit``). Each delete takes from the action rate limit."""
    await action_allow(user_id=user.pk)
    pk = _pk(message_id)
    async with _turns(pk) as turns:
        written, live = await database_sync_to_async(_tombstone)(user=user, pk=pk)
        await _stop(live, user=user)
        wire = await _announce(turns, pk=pk, kind="delete", written=written, answer=answer)
    if written.body is not None:  # this call deleted it
        await _stop(await database_sync_to_async(_after_delete)(pk), user=user)
    return wire


# --- Rate ---------------------------------------------------------------------------------


async def message_rate(
    *, user: User, message_id: object, value: object, comment: object = None, answer: bool = True
) -> MessageDict | None:
    """A member rates an assistant reply up (1) or down (-1), with an optional comment,
    or clears their rating (0). One rating per member and reply; rating again changes it.
    The ``rating`` event carries the reply's counts as they are after the write
    (``answer``: as ``message_edit``). Each rating takes from the action rate limit (a
    script flipping one would flood the room)."""
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
    pk = _pk(message_id)
    async with _turns(pk) as turns:
        written = await database_sync_to_async(_rate_write)(
            user=user, pk=pk, value=value, comment=comment
        )
        return await _announce(turns, pk=pk, kind="rating", written=written, answer=answer)


def _rate_write(*, user: User, pk: int, value: int, comment: str) -> _Written:
    with transaction.atomic():
        message = _locked(pk)
        if _member_role(message, user) is None:
            raise NotFound("no such message")
        if message.deleted_at is not None:
            raise NotFound("this message was deleted")
        if message.role != Role.ASSISTANT:
            raise BadRequest("only assistant replies can be rated")
        before = (message.rating_up, message.rating_down)
        mine = next(iter(Rating.objects.filter(message=message, user=user)[:1]), None)
        if value == 0:
            if mine is None:
                return _written(message)
            mine.delete()
        elif mine is None:
            Rating.objects.create(message=message, user=user, value=value, comment=comment)
        elif (mine.value, mine.comment) == (value, comment):
            return _written(message)
        else:
            mine.value, mine.comment = value, comment
            mine.save(update_fields=["value", "comment", "updated"])
        counts = Rating.objects.filter(message=message).aggregate(
            up=Count("pk", filter=Q(value=1)), down=Count("pk", filter=Q(value=-1))
        )
        message.rating_up, message.rating_down = counts["up"], counts["down"]
        if (message.rating_up, message.rating_down) == before:
            # A changed comment alone changes no count: nothing to tell the room.
            return _written(message)
        message.save(update_fields=["rating_up", "rating_down"])
        up, down = message.rating_up, message.rating_down
        return _written(message, events.rating_body(message_id=str(pk), up=up, down=down))


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
