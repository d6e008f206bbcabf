"""What other apps add to the room transports, registered at their start-up.

``chat`` never imports ``voice``: voice adds its WebSocket actions (``speech``,
``played``), takes binary frames (speech audio), and says how far a member had played a
reply they stop, through this registry (``voice/apps.py``). Without voice installed, those
actions are unknown, binary frames are refused, and a stop is a plain stop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
