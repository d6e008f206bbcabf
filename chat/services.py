"""Writes for rooms, memberships and invites.

Named ``<thing>_<verb>`` with keyword-only arguments (STYLE.md). Message sending and
reply control live in ``chat/replies.py``; both are called by every transport. A room's
assistants are written by ``chat/assistants/services.py``.

Every change to what the Room object shows (settings, assistants) or to who owns the room
is told to open connections by a durable ``room`` event (``room_changed``), emitted once
the change is committed.
"""

from __future__ import annotations

import datetime
import logging
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from chat import events, selectors
from chat.errors import BadRequest, Forbidden, NotFound
from chat.models import (
    Assistant,
    AssistantMode,
    Invite,
    Membership,
    Room,
    RoomAssistant,
    Visibility,
    VoiceMode,
)
from chat.serializers import ROOM_PREFETCH, room_to_dict
from chat.text import clean_text

logger = logging.getLogger(__name__)

# The handle of the assistant every room starts with (and the name "assistant" is
# reserved: no member or other assistant can take it in a room).
DEFAULT_HANDLE = "assistant"

NAME_MAX = 120
SYSTEM_PROMPT_MAX = 4000
# Django's User.username max_length: a longer name cannot exist.
USERNAME_MAX = 150


def _choice(
    value: object,
    *,
    field: str,
    choices: type[Visibility | AssistantMode | VoiceMode],
    default: str,
) -> str:
    if value is None and default:
        return default
    if not isinstance(value, str) or value not in choices.values:
        allowed = ", ".join(choices.values)
        raise BadRequest(f"{field} must be one of: {allowed}")
    return value


def room_create(
    *,
    owner: User,
    name: object,
    visibility: object = None,
    assistant: object = None,
    voice: object = None,
    system_prompt: object = None,
    prompt_heard_text: object = None,
) -> Room:
    """Create a room owned (and joined) by ``owner``; its slug comes from its name."""
    if prompt_heard_text is not None and not isinstance(prompt_heard_text, bool):
        raise BadRequest("prompt_heard_text must be true or false")
    name = clean_text(name, field="name", max_chars=NAME_MAX, single_line=True, strip=True)
    system_prompt = clean_text(
        "" if system_prompt is None else system_prompt,
        field="system_prompt",
        max_chars=SYSTEM_PROMPT_MAX,
        required=False,
    )
    fields = {
        "name": name,
        "owner": owner,
        "visibility": _choice(
            visibility, field="visibility", choices=Visibility, default=Visibility.PUBLIC
        ),
        "assistant": _choice(
            assistant, field="assistant", choices=AssistantMode, default=AssistantMode.ALWAYS
        ),
        "voice": _choice(voice, field="voice", choices=VoiceMode, default=VoiceMode.OFF),
        "system_prompt": system_prompt,
        "prompt_heard_text": True if prompt_heard_text is None else prompt_heard_text,
    }
    base = slugify(name)[:60] or "room"
    for attempt in range(8):
        slug = base if attempt == 0 else f"{base}-{secrets.token_hex(3)}"
        try:
            with transaction.atomic():
                room = Room.objects.create(slug=slug, **fields)
                Membership.objects.create(room=room, user=owner, role=Membership.Role.OWNER)
                _add_default_assistant(room)
                return room
        except IntegrityError:
            continue
    raise BadRequest("could not find a free slug for that name")  # pragma: no cover


def _add_default_assistant(room: Room) -> None:
    """Every new room starts as every room did before assistants: one assistant, handle
    ``assistant``, on the default provider, with the room's mode and system prompt (the
    same as migration 0007 made of each existing room)."""
    assistant = Assistant.objects.create(
        room=room,
        handle=DEFAULT_HANDLE,
        name="Assistant",
        provider="default",
        system_prompt=room.system_prompt,
    )
    RoomAssistant.objects.create(
        room=room, assistant=assistant, handle=DEFAULT_HANDLE, mode=room.assistant
    )


