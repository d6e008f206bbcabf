"""Reads: which rooms and messages a user may see."""

from __future__ import annotations

import re

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Case, OuterRef, Q, QuerySet, Subquery, Value, When

from chat.errors import BadRequest, Forbidden, NotFound
from chat.models import Membership, Message, Role, Room, Visibility
from chat.serializers import ROOM_PREFETCH

AnyUser = User | AnonymousUser

# What a Room.slug can be (a SlugField of max_length 80, so Django's validate_slug): any
# other name in a URL is no such room, answered before it reaches the database, where a
# NUL or a lone surrogate would be an error (PostgreSQL) rather than "not found".
_SLUG = re.compile(r"[-a-zA-Z0-9_]{1,80}")


def rooms_visible_to(*, user: AnyUser) -> QuerySet[Room]:
    """Public rooms and the private rooms ``user`` belongs to."""
    return (
        Room.objects.filter(Q(visibility=Visibility.PUBLIC) | Q(memberships__user=user.pk))
        .select_related("owner")
        .prefetch_related(*ROOM_PREFETCH)
        .distinct()
        .order_by("name", "id")
    )


def rooms_of(*, user: AnyUser) -> QuerySet[Room]:
    """The rooms ``user`` is a member of."""
    return (
        Room.objects.filter(memberships__user=user.pk)
        .select_related("owner")
        .prefetch_related(*ROOM_PREFETCH)
        .order_by("name")
    )


def room_members(*, room: Room, limit: int) -> tuple[list[User], int]:
    """Up to ``limit`` of the room's members, the owner first, then by name; and how many
    members it has in all."""
    members = User.objects.filter(memberships__room=room)
    first = members.order_by(
        Case(When(pk=room.owner_id, then=Value(0)), default=Value(1)), "username"
    )[:limit]
    return list(first), members.count()


def is_member(*, room: Room, user: AnyUser) -> bool:
    return Membership.objects.filter(room=room, user=user.pk).exists()


def is_owner(*, room: Room, user: AnyUser) -> bool:
    """``user`` owns ``room``: its creator (``Room.owner``), or a member the owner made
    an owner too (``Membership.role`` = owner). Owners change the room's settings,
    assistants and members, and control any reply in it."""
    if not user.is_authenticated:
        return False
    if room.owner_id == user.pk:
        return True
    return Membership.objects.filter(room=room, user=user.pk, role=Membership.Role.OWNER).exists()


def can_manage(*, room: Room, user: AnyUser) -> bool:
    """``user`` may change ``room``'s settings, assistants and members: an owner or staff."""
    return bool(user.is_authenticated and (user.is_staff or is_owner(room=room, user=user)))


def room_member_roles(*, room: Room, limit: int) -> tuple[list[tuple[str, str]], int]:
    """Up to ``limit`` of the room's members as (username, role), the creator first, then
    owners, then by name; and how many members it has in all. The creator is always
    ``owner`` whatever their membership row says."""
    rows = (
        Membership.objects.filter(room=room)
        .order_by(
            Case(When(user_id=room.owner_id, then=Value(0)), default=Value(1)),
            "role",  # "member" sorts after "owner"
            "user__username",
        )
        .values_list("user_id", "user__username", "role")
    )
    found = [
        (name, Membership.Role.OWNER if uid == room.owner_id else role)
        for uid, name, role in rows[:limit]
    ]
    return found, Membership.objects.filter(room=room).count()


