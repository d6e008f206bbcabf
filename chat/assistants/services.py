"""Writes for a room's assistants: create a room assistant, add a shared one, change
one, remove one (docs/protocol.md "Assistants").

The room's owners and staff write; every check is made before anything is stored, and a
change is told to open connections by the durable ``room`` event
(``chat.services.room_changed``), emitted after the commit.

Bad input is a ``BadRequest`` that says what is wrong: a handle that is not
``^[a-z][a-z0-9_-]{0,31}$`` or collides with a member, with ``assistant`` or with
another of the room's assistants; a provider that does not exist; a model its provider
does not list (asked through discovery, so an unreachable provider is named with its
reason); a temperature outside [0, 2]; max_tokens outside [1, 32768]; a second
``always``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, TypedDict

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from chat import selectors
from chat.assistants.providers import (
    ProviderError,
    default_model,
    list_models,
    provider,
    split_model,
)
from chat.errors import BadRequest, Forbidden, NotFound
from chat.models import Assistant, AssistantMode, Membership, Room, RoomAssistant
from chat.serializers import AssistantDict, assistant_to_dict
from chat.services import DEFAULT_HANDLE, SYSTEM_PROMPT_MAX, always_check, room_changed
from chat.text import clean_text

HANDLE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
HANDLE_RULE = "a lowercase letter, then up to 31 lowercase letters, digits, _ or -"
NAME_MAX = 60  # Assistant.name
AVATAR_MAX = 16  # Assistant.avatar: an emoji or a colour
VOICE_MAX = 80  # Assistant.voice
TEMPERATURE_MAX = 2.0
MAX_TOKENS_MAX = 32768

# The fields of an assistant a room owner may set (POST and PATCH).
SETTINGS = (
    "name",
    "avatar",
    "model",
    "system_prompt",
    "temperature",
    "max_tokens",
    "voice",
    "mode",
)


class AssistantSettingsDict(AssistantDict):
    """An assistant as ``GET /api/rooms/<slug>/assistants`` lists it: the room's view
    plus how it answers."""

    system_prompt: str
    temperature: float | None
    max_tokens: int | None
    voice: str


def assistant_settings_to_dict(placement: RoomAssistant) -> AssistantSettingsDict:
    a = placement.assistant
    return {
        **assistant_to_dict(placement, default_model=settings.LLM_MODEL),
        "system_prompt": a.system_prompt,
        "temperature": a.temperature,
        "max_tokens": a.max_tokens,
        "voice": a.voice,
    }


def assistants_of(*, room: Room) -> list[RoomAssistant]:
    """The room's placements with their assistants, in the order they were added."""
    return list(RoomAssistant.objects.filter(room=room).select_related("assistant"))


def shared_assistants() -> list[Assistant]:
    """The staff's assistants any room may add."""
    return list(Assistant.objects.filter(room__isnull=True).order_by("handle"))


class SharedDict(TypedDict):
    handle: str
    name: str
    avatar: str
    model: str


def shared_to_dict(a: Assistant) -> SharedDict:
    return {
        "handle": a.handle,
        "name": a.name,
        "avatar": a.avatar,
        "model": f"{a.provider}/{a.model or settings.LLM_MODEL}",
    }


# --- Checks ----------------------------------------------------------------------------------


def manager_check(*, room: Room, by: User) -> None:
    if not selectors.can_manage(room=room, user=by):
        raise Forbidden("only the room's owners can change its assistants")


def _handle(room: Room, value: object) -> str:
    handle = clean_text(value, field="handle", max_chars=32, single_line=True)
    if not HANDLE.fullmatch(handle):
        raise BadRequest(f"handle {handle!r} is not a handle: {HANDLE_RULE}")
    if handle == DEFAULT_HANDLE:
        raise BadRequest(f"the handle {DEFAULT_HANDLE!r} is reserved for a room's first assistant")
    if RoomAssistant.objects.filter(room=room, handle=handle).exists():
        raise BadRequest(f"this room already has an assistant @{handle}")
    if Membership.objects.filter(room=room, user__username__iexact=handle).exists():
        raise BadRequest(f"@{handle} is a member of this room: pick another handle")
    return handle


