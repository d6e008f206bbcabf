"""The durable room events (docs/protocol.md "The event stream"): one schema and one
constructor each.

Services build event bodies only through these constructors; the store adds ``seq``
(``EventHub.emit``), so a body is the event less its seq. The live-only events (``hello``,
``presence``, ``typing``, ``audio``, ``pong``, ``error``) are built where they are sent,
except ``queue``, whose schema is here beside the reply events it speaks of.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, cast, get_args

from chat.serializers import MessageDict, RoomDict
from core.contract import LIVE_QUEUE

# chat.models.Status's non-queued values; the terminal ones are chat.models.TERMINAL_STATUSES.
GenerationState = Literal["streaming", "paused", "complete", "stopped", "failed", "interrupted"]
GENERATION_STATES: frozenset[str] = frozenset(get_args(GenerationState))


class MessageBody(TypedDict):
    type: Literal["message"]
    message: MessageDict


class DeltaBody(TypedDict):
    type: Literal["delta"]
    message_id: str
    text: str


class GenerationBody(TypedDict):
    type: Literal["generation"]
    message_id: str
    state: GenerationState
    by: str | None
    reason: str | None
    usage: NotRequired[dict[str, int | None]]
    metrics: NotRequired[dict[str, float | int | None]]


class RoomBody(TypedDict):
    """Extension: the room's settings, members' roles or assistants changed. ``room`` is
    the whole Room object less its ``head`` (an event's place in the stream is its own
    ``seq``; a head inside it would say nothing more)."""

    type: Literal["room"]
    room: dict[str, Any]


class VersionBody(TypedDict):
    """Extension (docs/protocol.md "Versions of a reply"): a reply got a new version, or
    another of its versions was picked. ``message_id`` is the reply (its first version),
    ``current`` the id of the version now shown, ``versions`` how many it has, ``by`` who
    asked (a username)."""

    type: Literal["version"]
    message_id: str
    current: str
    versions: int
    by: str | None


class EditBody(TypedDict):
    """Extension: a member edited their message; ``text`` is its text now."""

    type: Literal["edit"]
    message_id: str
    text: str
    edited: Literal[True]
    by: str


class DeleteBody(TypedDict):
    """Extension: a message became a tombstone (``"deleted": true``, no text)."""

    type: Literal["delete"]
    message_id: str
    by: str


class RatingBody(TypedDict):
    """Extension: a reply's rating counts, after a member rated it, changed or cleared
    their rating (read in the same locked step that announces them)."""

    type: Literal["rating"]
    message_id: str
    up: int
    down: int


class MessageEvent(MessageBody):
    seq: int


class DeltaEvent(DeltaBody):
    seq: int


class GenerationEvent(GenerationBody):
    seq: int


class RoomEvent(RoomBody):
    seq: int


class VersionEvent(VersionBody):
    seq: int


class EditEvent(EditBody):
    seq: int


class DeleteEvent(DeleteBody):
    seq: int


class RatingEvent(RatingBody):
    seq: int


class SnapshotEvent(TypedDict):
    type: Literal["snapshot"]
    seq: int
    messages: list[MessageDict]


DurableEvent = (
    MessageEvent
    | DeltaEvent
    | GenerationEvent
    | RoomEvent
    | VersionEvent
    | EditEvent
    | DeleteEvent
    | RatingEvent
    | SnapshotEvent
)


def message_body(message: MessageDict) -> MessageBody:
    """A new message (a user's, or an assistant reply starting with ``text: ""``)."""
    return {"type": "message", "message": message}


def room_body(room: RoomDict | Mapping[str, Any]) -> RoomBody:
    """The room as it is now (``room_to_dict``'s object; its ``head`` is left out)."""
    return {"type": "room", "room": {k: v for k, v in room.items() if k != "head"}}


def version_body(*, message_id: str, current: str, versions: int, by: str | None) -> VersionBody:
    """Reply ``message_id`` shows version ``current`` now, of ``versions``."""
    if versions < 1:
        raise ValueError(f"a reply has at least one version, not {versions}")
    return {
        "type": "version",
        "message_id": message_id,
        "current": current,
        "versions": versions,
        "by": by,
    }


def delta_body(*, message_id: str, text: str) -> DeltaBody:
    """Text appended to the assistant message ``message_id``."""
    return {"type": "delta", "message_id": message_id, "text": text}


def generation_body(
    *,
    message_id: str,
    state: str,
    by: str | None = None,
    reason: str | None = None,
    usage: dict[str, int | None] | None = None,
    metrics: dict[str, float | int | None] | None = None,
) -> GenerationBody:
    """A reply's state changed; terminal states also carry ``usage`` and ``metrics``.

    ``state`` is a ``chat.models.Status`` value (not ``queued``: a queued reply has no
    generation event); anything else is a bug, refused here.
    """
    if state not in GENERATION_STATES:
        raise ValueError(f"no generation state {state!r}")
    body: GenerationBody = {
        "type": "generation",
        "message_id": message_id,
        "state": cast(GenerationState, state),
        "by": by,
        "reason": reason,
    }
    if usage is not None:
        body["usage"] = usage
    if metrics is not None:
        body["metrics"] = metrics
    return body


def edit_body(*, message_id: str, text: str, by: str) -> EditBody:
    """The member's message ``message_id`` reads ``text`` now (edited by ``by``)."""
    return {"type": "edit", "message_id": message_id, "text": text, "edited": True, "by": by}


def delete_body(*, message_id: str, by: str) -> DeleteBody:
    """The message ``message_id`` is a tombstone now (deleted by ``by``)."""
    return {"type": "delete", "message_id": message_id, "by": by}


def rating_body(*, message_id: str, up: int, down: int) -> RatingBody:
    """The reply ``message_id`` has ``up`` thumbs up and ``down`` thumbs down now."""
    if up < 0 or down < 0:
        raise ValueError(f"rating counts are never negative: {up}, {down}")
    return {"type": "rating", "message_id": message_id, "up": up, "down": down}


def snapshot_event(*, seq: int, messages: list[MessageDict]) -> SnapshotEvent:
    """The room's latest messages as they stood at ``seq`` (sent instead of a replay)."""
    return {"type": "snapshot", "seq": seq, "messages": messages}


# --- Live-only: where waiting replies stand (docs/protocol.md "Waiting in line") -------------


class QueuePlace(TypedDict):
    message_id: str
    # 1 = the reply the room is on now (being written, or waiting for the model).
    position: int
    # The bundled model's line across the server, 1 = the reply it is writing; None
    # before the reply's turn in its room, or for a model server with no visible line.
    model_position: int | None


class QueueEvent(TypedDict):
    type: Literal["queue"]
    replies: list[QueuePlace]


def queue_event(places: list[QueuePlace]) -> QueueEvent:
    """Where some of a room's waiting replies stand now (live-only: never stored)."""
    for place in places:
        if place["position"] < 1 or (place["model_position"] or 1) < 1:
            raise ValueError(f"positions count from 1: {place!r}")
    return {"type": LIVE_QUEUE, "replies": places}
