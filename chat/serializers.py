"""Wire shapes of docs/protocol.md "Objects": the Room and Message objects."""

from __future__ import annotations

from typing import TypedDict

from chat.models import Message, Role, Room

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
    if message.role == Role.ASSISTANT:
        author: str | None = ASSISTANT_NAME
    else:
        author = message.author.get_username() if message.author is not None else None
    return {
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