def _mode(value: object) -> str:
    if value not in AssistantMode.values:
        raise BadRequest(f"mode must be one of: {', '.join(AssistantMode.values)}")
    return str(value)


def _temperature(value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= TEMPERATURE_MAX
    ):
        raise BadRequest(f"temperature must be a number from 0 to {TEMPERATURE_MAX:g}")
    return float(value)


def _max_tokens(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS_MAX:
        raise BadRequest(f"max_tokens must be an integer from 1 to {MAX_TOKENS_MAX}")
    return value


async def model_check(value: object) -> tuple[str, str]:
    """``"<provider>/<model id>"`` → (provider, model), if the provider lists the model.

    Async: it may ask the provider (cached for PARLEY_MODELS_TTL), which must not hold the
    thread every sync view and ORM call of the process shares. The views await it and hand
    the result to the sync writes below (``model=``)."""
    name, model = split_model(value)
    config = await database_sync_to_async(provider)(name)
    if model == default_model(config) and model:
        return name, model
    try:
        listed = await list_models(config)
    except ProviderError as exc:
        raise BadRequest(
            f"could not check the model: provider {name!r} did not list its models: {exc.reason}"
        ) from None
    if model not in listed:
        raise BadRequest(f"provider {name!r} does not list a model {model!r} (GET /api/models)")
    return name, model


@dataclass
class _Settings:
    fields: dict[str, Any]
    mode: str | None


def _settings(data: dict[str, Any], *, creating: bool, model: tuple[str, str] | None) -> _Settings:
    """The settings in ``data``, each checked; nothing is stored here."""
    fields: dict[str, Any] = {}
    if "name" in data or creating:
        fields["name"] = clean_text(
            data.get("name"), field="name", max_chars=NAME_MAX, single_line=True, strip=True
        )
    for field, max_chars, one_line in (
        ("avatar", AVATAR_MAX, True),
        ("system_prompt", SYSTEM_PROMPT_MAX, False),
        ("voice", VOICE_MAX, True),
    ):
        if field in data:
            # Optional text: null or "" clears it.
            fields[field] = clean_text(
                data[field] if data[field] is not None else "",
                field=field,
                max_chars=max_chars,
                required=False,
                single_line=one_line,
                strip=one_line,
            )
    if "temperature" in data:
        fields["temperature"] = _temperature(data["temperature"])
    if "max_tokens" in data:
        fields["max_tokens"] = _max_tokens(data["max_tokens"])
    mode = _mode(data["mode"]) if "mode" in data else None
    # The model last: it may ask the provider, so only a body that is otherwise good waits.
    if "model" in data:
        # Checked by the caller (model_check), or here for callers outside a view.
        checked = model or async_to_sync(model_check)(data["model"])
        fields["provider"], fields["model"] = checked
    elif creating:
        fields["provider"], fields["model"] = "default", ""
    return _Settings(fields, mode)


def _unknown(data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(data) - set(allowed))
    if extra:
        raise BadRequest(f"unknown field {extra[0]!r} (fields: {', '.join(allowed)})")


def _placement(room: Room, handle: object) -> RoomAssistant:
    if not isinstance(handle, str) or not HANDLE.fullmatch(handle):
        raise NotFound("this room has no such assistant")
    found = RoomAssistant.objects.select_related("assistant").filter(room=room, handle=handle)
    placement = found.first()
    if placement is None:
        raise NotFound(f"this room has no assistant @{handle}")
    return placement


# --- Writes ----------------------------------------------------------------------------------


def assistant_create(
    *, room: Room, by: User, data: dict[str, Any], model: tuple[str, str] | None = None
) -> RoomAssistant:
    """A room assistant, made by one of the room's owners (or staff) and placed in it.
    ``model``: ``data["model"]`` as ``model_check`` passed it."""
    manager_check(room=room, by=by)
    _unknown(data, ("handle", *SETTINGS))
    handle = _handle(room, data.get("handle"))
    checked = _settings(data, creating=True, model=model)
    mode = checked.mode or AssistantMode.MENTION
    try:
        with transaction.atomic():
            if mode == AssistantMode.ALWAYS:
                always_check(room=room, keep=None)
            assistant = Assistant.objects.create(
                room=room, handle=handle, created_by=by, **checked.fields
            )
            placement = RoomAssistant.objects.create(
                room=room, assistant=assistant, handle=handle, mode=mode
            )
            room_changed(room_id=room.pk)
    except IntegrityError:
        # Another request took the handle (or the `always`) a moment ago.
        raise BadRequest(f"@{handle} or its mode was just taken in this room: try again") from None
    return placement


def assistant_add_shared(*, room: Room, by: User, handle: object, mode: object) -> RoomAssistant:
    """One of the staff's shared assistants joins the room, under its own handle."""
    manager_check(room=room, by=by)
    if not isinstance(handle, str) or not HANDLE.fullmatch(handle):
        raise BadRequest(f"shared must be the handle of a shared assistant: {HANDLE_RULE}")
    assistant = Assistant.objects.filter(room__isnull=True, handle=handle).first()
    if assistant is None:
        raise BadRequest(f"there is no shared assistant @{handle} (GET /api/assistants/shared)")
    if RoomAssistant.objects.filter(room=room, handle=handle).exists():
        raise BadRequest(f"this room already has an assistant @{handle}")
    if Membership.objects.filter(room=room, user__username__iexact=handle).exists():
        raise BadRequest(f"@{handle} is a member of this room: a shared assistant cannot join")
    chosen = _mode(AssistantMode.MENTION if mode is None else mode)
    try:
        with transaction.atomic():
            if chosen == AssistantMode.ALWAYS:
                always_check(room=room, keep=None)
            placement = RoomAssistant.objects.create(
                room=room, assistant=assistant, handle=handle, mode=chosen
            )
            room_changed(room_id=room.pk)
    except IntegrityError:
        raise BadRequest(f"@{handle} or its mode was just taken in this room: try again") from None
    return placement


def assistant_update(
    *,
    room: Room,
    by: User,
    handle: object,
    data: dict[str, Any],
    model: tuple[str, str] | None = None,
) -> RoomAssistant:
    """Change a room assistant's settings, or any placement's mode. A handle never
    changes; a shared assistant's settings are staff's (the admin), only its mode here
    is the room's."""
    manager_check(room=room, by=by)
    placement = _placement(room, handle)
    if "handle" in data and data["handle"] != placement.handle:
        raise BadRequest("an assistant's handle cannot change: remove it and create another")
    data = {k: v for k, v in data.items() if k != "handle"}
    _unknown(data, SETTINGS)
    shared = placement.assistant.room_id is None
    if shared and set(data) - {"mode"}:
        raise BadRequest(
            f"@{placement.handle} is a shared assistant: only its mode is this room's "
            "(staff change the rest in the admin)"
        )
    checked = _settings(data, creating=False, model=model)
    try:
        with transaction.atomic():
            if checked.mode is not None and checked.mode != placement.mode:
                if checked.mode == AssistantMode.ALWAYS:
                    always_check(room=room, keep=placement)
                placement.mode = checked.mode
                placement.save(update_fields=["mode"])
                if placement.handle == DEFAULT_HANDLE:
                    Room.objects.filter(pk=room.pk).update(assistant=checked.mode)
            if checked.fields:
                for name, value in checked.fields.items():
                    setattr(placement.assistant, name, value)
                placement.assistant.save(update_fields=list(checked.fields))
                if placement.handle == DEFAULT_HANDLE and "system_prompt" in checked.fields:
                    Room.objects.filter(pk=room.pk).update(
                        system_prompt=checked.fields["system_prompt"]
                    )
            if checked.fields or checked.mode is not None:
                room_changed(room_id=room.pk)
    except IntegrityError:
        raise BadRequest("another assistant was just set to answer every message") from None
    return placement


def assistant_remove(*, room: Room, by: User, handle: object) -> None:
    """The assistant leaves the room: a room assistant is deleted with it (its replies
    keep their handle and name), a shared one stays for other rooms."""
    manager_check(room=room, by=by)
    placement = _placement(room, handle)
    with transaction.atomic():
        if placement.assistant.room_id is None:
            placement.delete()
        else:
            placement.assistant.delete()  # its placement goes with it (CASCADE)
        if placement.handle == DEFAULT_HANDLE:
            # The legacy field reads "mention" once there is no @assistant (serializers).
            Room.objects.filter(pk=room.pk).update(assistant=AssistantMode.MENTION)
        room_changed(room_id=room.pk)