def room_get(*, slug: str, user: AnyUser) -> Room:
    """The room, if ``user`` may see it; a private room is invisible to non-members."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise NotFound("no such room")
    room = (
        Room.objects.select_related("owner")
        .prefetch_related(*ROOM_PREFETCH)
        .filter(slug=slug)
        .first()
    )
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
            "room", "author", "reply_to", "reply_to__author", "generation", "generation__stopped_by"
        )
        .filter(pk=pk, room__memberships__user=user.pk)
        .first()
    )
    if message is None:
        raise NotFound("no such message")
    return message


def can_control_reply(
    *, user: AnyUser, message: Message, member: bool, owner: bool = False
) -> bool:
    """Who may pause, resume or stop a reply (docs/protocol.md, "Who controls a reply").

    Staff may control any reply, in any room, whether or not they are members of it (they
    moderate the whole server). Otherwise the asker (the author of the message the reply
    answers) and the room's owners (its creator, and ``owner`` as a member whose
    membership's role is owner) may, while they are members of the room.
    """
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_staff:
        return True
    asker_id = message.reply_to.author_id if message.reply_to else None
    return member and (owner or user.pk in (asker_id, message.room.owner_id))


def reply_for_control(*, message_id: object, user: AnyUser) -> Message:
    """The reply ``user`` asks to control, if ``can_control_reply`` lets them.

    The one check behind every control (WebSocket, HTTP, the admin's "Stop reply"). A
    non-staff user outside the room gets not_found, as for reading the message; a member
    who is neither asker nor owner gets forbidden.
    """
    return _reply_allowed(
        message_id=message_id,
        user=user,
        related=("room", "author", "reply_to", "generation"),
        not_reply="only assistant replies can be controlled",
        forbidden="only the asker, the room owner or staff can control this reply",
    )


# Who may regenerate a reply or pick its version, in its words (``reply_for_versions``,
# and chat/replies/db.py ``create_version``, which reads the reply and who may in one query).
VERSIONS_RELATED = ("room", "reply_to", "generation")
_VERSIONS_NOT_REPLY = "only an assistant's reply has versions; regenerate its reply"
_VERSIONS_FORBIDDEN = "only the asker, the room's owners or staff can do this to a reply"

# The annotation ``with_member_role`` adds to a message: the user's role in its room.
MEMBER_ROLE = "member_role"


def reply_for_versions(*, message_id: object, user: AnyUser) -> Message:
    """The reply (or later version of one) ``user`` asks to regenerate or to pick, if
    they may: the rule of ``can_control_reply`` (the asker, the room's owners, staff), the
    same for every version of a reply (they answer the same message). A member's message
    is ``bad_request``; someone outside the room gets not_found."""
    return _reply_allowed(
        message_id=message_id,
        user=user,
        related=VERSIONS_RELATED,
        not_reply=_VERSIONS_NOT_REPLY,
        forbidden=_VERSIONS_FORBIDDEN,
    )


def versions_allowed(*, message: Message, user: AnyUser) -> None:
    """``reply_for_versions``' rule for ``message``, read with ``VERSIONS_RELATED`` and
    ``with_member_role(user)``: raises what it would raise."""
    _check_reply(
        message=message, user=user, not_reply=_VERSIONS_NOT_REPLY, forbidden=_VERSIONS_FORBIDDEN
    )


def with_member_role(messages: QuerySet[Message], *, user: AnyUser) -> QuerySet[Message]:
    """``messages``, each with ``user``'s role in its room (``MEMBER_ROLE``; None: not a
    member) read in the same query: who may act on a message costs no query of its own."""
    role = Membership.objects.filter(room=OuterRef("room_id"), user=user.pk).values("role")
    return messages.annotate(**{MEMBER_ROLE: Subquery(role[:1])})


def _reply_allowed(
    *,
    message_id: object,
    user: AnyUser,
    related: tuple[str, ...],
    not_reply: str,
    forbidden: str,
) -> Message:
    """The assistant reply ``message_id`` if ``can_control_reply`` lets ``user`` act on it
    (the errors say what was refused, in the caller's words)."""
    pk = parse_message_id(message_id if isinstance(message_id, str | int) else "")
    found = with_member_role(Message.objects.select_related(*related).filter(pk=pk), user=user)
    message = next(iter(found), None)
    if message is None:
        raise NotFound("no such message")
    _check_reply(message=message, user=user, not_reply=not_reply, forbidden=forbidden)
    return message


def _check_reply(*, message: Message, user: AnyUser, not_reply: str, forbidden: str) -> None:
    role: str | None = getattr(message, MEMBER_ROLE)
    member = role is not None
    if not member and not user.is_staff:
        raise NotFound("no such message")
    if message.role != Role.ASSISTANT:
        raise BadRequest(not_reply)
    owner = role == Membership.Role.OWNER
    if not can_control_reply(user=user, message=message, member=member, owner=owner):
        raise Forbidden(forbidden)


def reply_versions(*, message: Message) -> list[Message]:
    """The versions of the reply ``message`` belongs to (it, or the reply it is a later
    version of), first to last."""
    head_id = message.version_of_id or message.pk
    return list(
        Message.objects.filter(Q(pk=head_id) | Q(version_of=head_id)).order_by("version", "id")
    )


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


# What ``message_to_dict`` reads besides the message, joined in the same query: a page of
# messages costs one query however many ended replies it holds.
_WIRE_RELATED = ("author", "reply_to", "generation", "generation__stopped_by")


def messages_page(
    *, room: Room, before: int | None, after: int | None, limit: int
) -> list[Message]:
    """Up to ``limit`` messages of ``room``, oldest first.

    With ``after``: the oldest messages after it (paging forward); otherwise the newest
    messages (before ``before`` when given).
    """
    qs = Message.objects.filter(room=room).select_related(*_WIRE_RELATED)
    if before is not None:
        qs = qs.filter(pk__lt=before)
    if after is not None:
        return list(qs.filter(pk__gt=after).order_by("id")[:limit])
    return list(reversed(qs.order_by("-id")[:limit]))


def latest_messages(*, room_id: int, limit: int) -> list[Message]:
    qs = Message.objects.filter(room_id=room_id).select_related("room", *_WIRE_RELATED)
    return list(reversed(qs.order_by("-id")[:limit]))


def latest_message_ids(*, room_id: int, limit: int) -> list[str]:
    """The ids (as on the wire) of the room's latest ``limit`` messages, oldest first."""
    ids = Message.objects.filter(room_id=room_id).order_by("-id").values_list("pk", flat=True)
    return [str(pk) for pk in reversed(ids[:limit])]


def room_message(*, room_id: int, message_id: int) -> Message | None:
    """One message of the room, with what its wire dict reads."""
    return (
        Message.objects.filter(room_id=room_id, pk=message_id)
        .select_related("room", *_WIRE_RELATED)
        .first()
    )