def room_join(*, room: Room, user: User) -> Membership:
    """Join a public room; joining twice is a no-op."""
    if room.visibility != Visibility.PUBLIC:
        # Private rooms are invisible to non-members; members joining again is harmless.
        membership = Membership.objects.filter(room=room, user=user).first()
        if membership is None:
            raise NotFound("no such room")
        return membership
    membership, _ = Membership.objects.get_or_create(room=room, user=user)
    return membership


def room_member_add(*, room: Room, by: User, username: object) -> Membership:
    """An owner (or staff) adds ``username`` to ``room``.

    A user whose name is the handle of one of the room's assistants cannot be added: an
    ``@name`` in the room must mean one of them only."""
    if not selectors.can_manage(room=room, user=by):
        raise Forbidden("only the room's owners can add members")
    username = clean_text(username, field="username", max_chars=USERNAME_MAX, single_line=True)
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise NotFound(f"no user named {username!r}")
    if RoomAssistant.objects.filter(room=room, handle__iexact=username).exists():
        raise BadRequest(
            f"{username!r} is the handle of an assistant in this room: "
            "a member cannot have an assistant's name here"
        )
    membership, _ = Membership.objects.get_or_create(room=room, user=user)
    return membership


def room_member_role(*, room: Room, by: User, username: object, role: object) -> Membership:
    """An owner (or staff) makes a member an owner too, or an owner a plain member again.

    Co-owners: ``Membership.role`` = owner gives the rights of ``Room.owner`` (settings,
    assistants, members, controlling any reply). The room's creator stays its owner and
    cannot be made a plain member (as they cannot be removed)."""
    if not selectors.can_manage(room=room, user=by):
        raise Forbidden("only the room's owners can change members' roles")
    username = clean_text(username, field="username", max_chars=USERNAME_MAX, single_line=True)
    if role not in Membership.Role.values:
        raise BadRequest(f"role must be one of: {', '.join(Membership.Role.values)}")
    with transaction.atomic():
        membership = (
            Membership.objects.select_for_update()
            .filter(room=room, user__username=username)
            .first()
        )
        if membership is None:
            raise NotFound(f"{username!r} is not a member of this room")
        if membership.user_id == room.owner_id and role != Membership.Role.OWNER:
            raise Forbidden("the room's creator stays an owner")
        if membership.role != role:
            membership.role = str(role)
            membership.save(update_fields=["role"])
            room_changed(room_id=room.pk)
    return membership


