"""What other apps add to chat, registered at their start-up.

``chat`` never imports ``voice``: voice adds its WebSocket actions (``speech``,
``played``), takes binary frames (speech audio), and says how far a member had played a
reply they stop, through this registry (``voice/apps.py``). Without voice installed, those
actions are unknown, binary frames are refused, and a stop is a plain stop.

Voice also keeps files of its own per message (a reply's WAV, a spoken message's
recording): ``STORED`` is how a delete and ``purge_deleted`` (chat/lifecycle.py) reach
them, so what is erased of a message is erased everywhere it is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.contrib.auth.models import User

from chat.models import Room


class Connection(Protocol):
    """What an extension may use of a WebSocket connection."""

    user: User
    room: Room

    # An extension's own state for this connection, under its own keys.
    @property
    def state(self) -> dict[str, Any]: ...

    async def send_json(self, event: dict[str, Any]) -> None: ...

    async def error(self, code: str, detail: str, request_id: object) -> None: ...


# An action's handler: (connection, the frame, its request id).
ActionHandler = Callable[[Connection, dict[str, Any], object], Awaitable[None]]
# A binary frame's handler: (connection, its bytes).
BinaryHandler = Callable[[Connection, bytes], Awaitable[None]]
# How far into reply ``message_id``'s audio the connection had played (ms), if known.
HeardMs = Callable[[Connection, "str | int"], "int | None"]
# Stop a reply keeping what its stopper had heard: (user, message id, heard_ms, room id).
StopHeard = Callable[..., Awaitable[None]]


@dataclass
class TransportExtensions:
    actions: dict[str, ActionHandler] = field(default_factory=dict)
    binary: BinaryHandler | None = None
    heard_ms: HeardMs | None = None
    stop_heard: StopHeard | None = None


EXTENSIONS = TransportExtensions()


# Erase what an app keeps of these messages outside the database. Called with message ids
# after the change is committed, in a worker thread (it may touch the disk); it handles
# its own I/O errors (the database change stands either way).
EraseHook = Callable[[Sequence[int]], None]


@dataclass
class StoredExtensions:
    # Messages were deleted: remove what members could still fetch of them (a reply's
    # audio). What staff may review stays until the purge, as the text does.
    deleted: list[EraseHook] = field(default_factory=list)
    # purge_deleted erased these messages' text: remove everything else kept of them.
    purged: list[EraseHook] = field(default_factory=list)


STORED = StoredExtensions()
