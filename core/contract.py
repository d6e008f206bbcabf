"""The names of the wire contract, in one place (docs/protocol.md "Close codes").

Every sender and receiver on the server imports them from here: the close codes a
connection can end with (each with its reason and whether a client should reconnect),
the types of live-only events, and the channel-layer message types that carry room
events between processes. ``parley_client`` and the page keep their own copies (they
must not import the server); ``tests/test_contract.py`` checks that the three agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class CloseCode:
    code: int
    reason: str
    # True: the client should come back (at once or after a backoff); False: it is
    # refused for good until something changes (log in again, be added to the room...).
    reconnect: bool


TOO_BIG: Final = CloseCode(1009, "a frame was over the size limit", reconnect=False)
TRY_AGAIN: Final = CloseCode(
    1013, "the server's event store is unreachable; try again shortly", reconnect=True
)
UNAUTHENTICATED: Final = CloseCode(4401, "not signed in, or your access was revoked", False)
NOT_MEMBER: Final = CloseCode(4403, "you are not a member of this room", reconnect=False)
NO_ROOM: Final = CloseCode(4404, "no such room", reconnect=False)
TOO_SLOW: Final = CloseCode(4408, "too slow; reconnect with after", reconnect=True)
TOO_MANY_CONNECTIONS: Final = CloseCode(
    4429, "too many connections for this user; try again later", reconnect=True
)

CLOSE_CODES: Final[dict[int, CloseCode]] = {
    c.code: c
    for c in (
        TOO_BIG,
        TRY_AGAIN,
        UNAUTHENTICATED,
        NOT_MEMBER,
        NO_ROOM,
        TOO_SLOW,
        TOO_MANY_CONNECTIONS,
    )
}

# Why a subscriber's access re-check closes it (the close's reason, and the SSE error's).
REASON_REVOKED: Final = "your access was revoked"
REASON_REMOVED: Final = "you are no longer a member of this room"
REASON_TOO_SLOW_SSE: Final = "too slow; reconnect with Last-Event-ID"

# Channel-layer message types: what one process sends the others.
# A durable event, with its seq; "at" (optional) is its publish time, time.time(), for the
# receivers' channel-layer lag (core/metrics.py).
LAYER_ROOM_EVENT: Final = "room.event"
LAYER_ROOM_LIVE: Final = "room.live"  # presence, typing: never stored
LAYER_ROOM_AUDIO: Final = "room.audio"  # a reply's speech: JSON event or binary frame
LAYER_REPLY_CONTROL: Final = "reply.control"  # a control for a reply another process runs
LAYER_REPLY_CONTROL_ANSWER: Final = "reply.control.answer"
LAYER_QUEUE_ADVANCE: Final = "queue.advance"  # a room's reply queue moved on

# Live-only event types (no seq, never replayed).
LIVE_PRESENCE: Final = "presence"
LIVE_TYPING: Final = "typing"
LIVE_AUDIO: Final = "audio"
LIVE_QUEUE: Final = "queue"  # where waiting replies stand (extension)
