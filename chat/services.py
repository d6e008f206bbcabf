"""Writes for rooms and memberships.

Named ``<thing>_<verb>`` with keyword-only arguments (STYLE.md). Message sending and
reply control live in ``chat/replies.py``; both are called by every transport.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from chat.errors import BadRequest, Forbidden, NotFound
from chat.models import (
    Assistant,
    AssistantMode,
    Membership,
    Room,
    RoomAssistant,
    Visibility,
    VoiceMode,
)
from chat.text import clean_text

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
    if value is None:
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
    """The owner (or staff) adds ``username`` to ``room``."""
    if room.owner_id != by.pk and not getattr(by, "is_staff", False):
        raise Forbidden("only the room's owner can add members")
    username = clean_text(username, field="username", max_chars=USERNAME_MAX, single_line=True)
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise NotFound(f"no user named {username!r}")
    membership, _ = Membership.objects.get_or_create(room=room, user=user)
    return membership


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
    if room.owner_id != by.pk and not getattr(by, "is_staff", False):
        raise Forbidden("only the room's owner can remove members")
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
