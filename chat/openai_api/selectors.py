"""Reads for the OpenAI-compatible API: which models a user may ask, and what a model id
and a response id name.

A model is a room's assistant: ``parley/<room slug>`` its default one (the assistant
that would answer a message mentioning nobody, with ``ask_ai``: the room's ``always``
assistant, else ``@assistant``, else its first), ``parley/<room slug>/<handle>`` each
named one. The user may ask the assistants of the rooms they are a member of (a send
needs membership); any other id, a room they cannot see included, is ``model_not_found``.

A response id is ``resp_`` and the reply's Parley message id (``chat.completion``s are
``chatcmpl-`` and the same id): reversible, so ``GET /v1/responses/{id}`` reads the reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.contrib.auth.models import User

from chat import selectors
from chat.assistants.routing import route
from chat.errors import ParleyError
from chat.models import Message, Role, Room, RoomAssistant
from chat.openai_api.errors import OpenAIError, model_not_found

PREFIX = "parley"
_MODEL = re.compile(r"parley/([A-Za-z0-9_-]{1,100})(?:/([A-Za-z0-9_-]{1,100}))?")
RESPONSE_PREFIX = "resp_"
COMPLETION_PREFIX = "chatcmpl-"
_RESPONSE = re.compile(r"resp_([1-9][0-9]{0,17})")


@dataclass(frozen=True)
class Model:
    """A model id as a room and the assistant it asks."""

    id: str
    room: Room
    handle: str


def default_placement(placements: list[RoomAssistant]) -> RoomAssistant | None:
    found = route("", placements, ask_ai=True)
    return found[0] if found else None


def model_ids(room: Room) -> list[str]:
    """The model ids of ``room`` (its assistants prefetched, room_assistants__assistant)."""
    placements = sorted(room.room_assistants.all(), key=lambda p: p.pk)
    if not placements:
        return []
    return [f"{PREFIX}/{room.slug}"] + [f"{PREFIX}/{room.slug}/{p.handle}" for p in placements]


def models_for(*, user: User) -> list[tuple[str, Room]]:
    """Every model ``user`` may ask, room by room (the rooms they belong to, by name)."""
    return [
        (model_id, room) for room in selectors.rooms_of(user=user) for model_id in model_ids(room)
    ]


def model_resolve(*, user: User, model: object) -> Model:
    """The room and assistant ``model`` names, if ``user`` may ask it; else 404."""
    if not isinstance(model, str):
        raise OpenAIError("model must be a string", param="model", code="invalid_type")
    match = _MODEL.fullmatch(model)
    if match is None:
        raise model_not_found(model)
    slug, handle = match.groups()
    try:
        room = selectors.room_get_for_member(slug=slug, user=user)
    except ParleyError as exc:  # no such room, or not theirs: not a model they can see
        raise model_not_found(model) from exc
    placements = list(RoomAssistant.objects.filter(room=room).order_by("id"))
    if handle is None:
        chosen = default_placement(placements)
    else:
        chosen = next((p for p in placements if p.handle.lower() == handle.lower()), None)
    if chosen is None:
        raise model_not_found(model)
    return Model(id=model, room=room, handle=chosen.handle)


def response_not_found(response_id: str) -> OpenAIError:
    return OpenAIError(
        f"No response found with id '{response_id[:100]}'.",
        param="response_id",
        code="not_found",
        status=404,
    )


def response_message_id(response_id: str) -> int:
    """The Parley message id in a response id (``resp_<id>``); 404 for anything else."""
    match = _RESPONSE.fullmatch(response_id)
    if match is None:
        raise response_not_found(response_id)
    return int(match.group(1))


def reply_get(*, user: User, response_id: str) -> Message:
    """The assistant reply a response id names, in a room ``user`` belongs to; else 404."""
    pk = response_message_id(response_id)
    try:
        message = selectors.message_get(message_id=pk, user=user)
    except ParleyError:
        message = None
    if message is None or message.role != Role.ASSISTANT:
        raise response_not_found(response_id)
    return message
