"""Each room's replies in order, one running at a time, across every process.

Without Redis (one process) the order is a local queue. With Redis it is the list
``parley:{r<id>}:queue`` of ``<message id>|<worker id>``: a reply runs when it heads the
list; the process that ends it removes it and notifies the room's waiting processes
(channel-layer group ``roomq.<id>``); a waiter also re-checks every
``QUEUE_RECHECK_INTERVAL`` and removes a head whose worker is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from channels.layers import get_channel_layer

from chat import redis as redis_conn
from chat.replies.lease import presumed_dead
from core.contract import LAYER_QUEUE_ADVANCE

if TYPE_CHECKING:
    from chat.replies.run import ReplyRun

logger = logging.getLogger(__name__)

# Without a wake-up (a lost notice, a dead head) a waiting reply re-checks the room's
# queue this often; notices make the usual hand-over immediate.
QUEUE_RECHECK_INTERVAL = 1.0


def queue_key(room_id: int) -> str:
    return redis_conn.room_key(room_id, "queue")


def queue_group(room_id: int) -> str:
    return f"roomq.{room_id}"


class RoomQueues:
    """The rooms' reply queues as this process sees them. A room's entry is dropped when
    its last reply here leaves (bounded memory for a process that sees many rooms)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._queues: dict[int, deque[ReplyRun]] = {}
        self._advance: dict[int, asyncio.Event] = {}

    def length(self, room_id: int) -> int:
        return len(self._queues.get(room_id, ()))

    def line(self, room_id: int) -> deque[ReplyRun] | None:
        """The room's replies waiting or running here, in order (None: none)."""
        return self._queues.get(room_id)

    async def order(self, room_id: int) -> list[int]:
        """The message ids of the room's line across every process, in order (the one
        running first). Without Redis this process's line is the whole line."""
        if not redis_conn.enabled():
            return [run.message_id for run in self._queues.get(room_id, ())]
        entries = await redis_conn.get_redis().lrange(queue_key(room_id), 0, -1)
        return [int(entry.split(b"|", 1)[0]) for entry in entries]

    def entry(self, run: ReplyRun) -> str:
        return f"{run.message_id}|{self.worker_id}"

    async def join(self, run: ReplyRun, channel: str | None) -> None:
        """Put ``run`` at the end of its room's line (and listen for the room's notices)."""
        self._queues.setdefault(run.room_id, deque()).append(run)
        if redis_conn.enabled():
            await redis_conn.get_redis().rpush(queue_key(run.room_id), self.entry(run))
            layer = get_channel_layer()
            assert layer is not None
            assert channel is not None
            await layer.group_add(queue_group(run.room_id), channel)

    def drop(self, run: ReplyRun) -> None:
        """Take ``run`` out of the local line (it ended, or never started)."""
        queue = self._queues.get(run.room_id)
        if queue is None:
            return
        if run in queue:
            queue.remove(run)
        if not queue:
            del self._queues[run.room_id]
            self._advance.pop(run.room_id, None)

    def wake(self, room_id: int) -> None:
        event = self._advance.get(room_id)
        if event is not None:
            event.set()

    async def wait_turn(self, run: ReplyRun) -> bool:
        """Wait until ``run`` heads the room's queue across processes; False if it ended."""
        if not redis_conn.enabled():
            return not run.done.done()
        client = redis_conn.get_redis()
        key = queue_key(run.room_id)
        mine = self.entry(run)
        event = self._advance.setdefault(run.room_id, asyncio.Event())
        while not run.done.done():
            event.clear()
            try:
                head = await client.lindex(key, 0)
                if head is None:
                    # Redis lost the queue (a restart): put ourselves back in line.
                    await client.rpush(key, mine)
                    continue
                head_entry = head.decode()
                if head_entry == mine:
                    return True
                worker = head_entry.split("|", 1)[1]
                if await presumed_dead(worker):
                    # Its process is gone; the orphan check interrupts the reply itself.
                    await client.lrem(key, 0, head_entry)
                    continue
            except redis_conn.UNAVAILABLE as exc:
                logger.warning("room queue unavailable: %s", exc)
            # It waits behind another reply: the prompt made at send time would miss that
            # reply's text, so the run reads it afresh when its turn comes.
            run.prompt = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), QUEUE_RECHECK_INTERVAL)
        return False

    async def leave(self, run: ReplyRun) -> None:
        """``run`` is done with the room's line: out of it everywhere, waiters told."""
        self.wake(run.room_id)
        self.drop(run)
        if not redis_conn.enabled():
            return
        try:
            removed = await redis_conn.get_redis().lrem(queue_key(run.room_id), 0, self.entry(run))
            if removed:
                await notify_advance(run.room_id)
        except redis_conn.UNAVAILABLE as exc:
            logger.warning("could not leave the room queue: %s", exc)

    async def remove_dead(self, room_id: int, message_id: int, worker: str) -> None:
        """A dead worker's reply was interrupted: its entry leaves the line."""
        if redis_conn.enabled():
            await redis_conn.get_redis().lrem(queue_key(room_id), 0, f"{message_id}|{worker}")
            await notify_advance(room_id)


async def notify_advance(room_id: int) -> None:
    layer = get_channel_layer()
    assert layer is not None
    with contextlib.suppress(Exception):
        await layer.group_send(queue_group(room_id), {"type": LAYER_QUEUE_ADVANCE, "room": room_id})
