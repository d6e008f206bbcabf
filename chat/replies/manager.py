"""The reply manager: one per process (per event loop), owner of every reply task.

It keeps each room's replies in order, one running at a time; answers controls for the
replies it runs, including ones sent from other processes; and finds replies left behind
by processes that died.

Without Redis (one process) the order is the local queue, and replies of a previous
process are interrupted at start-up. With Redis:

- The room's order is a Redis list of ``<message id>|<worker id>``: a reply runs when it
  is at the head; the process that ends it pops it and tells the room's waiters.
- Each process refreshes ``parley:w:<worker id>`` (its control channel, with a TTL) every
  heartbeat. A reply whose worker's key has expired belongs to a dead process: any
  survivor marks it ``interrupted`` and takes it out of the room's queue. A restart of
  Redis wipes every lease at once, live or not, so a missing lease counts as death only
  once the store has held Parley's state for a whole lease (``_store_age``): by then
  every live process has beaten again.
- The sweep starts with the process (``start_with_server``), not with its first
  connection: a process that nobody talks to still interrupts the replies of the dead.
- A control for a reply running elsewhere is sent to its worker's control channel and
  answered there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from chat import redis as redis_conn
from chat.errors import Busy, NotGenerating, ParleyError
from chat.events import generation_body, room_event_emit
from chat.replies import db
from chat.replies.run import ReplyRun
from voice.speech import ReplySpeech

logger = logging.getLogger(__name__)

# Without a wake-up (a lost notice, a dead head) a waiting reply re-checks the room's
# queue this often; notices make the usual hand-over immediate.
QUEUE_RECHECK_INTERVAL = 1.0


# How long (seconds) Redis has held Parley's state: the age of a marker set by the first
# heartbeat or sweep to find it missing, which a restart (Redis keeps nothing on disk
# here) or a flush removes together with every lease. Redis's own clock, so every
# process measures the same age. KEYS[1] is the marker; a heartbeat also sets its lease
# (KEYS[2], ARGV[1] the channel, ARGV[2] the lease in ms).
_STORE_AGE = """
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local born = redis.call('GET', KEYS[1])
if not born then
  redis.call('SET', KEYS[1], string.format('%.6f', t))
  return '0'
