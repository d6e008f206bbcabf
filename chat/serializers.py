"""Wire shapes of docs/protocol.md "Objects": the Room and Message objects."""

from __future__ import annotations

from typing import NotRequired, TypedDict

from chat.models import (
    TERMINAL_STATUSES,
    AssistantMode,
    Generation,
    Message,
    Role,
    Room,
    RoomAssistant,
)

ASSISTANT_NAME = "assistant"
# Which provider a reply's model is named under when its record predates providers.
DEFAULT_PROVIDER = "default"


class AssistantDict(TypedDict):
    """An assistant as a room lists it (docs/protocol.md "Assistants")."""

    handle: str
    name: str
    avatar: str
    model: str  # "<provider>/<model id>"
    mode: str  # "always" | "mention"
    shared: bool  # staff's, added to this room; else the room's own


class ReplyAssistantDict(TypedDict):
    """Which assistant wrote a reply, as it was then."""

    handle: str
    name: str
    model: str


class RoomDict(TypedDict):
    slug: str
    name: str
    owner: str
    visibility: str
    assistant: str
    voice: str
    prompt_heard_text: bool
    head: int
    # Extension: the room's assistants, in the order they were added.
    assistants: list[AssistantDict]


class RatingCounts(TypedDict):
    """A reply's ratings: how many members gave it a thumbs up, and down."""

    up: int
    down: int


class MessageDict(TypedDict):
    id: str
    room: str
    role: str
    author: str | None
    # Absent from a deleted message (a tombstone): its text is never sent again.
    text: NotRequired[str]
    status: str
    reply_to: str | None
    client_id: str | None
    input: str
    created: str
    # Extension, on an assistant's message: which assistant wrote it.
    assistant: NotRequired[ReplyAssistantDict]
    # Extension, on an assistant reply that has ended: how it ended, as its terminal
    # `generation` event said (who stopped it, the reason, the metrics), so the message
    # reads the same however it arrived (docs/protocol.md "Objects").
    by: NotRequired[str | None]
    reason: NotRequired[str | None]
    metrics: NotRequired[dict[str, float | int | None] | None]
    # Extension, versions of a reply (docs/protocol.md "Versions of a reply"): a later
    # version names the reply it is a version of and its number; the reply itself, once
    # it has more than one, says how many and which is current (a message id).
    version_of: NotRequired[str]
    version: NotRequired[int]
    versions: NotRequired[int]
    current: NotRequired[str]
    # Extensions (issue 19): once edited, once deleted (then no `text`), once rated.
    edited: NotRequired[bool]
    deleted: NotRequired[bool]
    rating: NotRequired[RatingCounts]


# The fields above that only an ended reply carries.
ENDING_FIELDS = ("by", "reason", "metrics")


def assistant_to_dict(placement: RoomAssistant, *, default_model: str) -> AssistantDict:
    """``placement`` with its assistant selected; ``default_model`` names the model of an
    assistant that has none of its own (the default provider's LLM_MODEL)."""
    assistant = placement.assistant
    return {
        "handle": placement.handle,
        "name": assistant.name,
        "avatar": assistant.avatar,
        "model": f"{assistant.provider}/{assistant.model or default_model}",
        "mode": placement.mode,
        "shared": assistant.room_id is None,
    }


def room_to_dict(room: Room, *, head: int) -> RoomDict:
    """The wire Room. Its assistants are read from ``room.room_assistants``: prefetch them
    (``prefetch_related(*ROOM_PREFETCH)``), or this is a query per room, and one that an
    async caller cannot make."""
    from django.conf import settings

    placements = list(room.room_assistants.all())
    assistants = [assistant_to_dict(p, default_model=settings.LLM_MODEL) for p in placements]
    # `assistant` (always / mention) and `system_prompt` are the `assistant` handle's,
    # as they were before a room had several (docs/protocol.md "Assistants").
    legacy = next((p for p in placements if p.handle == ASSISTANT_NAME), None)
    return {
        "slug": room.slug,
        "name": room.name,
        "owner": room.owner.get_username(),
        "visibility": room.visibility,
        "assistant": legacy.mode if legacy is not None else AssistantMode.MENTION,
        "voice": room.voice,
        "prompt_heard_text": room.prompt_heard_text,
        "head": head,
        "assistants": assistants,
    }


# What room_to_dict reads beside the Room row.
ROOM_PREFETCH = ("room_assistants__assistant",)


def message_to_dict(message: Message, *, room_slug: str | None = None) -> MessageDict:
    """The wire Message. A reply also reads its generation record (which assistant wrote
    it; how it ended): select it with the message (``select_related("generation",
    "generation__stopped_by")``), or this is a query per reply."""
    gen: Generation | None = None
    if message.role == Role.ASSISTANT:
        try:
            gen = message.generation
        except Generation.DoesNotExist:
            gen = None
        author: str | None = (gen.handle if gen is not None else "") or ASSISTANT_NAME
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
    if gen is not None:
        body["assistant"] = {
            "handle": author or ASSISTANT_NAME,
            "name": gen.assistant_name or "Assistant",
            "model": f"{gen.provider or DEFAULT_PROVIDER}/{gen.model}",
        }
    if message.role == Role.ASSISTANT:
        if message.version_of_id is not None:
            body["version_of"] = str(message.version_of_id)
            body["version"] = message.version
        elif message.version_count > 1:
            body["version"] = 1
            body["versions"] = message.version_count
            body["current"] = str(message.current_version_id or message.pk)
    if message.role == Role.ASSISTANT and message.status in TERMINAL_STATUSES:
        by = gen.stopped_by if gen is not None and gen.stopped_by_id else None
        body["by"] = by.get_username() if by is not None else None
        body["reason"] = (gen.reason or None) if gen is not None else None
        body["metrics"] = gen.metrics if gen is not None else None
    if message.edited_at is not None:
        body["edited"] = True
    if message.rating_up is not None or message.rating_down is not None:
        body["rating"] = {"up": message.rating_up or 0, "down": message.rating_down or 0}
    if message.deleted_at is not None:
        # A tombstone: members never see its text again (staff read it in the admin
        # until `purge_deleted` erases it).
        del body["text"]
        body["deleted"] = True
    return body
