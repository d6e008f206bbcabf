"""The Redis event store against a real redis-server, in process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis

from chat.events import EventHub
from chat.events.redis_store import RedisEventStore
from tests.support.redis_server import LossyProxy, RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


class _Seen(logging.Handler):
    """Sets an asyncio event when a log record contains ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


@pytest.fixture
def room(make_user: Any, make_room: Any) -> Any:
    owner, _ = make_user("ann")
    return make_room(owner, "Lossy")


async def test_an_emit_retried_after_a_lost_answer_is_recorded_once(
    room: Any, settings: Any
) -> None:
    server = RedisServer().start()
    proxy = await LossyProxy(server.port).start()
    settings.REDIS_URL = proxy.url  # this test's event loop gets a client for the proxy
    seen = _Seen("event store unavailable; retrying")
    logging.getLogger("chat.events").addHandler(seen)
    try:
        hub = EventHub(RedisEventStore())
        await hub.emit(room.pk, {"type": "note", "n": 0})  # seeds the room's seq
        # Every answer is lost (the client's own retries too) until the hub retries.
        proxy.losing = True
        emit = asyncio.create_task(hub.emit(room.pk, {"type": "note", "n": 1}))
        await asyncio.wait_for(seen.event.wait(), 30)
        proxy.losing = False
        event = await asyncio.wait_for(emit, 30)
        assert proxy.lost >= 1
        direct = redis.Redis(port=server.port)
        log = direct.xrange(f"parley:r:{room.pk}:log")
        bodies = [entry[1][b"e"] for entry in log]
        assert bodies.count(b'{"type":"note","n":1}') == 1, bodies
        assert int(direct.get(f"parley:r:{room.pk}:seq")) == event["seq"]
    finally:
        logging.getLogger("chat.events").removeHandler(seen)
        await proxy.stop()
        server.kill()
