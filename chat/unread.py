"""Unread and mentions: how far each member has read, and what is new for them.

How a message maps to a seq: every message's ``message`` event gets the room's next seq
when it is emitted (chat/events), after its row was written, and chat/replies records that
seq on the row (``Message.seq``: one UPDATE by primary key per message, in the send's
existing thread hops; nothing per token). A member's page reports the seq it has shown
(the ``read`` action, ``POST .../read``); ``Membership.last_read_seq`` keeps the largest.
Unread = messages by others whose seq is larger, not deleted, sent since the member
joined (a newcomer does not inherit a room's whole history as unread).

Why seqs and not message ids: ids are handed out when rows are inserted and seqs when
events are emitted, and two sends in a room can take them in opposite orders, so "read
up to id N" could skip a message the reader never saw; the seq is exactly what the page
has shown. A message whose seq is not recorded yet (the moment between its row and its
event; messages from before this was kept) counts as read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet

from chat import events
from chat.errors import BadRequest
from chat.models import Membership, Message, Room


@dataclass(frozen=True)
class Unread:
    count: int  # at most PARLEY_UNREAD_MAX (the page shows "99+")
    mentioned: bool  # an unread message mentions @<the member's username>


NOTHING = Unread(count=0, mentioned=False)


def parse_seq(value: object) -> int:
    """A seq as a client sends it: a non-negative integer (JSON number)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise BadRequest("seq must be a non-negative integer")
    return value


def membership_read(*, user: User, room: Room, seq: int) -> int:
    """``user`` has seen ``room`` up to ``seq``: their last read seq moves there, never
    back (one conditional UPDATE, so two tabs racing leave the larger). A seq past the
    room's head is taken as the head. Returns the last read seq now stored."""
    seq = min(seq, events.room_head_sync(room))
    Membership.objects.filter(room=room, user=user, last_read_seq__lt=seq).update(last_read_seq=seq)
    stored = (
        Membership.objects.filter(room=room, user=user)
        .values_list("last_read_seq", flat=True)
        .first()
    )
    return stored if stored is not None else 0


def _unread(membership: Membership) -> QuerySet[Message]:
    # TODO(i19-edits): deleted messages are not unread: when Message.deleted_at exists,
    # add .filter(deleted_at__isnull=True) here.
    return (
        Message.objects.filter(
            room_id=membership.room_id,
            seq__gt=membership.last_read_seq,
            created__gte=membership.joined,
        )
        .exclude(author_id=membership.user_id)
        .order_by("seq")
    )


def mentions(text: str, username: str) -> bool:
    """``text`` mentions ``@username`` as a whole name (``@ann`` is not ``@anna``)."""
    pattern = r"(?<![\w@.+-])@" + re.escape(username) + r"(?![\w@.+-]*\w)"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def _of(membership: Membership, username: str) -> Unread:
    unread = _unread(membership)
    count = unread[: settings.PARLEY_UNREAD_MAX].count()
    if not count:
        return NOTHING
    # Candidates by LIKE in the database (over the unread range of the (room, seq)
    # index), then the whole-name rule in Python on a bounded few.
    candidates = unread.filter(text__icontains=f"@{username}").values_list("text", flat=True)
    mentioned = any(
        mentions(text, username) for text in candidates[: settings.PARLEY_MENTION_CANDIDATES]
    )
    return Unread(count=count, mentioned=mentioned)


def unread_of(*, user: User, room_ids: list[int]) -> dict[int, Unread]:
    """For each of ``room_ids`` that ``user`` is a member of: their unread count and
    whether they were mentioned (rooms they are not in are absent)."""
    memberships = Membership.objects.filter(user=user, room_id__in=room_ids)
    username = user.get_username()
    return {m.room_id: _of(m, username) for m in memberships}


def first_unread(*, user: User, room: Room) -> tuple[int, str | None]:
    """``user``'s last read seq in ``room`` and the id of their first unread message
    there (None: nothing unread), for the room page's "new" divider."""
    membership = Membership.objects.filter(user=user, room=room).first()
    if membership is None:
        return 0, None
    pk = _unread(membership).values_list("pk", flat=True).first()
    return membership.last_read_seq, (str(pk) if pk is not None else None)
