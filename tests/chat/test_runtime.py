"""The process's runtime (chat/runtime.py): one per event loop, its parts closed in order,
and a process that sees many rooms keeps nothing for the rooms that went idle."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator

from chat.events import EventHub, get_hub, group_name
from chat.events.delivery import Fanout, get_fanout
from chat.llm import get_backend
from chat.presence import Presence, get_presence
from chat.replies.manager import ReplyManager, get_manager
from chat.runtime import Runtime, get_runtime
from config.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


class Part:
    def __init__(self, name: str, closed: list[str]) -> None:
        self.name, self.closed = name, closed

    async def aclose(self) -> None:
        self.closed.append(self.name)


async def test_one_runtime_per_loop_closes_its_parts_last_made_first():
    runtime = get_runtime()
    assert get_runtime() is runtime
    closed: list[str] = []

    def make_b(rt: Runtime) -> Part:
        rt.part("a", lambda _: Part("a", closed))  # b needs a: a is made first
        return Part("b", closed)

    b = runtime.part("b", make_b)
    assert runtime.part("b", make_b) is b
    runtime.part("c", lambda _: Part("c", closed))
    await runtime.aclose()
    assert closed == ["c", "b", "a"]
    # A closed runtime is replaced by a fresh one, with a new process identity.
    assert get_runtime() is not runtime
    assert get_runtime().worker_id != runtime.worker_id


async def test_hub_fanout_presence_and_manager_are_parts_of_one_runtime():
    runtime = get_runtime()
    manager = get_manager()
    assert runtime.get(ReplyManager) is manager
    assert runtime.get(Fanout) is get_fanout() is manager.fanout
    assert runtime.get(EventHub) is get_hub() is get_fanout().hub
    assert runtime.get(Presence) is get_presence()
    assert manager.worker_id == get_presence().worker_id == runtime.worker_id
    await runtime.aclose()


async def _join(slug: str, token: str) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(
        application, f"/ws/rooms/{slug}/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    connected, _ = await comm.connect()
    assert connected
    hello = json.loads(await comm.receive_from(5))
    assert hello["type"] == "hello"
    return comm


async def test_subscribing_to_a_room_does_not_start_the_reply_manager(make_user, make_room):
    user, token = await sync_to_async(make_user)("ann")
    room = await sync_to_async(make_room)(user)
    comm = await _join(room.slug, token)
    try:
        assert get_runtime().get(ReplyManager) is None
    finally:
        await comm.disconnect()
        await get_runtime().aclose()


async def test_a_process_keeps_nothing_for_rooms_that_went_idle(
    make_user, make_room, settings, llm
):
    settings.LLM_BACKEND = "openai"
    settings.OPENAI_BASE_URL = llm.base_url
    settings.OPENAI_API_KEY = "test-key"
    settings.LLM_MODEL = "fake-model"
    settings.PARLEY_RESYNC_INTERVAL = 0.05
    settings.PARLEY_ROOM_LINGER = 0.1
    get_backend.cache_clear()
    user, token = await sync_to_async(make_user)("ann")
    rooms = [await sync_to_async(make_room)(user, name=f"Room {i}") for i in range(5)]
    fanout, hub, manager = get_fanout(), get_hub(), get_manager()
    try:
        for room in rooms:
            comm = await _join(room.slug, token)
            await comm.send_to(text_data=json.dumps({"action": "send", "text": "hi @assistant"}))
            async with asyncio.timeout(10):
                while True:
                    event = json.loads(await comm.receive_from(10))
                    if event["type"] == "generation" and event["state"] == "complete":
                        break
            await comm.disconnect()
        assert fanout.admission.rooms  # kept while the rooms were live
        # Each room's channel closes after the linger (its timer ends then), and takes its
        # caches with it; each room's reply worker ends with its last reply.
        timers = [t for ch in fanout.rooms.values() for t in ch._tasks if "timer" in t.get_name()]
        async with asyncio.timeout(10):
            await asyncio.gather(*timers, *manager._workers.values())
        assert fanout.rooms == {}
        assert manager.queues._queues == {}
        assert manager._workers == {}
        assert fanout.admission.rooms == {}
        # Each closed room channel left its room's group (no subscription leaks).
        layer = get_channel_layer()
        if isinstance(layer, InMemoryChannelLayer):
            assert not any(layer.groups.get(group_name(room.pk)) for room in rooms)
        assert hub._locks == {}
        assert getattr(hub.store, "_floors", {}) == {}
        assert get_presence()._rooms == {}
    finally:
        await get_runtime().aclose()
        get_backend.cache_clear()