end
return string.format('%.6f', t - tonumber(born))
"""
_STORE_BORN_KEY = "parley:store-born"


def _worker_key(worker_id: str) -> str:
    return f"parley:w:{worker_id}"


def _queue_key(room_id: int) -> str:
    return f"parley:r:{room_id}:queue"


def _queue_group(room_id: int) -> str:
    return f"roomq.{room_id}"


class ReplyManager:
    def __init__(self) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.runs: dict[int, ReplyRun] = {}
        # Replies whose speech is being made here, by message id: a reply's audio may go
        # on after its text has ended (ReplyRun._speak), and can still be cut off.
        self.speaking: dict[int, ReplySpeech] = {}
        self.channel: str | None = None
        self._queues: dict[int, deque[ReplyRun]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._advance: dict[int, asyncio.Event] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started: asyncio.Task[None] | None = None

    # --- start-up ----------------------------------------------------------------------

    def begin(self) -> asyncio.Task[None]:
        """Start the manager (once; again after a start that failed)."""
        started = self._started
        if started is None or (
            started.done() and (started.cancelled() or started.exception() is not None)
        ):
            started = self._started = asyncio.create_task(self._start(), name="reply-manager")
        return started

    async def ensure_started(self) -> None:
        await asyncio.shield(self.begin())

    async def _start(self) -> None:
        layer = get_channel_layer()
        assert layer is not None
        if self.channel is None:
            self.channel = await layer.new_channel("parley.worker.")
            self._tasks.append(asyncio.create_task(self._listen(), name="reply-control"))
        if redis_conn.enabled():
            if not any(task.get_name() == "heartbeat" for task in self._tasks):
                try:
                    await self._beat()
                except redis_conn.UNAVAILABLE as exc:
                    logger.warning("first heartbeat failed (Redis unavailable): %s", exc)
                self._tasks.append(asyncio.create_task(self._heartbeats(), name="heartbeat"))
                self._tasks.append(asyncio.create_task(self._watch_orphans(), name="orphans"))
        else:
            # One process: every live reply not ours was left by a process that is gone.
            await self._interrupt_orphans(alive=lambda worker: False)
        logger.info("reply manager %s started", self.worker_id)

    # --- leases ------------------------------------------------------------------------

    async def _beat(self) -> None:
        assert self.channel is not None
        lease_ms = int(settings.PARLEY_WORKER_LEASE * 1000)
        keys = [_STORE_BORN_KEY, _worker_key(self.worker_id)]
        await redis_conn.get_redis().eval(_STORE_AGE, len(keys), *keys, self.channel, lease_ms)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(settings.PARLEY_WORKER_HEARTBEAT)
            try:
                await self._beat()
            except redis_conn.UNAVAILABLE as exc:
                logger.warning("heartbeat failed (Redis unavailable): %s", exc)

    async def _store_age(self) -> float:
        client = redis_conn.get_redis()
        return float(await client.eval(_STORE_AGE, 1, _STORE_BORN_KEY))

    async def _presumed_dead(self, worker: str) -> bool:
        """``worker``'s lease is gone, and not just because Redis came back empty."""
        if await redis_conn.get_redis().exists(_worker_key(worker)):
            return False
        return await self._store_age() >= settings.PARLEY_WORKER_LEASE

    async def _watch_orphans(self) -> None:
        async def alive(worker: str) -> bool:
            return not await self._presumed_dead(worker)

        while True:
            try:
                await self._interrupt_orphans(alive=alive)
            except redis_conn.UNAVAILABLE as exc:
                logger.warning("orphan check skipped (Redis unavailable): %s", exc)
            except Exception:
                logger.exception("orphan check failed")
            await asyncio.sleep(settings.PARLEY_WORKER_HEARTBEAT)

    async def _interrupt_orphans(self, *, alive: Any) -> None:
        by_worker = await database_sync_to_async(db.live_replies_by_worker)(exclude=self.worker_id)
        for worker, replies in by_worker.items():
            is_alive = alive(worker)
            if asyncio.iscoroutine(is_alive):
                is_alive = await is_alive
            if is_alive:
                continue
            for room_id, message_id in await database_sync_to_async(db.interrupt)(replies):
                logger.warning("reply %s lost its process (%s): interrupted", message_id, worker)
                if redis_conn.enabled():
                    await redis_conn.get_redis().lrem(
                        _queue_key(room_id), 0, f"{message_id}|{worker}"
                    )
                    await self._notify_advance(room_id)
                # The database says interrupted from now on: members must hear it too.
                await room_event_emit(
                    room_id=room_id,
                    body=generation_body(
                        message_id=str(message_id),
                        state="interrupted",
                        reason="the server running this reply stopped",
                    ),
                    until_stored=True,
                )

    # --- the room queue ----------------------------------------------------------------

    def queue_length(self, room_id: int) -> int:
        return len(self._queues.get(room_id, ()))

    async def register(self, run: ReplyRun) -> None:
        self.runs[run.message_id] = run
        self._queues.setdefault(run.room_id, deque()).append(run)
        if redis_conn.enabled():
            await redis_conn.get_redis().rpush(_queue_key(run.room_id), self._entry(run))
            layer = get_channel_layer()
            assert layer is not None
            assert self.channel is not None
            await layer.group_add(_queue_group(run.room_id), self.channel)

    def _entry(self, run: ReplyRun) -> str:
        return f"{run.message_id}|{self.worker_id}"

    def unregister(self, run: ReplyRun) -> None:
        self.runs.pop(run.message_id, None)

    async def dequeue(self, run: ReplyRun) -> None:
        """Take a reply that has not started out of the room's queue (it was stopped)."""
        queue = self._queues.get(run.room_id)
        if queue is not None and run in queue:
            queue.remove(run)
        await self._leave_queue(run)

    def _wake(self, room_id: int) -> None:
        event = self._advance.get(room_id)
        if event is not None:
            event.set()

    def start(self, run: ReplyRun) -> None:
        """Make sure the room's worker runs; it takes replies in order, one at a time."""
        worker = self._workers.get(run.room_id)
        if worker is None or worker.done():
            self._workers[run.room_id] = asyncio.create_task(
                self._room_worker(run.room_id), name=f"room-worker-{run.room_id}"
            )

    async def _room_worker(self, room_id: int) -> None:
        queue = self._queues.setdefault(room_id, deque())
        try:
            while queue:
                run = queue[0]
                try:
                    if await self._wait_turn(run):
                        await run.execute()
                finally:
                    if queue and queue[0] is run:
                        queue.popleft()
                    await self._leave_queue(run)
        finally:
            if self._workers.get(room_id) is asyncio.current_task():
                del self._workers[room_id]

    async def _wait_turn(self, run: ReplyRun) -> bool:
        """Wait until ``run`` heads the room's queue across processes; False if it ended."""
        if not redis_conn.enabled():
            return not run.done.done()
        client = redis_conn.get_redis()
        key = _queue_key(run.room_id)
        mine = self._entry(run)
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
                if await self._presumed_dead(worker):
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

    async def _leave_queue(self, run: ReplyRun) -> None:
        self._wake(run.room_id)
        if not redis_conn.enabled():
            return
        try:
            removed = await redis_conn.get_redis().lrem(
                _queue_key(run.room_id), 0, self._entry(run)
            )
            if removed:
                await self._notify_advance(run.room_id)
        except redis_conn.UNAVAILABLE as exc:
            logger.warning("could not leave the room queue: %s", exc)

    async def _notify_advance(self, room_id: int) -> None:
        layer = get_channel_layer()
        assert layer is not None
        with contextlib.suppress(Exception):
            await layer.group_send(
                _queue_group(room_id), {"type": "queue.advance", "room": room_id}
            )

    # --- controls across processes ---------------------------------------------------

    async def silence(self, *, message_id: int, heard_ms: int | None) -> bool:
        """Cut off the speech of a reply whose text has ended, if it is still being made
        here (members get the audio ``cancel``), keeping what the member who cut it off
        had heard. False when it is not speaking here."""
        speech = self.speaking.get(message_id)
        if speech is None:
            return False
        await speech.cancel()
        if heard_ms is not None:
            await database_sync_to_async(db.save_heard)(
                message_id, heard_ms=heard_ms, marks=list(speech.marks.marks)
            )
        return True

    async def control_remote(
        self,
        *,
        worker: str,
        message_id: int,
        action: str,
        by: str,
        heard_ms: int | None = None,
    ) -> dict[str, Any]:
        """Send a control to the process running the reply and wait for its answer."""
        if not redis_conn.enabled():
            raise NotGenerating("this reply is not running any more")
        try:
            channel = await redis_conn.get_redis().get(_worker_key(worker))
        except redis_conn.UNAVAILABLE as exc:
            raise Busy("the server is reconnecting; try again shortly") from exc
        if channel is None:
            if await self._store_age() < settings.PARLEY_WORKER_LEASE:
                raise Busy("the server is reconnecting; try again shortly")
            raise NotGenerating("the server running this reply has stopped")
        layer = get_channel_layer()
        assert layer is not None
        assert self.channel is not None
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await layer.send(
                channel.decode(),
                {
                    "type": "reply.control",
                    "id": request_id,
                    "message_id": message_id,
                    "action": action,
                    "by": by,
                    "heard_ms": heard_ms,
                    "reply_channel": self.channel,
                },
            )
            answer = await asyncio.wait_for(future, settings.PARLEY_CONTROL_TIMEOUT)
        except TimeoutError as exc:
            raise Busy("the server running this reply did not answer; try again") from exc
        finally:
            self._pending.pop(request_id, None)
        if not answer["ok"]:
            error = ParleyError(answer["detail"])
            error.code, error.status = answer["code"], answer["status"]
            raise error
        return answer

    async def _listen(self) -> None:
        layer = get_channel_layer()
        assert layer is not None
        assert self.channel is not None
        while True:
            try:
                message = await layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("control channel receive failed")
                await asyncio.sleep(QUEUE_RECHECK_INTERVAL)
                continue
            kind = message.get("type")
            if kind == "reply.control":
                self.adopt(self._answer(message))
            elif kind == "reply.control.answer":
                future = self._pending.get(message["id"])
                if future is not None and not future.done():
                    future.set_result(message)
            elif kind == "queue.advance":
                self._wake(int(message["room"]))

    async def _answer(self, request: dict[str, Any]) -> None:
        answer: dict[str, Any] = {"type": "reply.control.answer", "id": request["id"], "ok": True}
        message_id = int(request["message_id"])
        run = self.runs.get(message_id)
        heard_ms = request.get("heard_ms")
        try:
            if request["action"] == "silence":
                answer["silenced"] = await self.silence(message_id=message_id, heard_ms=heard_ms)
            elif run is None:
                raise NotGenerating("this reply is not running any more")
            else:
                await run.control(request["action"], by=request["by"], heard_ms=heard_ms)
                answer["text"], answer["status"] = run.visible()
        except ParleyError as exc:
            answer.update(ok=False, code=exc.code, status=exc.status, detail=exc.detail)
        layer = get_channel_layer()
        assert layer is not None
        with contextlib.suppress(Exception):
            await layer.send(request["reply_channel"], answer)

    def adopt(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task this manager owns (cancelled and awaited on close)."""
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    # --- shutdown ----------------------------------------------------------------------

    async def aclose(self) -> None:
        tasks = [*self._workers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_managers: dict[asyncio.AbstractEventLoop, ReplyManager] = {}


def start_with_server() -> None:
    """Start this process's manager as soon as daphne's event loop runs.

    daphne speaks no ASGI lifespan, so nothing tells the application that the server has
    started; but daphne installs Twisted's asyncio reactor before it imports the
    application, and that reactor's ``callLater`` runs inside the event loop that serves
    every connection. So the orphan sweep and the heartbeat start with the process, not
    with its first WebSocket. Under any other server (or when imported by tests) this does
    nothing, and the manager starts on first use as before.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if isinstance(reactor, AsyncioSelectorReactor):
        reactor.callLater(0, _begin_here)


def _begin_here() -> None:
    manager = get_manager()
    manager.begin().add_done_callback(_log_start_failure)
    manager.adopt(_warm_up())


async def _warm_up() -> None:
    """Pay at start what the first send would otherwise pay: the model client (or the
    bundled model's load), the ORM thread's database connection, the URL resolver."""
    from django.db import connection
    from django.urls import get_resolver

    from chat.llm import get_backend

    try:
        await get_backend().warm()
        await database_sync_to_async(connection.ensure_connection)()
        get_resolver().resolve("/healthz")
    except Exception:  # noqa: BLE001 - a cold start is slower, not broken
        logger.warning("warming up at start failed", exc_info=True)


def _log_start_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # The next connection's ensure_started() tries again.
        logger.error("the reply manager did not start", exc_info=task.exception())


def get_manager() -> ReplyManager:
    loop = asyncio.get_running_loop()
    manager = _managers.get(loop)
    if manager is None:
        for old in [lp for lp in _managers if lp.is_closed()]:
            del _managers[old]
        manager = _managers[loop] = ReplyManager()
    return manager
