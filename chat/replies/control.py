"""Controls across processes: the worker's control channel.

A control for a reply another process runs goes to that process's control channel (found
under its lease, ``parley:{g}:w:<worker>``), which applies it and answers on the sender's. The
same channel carries the room queues' notices. Actions other than pause/resume/stop are
registered by the apps that define them (voice's ``silence``), so this module knows none
of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from chat import redis as redis_conn
from chat.errors import Busy, NotGenerating, ParleyError
from chat.replies.lease import store_age, worker_channel
from core.contract import LAYER_QUEUE_ADVANCE, LAYER_REPLY_CONTROL, LAYER_REPLY_CONTROL_ANSWER

logger = logging.getLogger(__name__)

# A control this process answers for a reply it runs: (message id, action, by, heard_ms)
# -> the answer's fields (the reply's visible text and status).
Apply = Callable[[int, str, str, "int | None"], Awaitable[dict[str, Any]]]
# An extra action's handler: (message id, heard_ms) -> the answer's fields.
ExtraAction = Callable[[int, "int | None"], Awaitable[dict[str, Any]]]

_extra_actions: dict[str, ExtraAction] = {}

# After a failed receive, the listener waits this long before the next (the layer is
# reconnecting; a tight loop would only log the same error).
RECEIVE_RETRY = 1.0


def register_action(name: str, handler: ExtraAction) -> None:
    """Let another app's action travel to the process running a reply (app start-up)."""
    _extra_actions[name] = handler


class ControlChannel:
    def __init__(self, *, apply: Apply, on_advance: Callable[[int], None]) -> None:
        self.channel: str | None = None
        self._apply = apply
        self._on_advance = on_advance
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._answers: set[asyncio.Task[None]] = set()

    async def open(self) -> str:
        layer = get_channel_layer()
        assert layer is not None
        self.channel = await layer.new_channel("parley.worker.")
        return self.channel

    async def send(
        self, *, worker: str, message_id: int, action: str, by: str, heard_ms: int | None = None
    ) -> dict[str, Any]:
        """Send a control to the process running the reply and wait for its answer."""
        if not redis_conn.enabled():
            raise NotGenerating("this reply is not running any more")
        try:
            channel = await worker_channel(worker)
        except redis_conn.UNAVAILABLE as exc:
            raise Busy("the server is reconnecting; try again shortly") from exc
        if channel is None:
            if await store_age() < settings.PARLEY_WORKER_LEASE:
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
                channel,
                {
                    "type": LAYER_REPLY_CONTROL,
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

    async def listen(self) -> None:
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
                await asyncio.sleep(RECEIVE_RETRY)
                continue
            kind = message.get("type")
            if kind == LAYER_REPLY_CONTROL:
                task = asyncio.create_task(self._answer(message))
                self._answers.add(task)
                task.add_done_callback(self._answered)
            elif kind == LAYER_REPLY_CONTROL_ANSWER:
                future = self._pending.get(message["id"])
                if future is not None and not future.done():
                    future.set_result(message)
            elif kind == LAYER_QUEUE_ADVANCE:
                self._on_advance(int(message["room"]))

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("answering a control failed", exc_info=task.exception())

    async def _answer(self, request: dict[str, Any]) -> None:
        answer: dict[str, Any] = {
            "type": LAYER_REPLY_CONTROL_ANSWER,
            "id": request["id"],
            "ok": True,
        }
        message_id = int(request["message_id"])
        heard_ms = request.get("heard_ms")
        action = request["action"]
        try:
            extra = _extra_actions.get(action)
            if extra is not None:
                answer.update(await extra(message_id, heard_ms))
            else:
                answer.update(await self._apply(message_id, action, request["by"], heard_ms))
        except ParleyError as exc:
            answer.update(ok=False, code=exc.code, status=exc.status, detail=exc.detail)
        layer = get_channel_layer()
        assert layer is not None
        with contextlib.suppress(Exception):
            await layer.send(request["reply_channel"], answer)

    async def aclose(self) -> None:
        tasks = list(self._answers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
