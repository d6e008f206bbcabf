"""Delivered and replayed: each process receives a room's events once and hands them on.

The route of a durable event, top to bottom (docs/architecture.md "An event's life"):

1. *Born and stored* in ``EventHub.emit`` (``chat/events/__init__.py``): the store gives it
   the room's next seq and records it in the replay log; one ``group_send`` publishes it.
2. *Received once per process* by the room's ``RoomChannel`` (``channel.py``), which keeps
   the room's stream gap-free and encodes each event once (``Frame``).
3. *Delivered* to each local ``Subscriber`` (``subscribers.py``: a WebSocket or an SSE
   response): per member, a seq comparison and a write into a bounded outbound buffer.
4. *Replayed*: a subscriber that opens with ``after`` catches up from the room's recent
   frames, the store's log, or one ``snapshot``; what arrives live meanwhile waits in its
   backlog and is sent after, once.

The other modules: ``access.py`` (who may stay, who may come in), ``timer.py`` (the one
timer per room), ``announce.py`` (presence, debounced), ``subscription.py`` (a subscriber's
life in a room, and the process's room channels).

Why not Channels' own consumer dispatch for room events: it makes a thread-pool hop
(``aclose_old_connections``) before every handler, the in-memory layer scans every channel
on each receive, and each member would decode and re-encode the event. Those are fine for
one chat message and ruinous for a token to 500 members (STYLE.md "Hot paths"). The
guarantees the consumer path kept are kept here and tested in tests/chat/test_delivery.py
and tests/chat/test_room_channel.py: strictly increasing seq, no gap, no duplicate, resume
with ``after``.
"""

from chat.events.delivery.channel import RoomChannel
from chat.events.delivery.subscribers import SseSubscriber, Subscriber, WebSocketSubscriber
from chat.events.delivery.subscription import Fanout, Subscription, admit, get_fanout

__all__ = [
    "Fanout",
    "RoomChannel",
    "SseSubscriber",
    "Subscriber",
    "Subscription",
    "WebSocketSubscriber",
    "admit",
    "get_fanout",
]
