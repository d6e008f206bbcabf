"""Where each waiting reply stands, told to its room (docs/protocol.md "Waiting in line").

A reply waits twice: in its room's line (one reply at a time per room, chat/replies/queue.py)
and, for the bundled model, in the model's line (one reply at a time for the whole process,
chat/llm/local.py). Each process tells a room where *its own* waiting replies stand, as one
live-only ``queue`` event, whenever one of their places changes: a reply joined or left the
room's line (here, or in another process: the queue's ``queue.advance`` notice), or the
model's line moved. Places are facts of the moment, stale once the line moves, so they
are not stored or replayed; a member who arrives meanwhile learns them at the next move.

One task per process does the telling, room after room, so a room's events go out in the
order the places changed and a burst of changes costs one event per room, not one per
change. An event lists at most ``PARLEY_ROOM_QUEUE_MAX`` replies (the line's bound), and a
room hears one only when a place in it changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from chat import redis as redis_conn
from chat.events import QueuePlace, queue_event, room_live_emit

if TYPE_CHECKING:
    from chat.replies.queue import RoomQueues
    from chat.replies.run import ReplyRun

logger = logging.getLogger(__name__)


class PlaceAnnouncer:
    def __init__(
        self,
        *,
        queues: RoomQueues,
        runs: dict[int, ReplyRun],
        adopt: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._queues = queues
        self._runs = runs
        self._adopt = adopt
        self._dirty: dict[int, None] = {}  # rooms to tell, in the order they changed
        self._running = False

    def touch(self, room_id: int) -> None:
        """A place in ``room_id``'s line may have changed: tell the room (soon, once)."""
        self._dirty[room_id] = None
        if not self._running:
            self._running = True
            self._adopt(self._drain())

    def model_line_moved(self) -> None:
        """The model's line changed: every room with a reply here that waits on the model
        (its turn in the room has come, no text yet) may have a new place to hear."""
        for run in list(self._runs.values()):
            if run.started_at is not None and run.first_token_at is None:
                self.touch(run.room_id)

    async def _drain(self) -> None:
        try:
            while self._dirty:
                room_id = next(iter(self._dirty))
                del self._dirty[room_id]
                try:
                    await self._announce(room_id)
                except redis_conn.UNAVAILABLE as exc:
                    logger.warning("room %s: could not read its line: %s", room_id, exc)
                except Exception:  # noqa: BLE001 - one room's failure must not silence the rest
                    logger.exception("room %s: could not tell its waiting replies' places", room_id)
        finally:
            self._running = False

    async def _announce(self, room_id: int) -> None:
        line = self._queues.line(room_id)
        waiting = [
            run
            for run in line or ()
            if run.announced.is_set() and run.first_token_at is None and not run.done.done()
        ]
        if not waiting:
            return
        order = {mid: place for place, mid in enumerate(await self._queues.order(room_id), 1)}
        places: list[QueuePlace] = []
        changed = False
        for run in waiting:
            position = order.get(run.message_id)
            if position is None:  # left the line meanwhile
                continue
            model = (
                run.model_backend.model_position(run.usage) if run.started_at is not None else None
            )
            if (position, model) != run.place:
                run.place = (position, model)
                changed = True
            places.append(
                {"message_id": run.message_key, "position": position, "model_position": model}
            )
        if changed:
            await room_live_emit(room_id=room_id, event=queue_event(places))