def room_update(*, room: Room, by: User, data: dict[str, Any]) -> Room:
    """An owner (or staff) changes the room's settings: ``name``, ``visibility``,
    ``voice``, ``prompt_heard_text``, and the legacy ``assistant`` (mode) and
    ``system_prompt``, which are the ``assistant``-handle assistant's (Room.assistant
    and Room.system_prompt are written too, for a process of the release before).

    Nothing is stored unless every field is valid. The slug never changes (links)."""
    if not selectors.can_manage(room=room, user=by):
        raise Forbidden("only the room's owners can change its settings")
    known = {"name", "visibility", "voice", "prompt_heard_text", "assistant", "system_prompt"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadRequest(f"unknown setting: {unknown[0]!r} (settings: {', '.join(sorted(known))})")
    fields: dict[str, Any] = {}
    if "name" in data:
        fields["name"] = clean_text(
            data["name"], field="name", max_chars=NAME_MAX, single_line=True, strip=True
        )
    if "visibility" in data:
        fields["visibility"] = _choice(
            data["visibility"], field="visibility", choices=Visibility, default=""
        )
    if "voice" in data:
        fields["voice"] = _choice(data["voice"], field="voice", choices=VoiceMode, default="")
    if "prompt_heard_text" in data:
        if not isinstance(data["prompt_heard_text"], bool):
            raise BadRequest("prompt_heard_text must be true or false")
        fields["prompt_heard_text"] = data["prompt_heard_text"]
    mode = None
    if "assistant" in data:
        mode = _choice(data["assistant"], field="assistant", choices=AssistantMode, default="")
    prompt = None
    if "system_prompt" in data:
        prompt = clean_text(
            data["system_prompt"],
            field="system_prompt",
            max_chars=SYSTEM_PROMPT_MAX,
            required=False,
        )
    with transaction.atomic():
        placement = None
        if mode is not None or prompt is not None:
            placement = (
                RoomAssistant.objects.select_related("assistant")
                .filter(room=room, handle=DEFAULT_HANDLE)
                .first()
            )
            if placement is None:
                raise BadRequest(
                    "this room has no @assistant: set its assistants' modes and prompts "
                    "with /api/rooms/<slug>/assistants"
                )
            if prompt is not None and placement.assistant.room_id is None:
                raise BadRequest(
                    "this room's @assistant is a shared assistant: its prompt is staff's"
                )
        if mode is not None and placement is not None:
            fields["assistant"] = mode
            if mode == AssistantMode.ALWAYS:
                always_check(room=room, keep=placement)
            placement.mode = mode
            placement.save(update_fields=["mode"])
        if prompt is not None and placement is not None:
            fields["system_prompt"] = prompt
            placement.assistant.system_prompt = prompt
            placement.assistant.save(update_fields=["system_prompt"])
        if fields:
            for name, value in fields.items():
                setattr(room, name, value)
            room.save(update_fields=list(fields))
        if fields or mode is not None or prompt is not None:
            room_changed(room_id=room.pk)
    return room


def always_check(*, room: Room, keep: RoomAssistant | None) -> None:
    """At most one assistant answers every message: refuse another, naming the one that
    does now (switching is two steps, so nobody loses their ``always`` by a slip)."""
    current = RoomAssistant.objects.filter(room=room, mode=AssistantMode.ALWAYS)
    if keep is not None:
        current = current.exclude(pk=keep.pk)
    other = current.first()
    if other is not None:
        raise BadRequest(
            f"@{other.handle} answers every message in this room now; set it to "
            '"mention" first (at most one assistant answers every message)'
        )


def room_changed(*, room_id: int) -> None:
    """Emit the durable ``room`` event (the Room object as it is now) once the current
    transaction commits, so open pages update live. The room is read after the commit,
    so the event shows what a reload would."""
    transaction.on_commit(lambda: _room_event(room_id))


def _room_event(room_id: int) -> None:
    room = Room.objects.select_related("owner").prefetch_related(*ROOM_PREFETCH).get(pk=room_id)
    body = events.room_body(room_to_dict(room, head=0))
    try:
        async_to_sync(events.room_event_emit)(room_id=room_id, body=body)
    except events.StoreUnavailable:
        # The change is stored; pages that missed the event see it on their next load
        # or reconnect (a hello carries the room as it is).
        logger.warning("room %s: the room event could not be recorded", room_id)


# --- Invites -----------------------------------------------------------------------------


class InviteGone(NotFound):
    """An invite link that expired or was revoked (the page answers 410)."""

    code = "gone"
    status = 410


def invite_create(*, room: Room, by: User) -> Invite:
    """An owner (or staff) makes a link that lets a signed-in user join ``room`` (private
    rooms too) for PARLEY_INVITE_DAYS; ``secrets.token_urlsafe`` makes its token."""
    if not selectors.can_manage(room=room, user=by):
        raise Forbidden("only the room's owners can make invite links")
    expires = timezone.now() + datetime.timedelta(days=settings.PARLEY_INVITE_DAYS)
    return Invite.objects.create(
        room=room, token=secrets.token_urlsafe(24), created_by=by, expires=expires
    )


def invites_live(*, room: Room, by: User) -> list[Invite]:
    """The room's invites that still work, newest first (owners and staff only: a token
    is a key to the room)."""
    if not selectors.can_manage(room=room, user=by):
        raise Forbidden("only the room's owners can see invite links")
    return list(
        Invite.objects.filter(room=room, revoked=False, expires__gt=timezone.now()).order_by(
            "-created", "-id"
        )
    )


# What secrets.token_urlsafe makes: any other token in a URL is no such invite, answered
# before the database (where a NUL would be an error on PostgreSQL, not "not found").
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def invite_revoke(*, room: Room, by: User, token: str) -> None:
    if not selectors.can_manage(room=room, user=by):
        raise Forbidden("only the room's owners can revoke invite links")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise NotFound("no such invite")
    if not Invite.objects.filter(room=room, token=token).update(revoked=True):
        raise NotFound("no such invite")


def invite_accept(*, token: str, user: User) -> Room:
    """``user`` opens an invite link: they join its room (a member already stays one).
    ``NotFound`` for no such link, ``InviteGone`` for an expired or revoked one."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise NotFound("there is no such invite link")
    invite = Invite.objects.select_related("room").filter(token=token).first()
    if invite is None:
        raise NotFound("there is no such invite link")
    if invite.revoked:
        raise InviteGone("this invite link was revoked: ask the room's owner for a new one")
    if invite.expires <= timezone.now():
        raise InviteGone("this invite link has expired: ask the room's owner for a new one")
    if RoomAssistant.objects.filter(room=invite.room, handle__iexact=user.get_username()).exists():
        raise BadRequest("your username is the handle of an assistant in this room")
    Membership.objects.get_or_create(room=invite.room, user=user)
    return invite.room


def room_leave(*, room: Room, user: User) -> None:
    """``user`` leaves ``room``; leaving a room one is not in is a no-op.

    The owner cannot leave: a room keeps its owner (who can remove everyone else).
    The member's live connections lose the room at the next access check
    (chat/events/delivery/access.py: closed with 4403 within PARLEY_RESYNC_INTERVAL).
    """
    if room.owner_id == user.pk:
        raise Forbidden("the owner cannot leave their own room")
    Membership.objects.filter(room=room, user=user).delete()


def room_member_remove(*, room: Room, by: User, username: object) -> None:
    """The owner (or staff) removes ``username`` from ``room``.

    Their live connections are closed with 4403 at the next access check, as for leaving.
    """
    if not selectors.can_manage(room=room, user=by):
        raise Forbidden("only the room's owners can remove members")
    username = clean_text(username, field="username", max_chars=USERNAME_MAX, single_line=True)
    membership = (
        Membership.objects.filter(room=room, user__username=username).select_related("user").first()
    )
    if membership is None:
        raise NotFound(f"{username!r} is not a member of this room")
    if membership.user_id == room.owner_id:
        raise Forbidden("the room's owner cannot be removed")
    membership.delete()


class AdminPassword(StrEnum):
    """What ``bootstrap_ensure`` did with the admin's password (the command says so)."""

    GENERATED = "generated"  # a new admin, with a new random password: print it, once
    FROM_ENV = "from_env"  # set (on a new or an existing admin) from the given password
    UNCHANGED = "unchanged"  # the admin existed and no password was given


@dataclass(frozen=True)
class Bootstrap:
    lobby: Room
    password: AdminPassword
    generated: str | None = None  # the generated password, only when GENERATED


def bootstrap_ensure(*, admin_password: str | None) -> Bootstrap:
    """Make sure the superuser ``admin`` and the public room "Lobby" exist.

    Says what became of the admin's password: a generated one is returned (to be printed
    once); an existing admin keeps theirs unless ``admin_password`` is given.
    Every user joins the Lobby on sign-up, so a newcomer has somewhere to talk.
    """
    User = get_user_model()
    generated = None
    outcome = AdminPassword.FROM_ENV if admin_password else AdminPassword.UNCHANGED
    admin = User.objects.filter(username="admin").first()
    if admin is None:
        password = admin_password or secrets.token_urlsafe(12)
        if not admin_password:
            generated, outcome = password, AdminPassword.GENERATED
        admin = User.objects.create_superuser("admin", "", password)
    elif admin_password:
        admin.set_password(admin_password)
        admin.save(update_fields=["password"])
    lobby = Room.objects.filter(slug="lobby").first()
    if lobby is None:
        lobby = room_create(
            owner=admin, name="Lobby", visibility=Visibility.PUBLIC, assistant=AssistantMode.ALWAYS
        )
    return Bootstrap(lobby=lobby, password=outcome, generated=generated)
