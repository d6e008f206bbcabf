"""Reads: which rooms and messages a user may see."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet

from chat.errors import Forbidden, NotFound
from chat.models import Membership, Message, Room, Visibility

AnyUser = User | AnonymousUser


def rooms_visible_to(*, user: AnyUser) -> QuerySet[Room]:
    """Public rooms and the private rooms ``user`` belongs to."""
    return (
        Room.objects.filter(Q(visibility=Visibility.PUBLIC) | Q(memberships__user=user.pk))
        .select_related("owner")
        .distinct()
        .order_by("name", "id")
    )


def rooms_of(*, user: AnyUser) -> QuerySet[Room]:
    """The rooms ``user`` is a member of."""
    return Room.objects.filter(memberships__user=user.pk).select_related("owner").order_by("name")


def is_member(*, room: Room, user: AnyUser) -> bool:
    return Membership.objects.filter(room=room, user=user.pk).exists()


def room_get(*, slug: str, user: AnyUser) -> Room:
    """The room, if ``user`` may see it; a private room is invisible to non-members."""
    room = Room.objects.select_related("owner").filter(slug=slug).first()
    if room is None or (
        room.visibility != Visibility.PUBLIC and not is_member(room=room, user=user)
    ):
        raise NotFound("no such room")
    return room


def room_get_for_member(*, slug: str, user: AnyUser) -> Room:
    """The room, if ``user`` is a member of it (reading or writing its conversation)."""
    room = room_get(slug=slug, user=user)
    if not is_member(room=room, user=user):
        raise Forbidden("join the room first")
    return room


def message_get(*, message_id: str | int, user: AnyUser) -> Message:
    """A message in a room ``user`` belongs to; others get not_found."""
    pk = parse_message_id(message_id)
    message = (
        Message.objects.select_related(
            "room", "author", "reply_to", "reply_to__author", "generation"
        )
        .filter(pk=pk, room__memberships__user=user.pk)
        .first()
    )
    if message is None:
        raise NotFound("no such message")
    return message


def parse_message_id(value: object) -> int:
    """Message ids are opaque strings on the wire; inside they are positive integers."""
    if isinstance(value, bool):
        raise NotFound("no such message")
    if isinstance(value, int):
        pk = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        pk = int(value)
    else:
        raise NotFound("no such message")
    if pk <= 0:
        raise NotFound("no such message")
    return pk


def messages_page(
    *, room: Room, before: int | None, after: int | None, limit: int
) -> list[Message]:
    """Up to ``limit`` messages of ``room``, oldest first.

    With ``after``: the oldest messages after it (paging forward); otherwise the newest
    messages (before ``before`` when given).
    """
    qs = Message.objects.filter(room=room).select_related("author", "reply_to")
    if before is not None:
        qs = qs.filter(pk__lt=before)
    if after is not None:
        return list(qs.filter(pk__gt=after).order_by("id")[:limit])
    return list(reversed(qs.order_by("-id")[:limit]))


def latest_messages(*, room_id: int, limit: int) -> list[Message]:
    qs = Message.objects.filter(room_id=room_id).select_related("author", "reply_to", "room")
    return list(reversed(qs.order_by("-id")[:limit]))
