"""Wire shapes of docs/protocol.md "Objects": the Room and Message objects."""

from __future__ import annotations

from typing import NotRequired, TypedDict

from chat.models import TERMINAL_STATUSES, Generation, Message, Role, Room

ASSISTANT_NAME = "assistant"


class RoomDict(TypedDict):
    slug: str
    name: str
    owner: str
    visibility: str
    assistant: str
    voice: str
    prompt_heard_text: bool
    head: int


class MessageDict(TypedDict):
    id: str
    room: str
    role: str
    author: str | None
    text: str
    status: str
    reply_to: str | None
    client_id: str | None
    input: str
    created: str
    # Extension, on an assistant reply that has ended: how it ended, as its terminal
    # `generation` event said (who stopped it, the reason, the metrics), so the message
    # reads the same however it arrived (docs/protocol.md "Objects").
    by: NotRequired[str | None]
    reason: NotRequired[str | None]
    metrics: NotRequired[dict[str, float | int | None] | None]


# The fields above that only an ended reply carries.
ENDING_FIELDS = ("by", "reason", "metrics")


def room_to_dict(room: Room, *, head: int) -> RoomDict:
    return {
        "slug": room.slug,
        "name": room.name,
        "owner": room.owner.get_username(),
        "visibility": room.visibility,
        "assistant": room.assistant,
        "voice": room.voice,
        "prompt_heard_text": room.prompt_heard_text,
        "head": head,
    }


def message_to_dict(message: Message, *, room_slug: str | None = None) -> MessageDict:
    """The wire Message. An ended reply also reads its generation record: select it with
    the message (``select_related("generation", "generation__stopped_by")``), or this is a
    query per reply."""
    if message.role == Role.ASSISTANT:
        author: str | None = ASSISTANT_NAME
    else:
        author = message.author.get_username() if message.author is not None else None
    body: MessageDict = {
        "id": str(message.pk),
        "room": room_slug if room_slug is not None else message.room.slug,
        "role": message.role,
        "author": author,
        "text": message.text,
        "status": message.status,
        "reply_to": str(message.reply_to_id) if message.reply_to_id else None,
        "client_id": message.client_id or None,
        "input": message.input,
        "created": message.created.isoformat().replace("+00:00", "Z"),
    }
    if message.role == Role.ASSISTANT and message.status in TERMINAL_STATUSES:
        try:
            gen = message.generation
        except Generation.DoesNotExist:
            gen = None
        by = gen.stopped_by if gen is not None and gen.stopped_by_id else None
        body["by"] = by.get_username() if by is not None else None
        body["reason"] = (gen.reason or None) if gen is not None else None
        body["metrics"] = gen.metrics if gen is not None else None
    return body
