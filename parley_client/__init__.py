"""parley_client: a Python client for Parley's rooms, and a terminal chat.

::

    from parley_client import Client

    async with Client("http://127.0.0.1:8000", token=TOKEN) as client:
        rooms = await client.rooms()
        async with client.room("lobby") as room:
            reply = await room.send("What is a channel layer? @assistant")
            async for event in room.events():
                ...

It needs only ``websockets`` and ``httpx`` (no Django). The terminal chat is
``python -m parley_client`` (``parley-chat``), which also needs ``prompt_toolkit``.
"""

from parley_client.audio import AudioClip, write_wav
from parley_client.client import Client, MessagePage
from parley_client.errors import (
    BadRequest,
    Conflict,
    ConnectionLost,
    Forbidden,
    NotFound,
    NotGenerating,
    NotMember,
    ParleyError,
    RateLimited,
    ServerError,
    SlowReader,
    TooLong,
    Unauthorized,
    Unreachable,
)
from parley_client.models import (
    Assistant,
    AudioCancel,
    AudioChunk,
    AudioEnd,
    AudioStart,
    DeleteEvent,
    Delta,
    DurableEvent,
    EditEvent,
    ErrorEvent,
    Event,
    Generation,
    Hello,
    Message,
    MessageEvent,
    Metrics,
    ModelChoice,
    Models,
    Place,
    Pong,
    Presence,
    QueuePlaces,
    RatingCounts,
    RatingEvent,
    Reconnecting,
    ReplyAssistant,
    Room,
    RoomEvent,
    SearchHit,
    SearchPage,
    Sent,
    Snapshot,
    Typing,
    UnknownEvent,
    VersionEvent,
    VersionInfo,
)
from parley_client.room import Backoff, RoomSession, SessionClosed

__version__ = "0.1.0"

__all__ = [
    "Assistant",
    "AudioCancel",
    "AudioChunk",
    "AudioClip",
    "AudioEnd",
    "AudioStart",
    "Backoff",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionLost",
    "DeleteEvent",
    "Delta",
    "DurableEvent",
    "EditEvent",
    "ErrorEvent",
    "Event",
    "Forbidden",
    "Generation",
    "Hello",
    "Message",
    "MessageEvent",
    "MessagePage",
    "Metrics",
    "ModelChoice",
    "Models",
    "NotFound",
    "NotGenerating",
    "NotMember",
    "ParleyError",
    "Place",
    "Pong",
    "Presence",
    "QueuePlaces",
    "RateLimited",
    "RatingCounts",
    "RatingEvent",
    "Reconnecting",
    "ReplyAssistant",
    "Room",
    "RoomEvent",
    "RoomSession",
    "SearchHit",
    "SearchPage",
    "Sent",
    "ServerError",
    "SessionClosed",
    "SlowReader",
    "Snapshot",
    "TooLong",
    "Typing",
    "Unauthorized",
    "UnknownEvent",
    "Unreachable",
    "VersionEvent",
    "VersionInfo",
    "write_wav",
]
