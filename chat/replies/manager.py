"""The reply manager: one per process (a part of its runtime), owner of every reply task.

It registers each reply run and owns its task, so a reply outlives the connection that
asked for it, and cancels and awaits every task it owns when it is closed. The rest it
delegates, one concern a module:

- ``queue.py``: each room's replies in order, one running at a time, across processes;
- ``lease.py``: this process's lease, and the sweep that ends the replies of the dead;
- ``control.py``: controls for replies running in another process (and voice's
  ``silence``), over this process's control channel.

The sweep starts with the process (``start_with_server``), not with its first send: a
process that nobody talks to still interrupts the replies of the dead.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from channels.db import database_sync_to_async

from chat import redis as redis_conn
from chat.errors import NotGenerating
from chat.events.delivery import Fanout, get_fanout
from chat.llm import LLMBackend, get_backend
from chat.replies.asking import ask_mentioned
from chat.replies.control import ControlChannel
from chat.replies.lease import WorkerLease, nobody_alive
from chat.replies.places import PlaceAnnouncer
from chat.replies.queue import RoomQueues
from chat.replies.run import ReplyRun
from chat.runtime import Runtime, get_runtime

logger = logging.getLogger(__name__)


class ReplyManager:
    def __init__(self, *, worker_id: str, fanout: Fanout) -> None:
        self.worker_id = worker_id
        self.fanout = fanout
        self.runs: dict[int, ReplyRun] = {}
        self.queues = RoomQueues(worker_id)
        self.lease = WorkerLease(worker_id, on_interrupted=self.queues.remove_dead)
        self.control = ControlChannel(apply=self._apply_control, on_advance=self._advanced)
        self.places = PlaceAnnouncer(queues=self.queues, runs=self.runs, adopt=self.adopt)
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started: asyncio.Task[None] | None = None
        self._unwatch: Callable[[], None] | None = None
        # The model lines watched besides the default backend's: one per backend a run
        # here has used (a provider's backend is kept for the process: chat.assistants).
        self._watched: dict[LLMBackend, Callable[[], None]] = {}

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
        if self._unwatch is None:
            try:
                self._unwatch = get_backend().watch_line(self.places.model_line_moved)
            except Exception:  # noqa: BLE001 - a misconfigured model fails each send, clearly
                logger.warning("cannot watch the model's line", exc_info=True)
        if self.control.channel is None:
            await self.control.open()
            self._tasks.append(asyncio.create_task(self.control.listen(), name="reply-control"))
        channel = self.control.channel
        assert channel is not None
        if redis_conn.enabled():
            if not any(task.get_name() == "heartbeat" for task in self._tasks):
                try:
                    await self.lease.beat(channel)
                except redis_conn.UNAVAILABLE as exc:
                    logger.warning("first heartbeat failed (Redis unavailable): %s", exc)
                self._tasks.append(
                    asyncio.create_task(self.lease.heartbeats(channel), name="heartbeat")
                )
                self._tasks.append(asyncio.create_task(self.lease.watch_orphans(), name="orphans"))
        else:
            # One process: every live reply not ours was left by a process that is gone.
            await self.lease.interrupt_orphans(alive=nobody_alive)
        logger.info("reply manager %s started", self.worker_id)

    # --- runs --------------------------------------------------------------------------

    def queue_length(self, room_id: int) -> int:
        return self.queues.length(room_id)

    async def register(self, run: ReplyRun) -> None:
        if run.backend is not None:
            self._watch(run.backend)
        self.runs[run.message_id] = run
        await self.queues.join(run, self.control.channel)

    def _watch(self, backend: LLMBackend) -> None:
        """Tell rooms their places in ``backend``'s line too (a backend with a line of its
        own: the bundled model), once per backend."""
        if backend in self._watched or backend is get_backend():
            return
        self._watched[backend] = backend.watch_line(self.places.model_line_moved)

    def unregister(self, run: ReplyRun) -> None:
        self.runs.pop(run.message_id, None)

    async def dequeue(self, run: ReplyRun) -> None:
        """Take a reply that has not started out of the room's queue (it was stopped)."""
        await self.queues.leave(run)
        self.places.touch(run.room_id)

    def _advanced(self, room_id: int) -> None:
        """Another process's reply left the room's line: ours move up."""
        self.queues.wake(room_id)
        self.places.touch(room_id)

    def start(self, run: ReplyRun) -> None:
        """Make sure the room's worker runs; it takes replies in order, one at a time."""
        worker = self._workers.get(run.room_id)
        if worker is None or worker.done():
            self._workers[run.room_id] = asyncio.create_task(
                self._room_worker(run.room_id), name=f"room-worker-{run.room_id}"
            )

    async def _room_worker(self, room_id: int) -> None:
        try:
            # The room's line is read afresh each turn: it is dropped when it empties,
            # and a reply that joins meanwhile starts a new one, which this loop finds.
            while line := self.queues.line(room_id):
                run = line[0]
                try:
                    if await self.queues.wait_turn(run):
                        await run.execute()
                        # Before it leaves the line, so the room's worker goes on to them.
                        await ask_mentioned(self, run)
                finally:
                    await self.queues.leave(run)
                    self.places.touch(room_id)
        finally:
            if self._workers.get(room_id) is asyncio.current_task():
                del self._workers[room_id]
            if self.fanout.get(room_id) is None:
                # No reply and no member here any more: the room is idle in this process.
                self.fanout.hub.forget_room(room_id)

    async def _apply_control(
        self, message_id: int, action: str, by: str, heard_ms: int | None
    ) -> dict[str, Any]:
        """A control sent from another process for a reply that runs here."""
        run = self.runs.get(message_id)
        if run is None:
            raise NotGenerating("this reply is not running any more")
        await run.control(action, by=by, heard_ms=heard_ms)
        text, status = run.visible()
        return {"text": text, "status": status}

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
        return await self.control.send(
            worker=worker, message_id=message_id, action=action, by=by, heard_ms=heard_ms
        )

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
        if self._unwatch is not None:
            self._unwatch()
        for unwatch in self._watched.values():
            unwatch()
        tasks = [*self._workers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.control.aclose()


def _make(runtime: Runtime) -> ReplyManager:
    # The fan-out first: the runs pace their deltas by it, so it must outlive them.
    return ReplyManager(worker_id=runtime.worker_id, fanout=get_fanout())


def get_manager() -> ReplyManager:
    """This event loop's reply manager, a part of its runtime (chat/runtime.py)."""
    return get_runtime().part(ReplyManager, _make)


def start_with_server() -> None:
    """Start this process's manager as soon as daphne's event loop runs.

    daphne speaks no ASGI lifespan, so nothing tells the application that the server has
    started; but daphne installs Twisted's asyncio reactor before it imports the
    application, and that reactor's ``callLater`` runs inside the event loop that serves
    every connection. So the orphan sweep and the heartbeat start with the process, not
    with its first WebSocket. The runtime is closed (every reply task cancelled and
    awaited, every room channel left) when the reactor shuts down. Under any other server
    (or when imported by tests) this does nothing, and the manager starts on first use.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if isinstance(reactor, AsyncioSelectorReactor):
        reactor.callLater(0, _begin_here)
        reactor.addSystemEventTrigger("before", "shutdown", _close_here)


def _begin_here() -> None:
    manager = get_manager()
    manager.begin().add_done_callback(_log_start_failure)
    manager.adopt(_warm_up())


# How long a stopping process gives its runtime to close (reply tasks cancelled, room
# channels left) before the reactor stops anyway: the replies it ran are interrupted by
# the survivors' sweep either way, so this only has to be long enough for a clean exit.
SHUTDOWN_GRACE = 5.0


def _close_here() -> Any:
    from twisted.internet.defer import Deferred

    async def close() -> None:
        try:
            await asyncio.wait_for(get_runtime().aclose(), SHUTDOWN_GRACE)
        except Exception:  # noqa: BLE001 - the process is stopping regardless
            logger.warning("the runtime did not close cleanly", exc_info=True)

    return Deferred.fromFuture(asyncio.ensure_future(close()))


async def _warm_up() -> None:
    """Pay at start what the first send would otherwise pay: the model client (or the
    bundled model's load), the ORM thread's database connection, the URL resolver."""
    from django.urls import get_resolver

    from chat.llm import get_backend

    try:
        await get_backend().warm()
        await database_sync_to_async(_connect)()
        get_resolver().resolve("/healthz")
    except Exception:  # noqa: BLE001 - a cold start is slower, not broken
        logger.warning("warming up at start failed", exc_info=True)
    _freeze_start_up()


def _freeze_start_up() -> None:
    """Take what start-up made out of the garbage collector's reach for good.

    Most of a daphne's ~155,000 tracked objects are modules, classes and functions loaded
    once (Django, Channels, the model client); every full collection walked them all,
    stopping the event loop 75-130 ms while deltas and events in flight waited (docs/
    benchmarks.md "Message actions"). Collected once first, so start-up's own garbage is
    freed rather than kept; frozen, the rest is never walked again, and a full collection
    only walks what connections and replies made since."""
    gc.collect()
    gc.freeze()


def _connect() -> None:
    # ``connection`` is looked up here, on the ORM thread: a connection is per thread, and
    # ``connection.ensure_connection`` taken on the event loop would be the loop thread's,
    # which Django refuses to use from another ("DatabaseWrapper objects created in a
    # thread can only be used in that same thread").
    from django.db import connection

    connection.ensure_connection()


def _log_start_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # The next send's ensure_started() tries again.
        logger.error("the reply manager did not start", exc_info=task.exception())
