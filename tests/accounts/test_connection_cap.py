"""The per-user connection cap (accounts/connections.py): WebSocket 4429, SSE 429.

A real daphne with a cap of 3. The cap is per user: another user is never refused, and a
closed connection gives its slot back.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from chat.services import room_join
from tests.support.rooms import connect
from tests.support.sse import open_sse
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)

CAP = 3


@pytest.fixture
def capped(daphne_factory, make_user, make_room):
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Capped")
    room_join(room=room, user=bob)
    server = daphne_factory(PARLEY_MAX_CONNECTIONS_PER_USER=str(CAP))
    return server, room, ann_token, bob_token


async def connect_when_free(server, slug: str, token: str, timeout: float = 10.0) -> RoomClient:
    """Connect once the server has given a slot back (it notices a close on its own time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ws = await RoomClient.connect(server.ws_url, slug, token=token)
        refused = asyncio.ensure_future(ws.wait_closed(timeout=timeout))
        hello = asyncio.ensure_future(ws.wait_type("hello", timeout=timeout))
        await asyncio.wait({refused, hello}, return_when=asyncio.FIRST_COMPLETED)
        if hello.done() and not hello.exception():
            refused.cancel()
            return ws
        hello.cancel()
        assert refused.result() == 4429
        await asyncio.gather(hello, refused, return_exceptions=True)
        if loop.time() > deadline:
            raise TimeoutError("the slot was never given back")


async def test_a_user_over_the_cap_is_refused_4429_and_429(capped):
    server, room, ann_token, bob_token = capped
    held = [await connect(server, room, ann_token) for _ in range(CAP)]

    extra = await RoomClient.connect(server.ws_url, room.slug, token=ann_token)
    assert await extra.wait_closed() == 4429
    assert extra.of_type("hello") == []
    async with httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": f"Bearer {ann_token}"}, timeout=10
    ) as http:
        r = await http.get(f"/api/rooms/{room.slug}/events")
        assert r.status_code == 429
        assert r.json()["code"] == "too_many_connections"
        # Plain HTTP is not a connection that is held: it still works.
        assert (await http.get(f"/api/rooms/{room.slug}")).status_code == 200

    # Another user is not affected, and the held connections still work.
    bob = await connect(server, room, bob_token)
    await held[0].send(action="ping", id=1)
    assert (await held[0].wait_type("pong"))["id"] == 1

    # A closed connection gives its slot back.
    await held.pop().close()
    held.append(await connect_when_free(server, room.slug, ann_token))
    for ws in (*held, bob):
        await ws.close()


async def test_an_sse_stream_holds_a_slot_until_it_ends(capped):
    server, room, ann_token, _ = capped
    held = [await connect(server, room, ann_token) for _ in range(CAP - 1)]
    async with httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": f"Bearer {ann_token}"}, timeout=10
    ) as http:
        stream = await open_sse(http, f"/api/rooms/{room.slug}/events")
        await stream.wait_for(lambda e: e["type"] == "hello")
        extra = await RoomClient.connect(server.ws_url, room.slug, token=ann_token)
        assert await extra.wait_closed() == 4429
        await stream.close()
    held.append(await connect_when_free(server, room.slug, ann_token))
    for ws in held:
        await ws.close()


async def test_anonymous_handshakes_are_not_counted(capped):
    server, room, ann_token, _ = capped
    for _ in range(CAP + 2):
        anon = await RoomClient.connect(server.ws_url, room.slug)
        assert await anon.wait_closed() == 4401
    held = [await connect(server, room, ann_token) for _ in range(CAP)]
    for ws in held:
        await ws.close()


async def test_a_stream_gives_its_slot_back_however_it_ends(settings):
    """Started and cancelled (the client left), or never started at all (it left before
    the first byte, so no ``finally`` runs): either way the slot is free again."""
    from accounts.connections import connection_slot_take, connections_held
    from chat.errors import TooManyConnections

    settings.PARLEY_MAX_CONNECTIONS_PER_USER = 1
    user_id = -7
    started = asyncio.Event()

    async def stream():
        yield "retry: 3000\n\n"
        started.set()
        await asyncio.Event().wait()  # an idle stream, until cancelled
        yield "never"

    never = connection_slot_take(user_id=user_id).hold(stream())
    with pytest.raises(TooManyConnections):
        connection_slot_take(user_id=user_id)
    del never  # dropped unstarted
    assert connections_held(user_id) == 0

    held = connection_slot_take(user_id=user_id).hold(stream())

    async def consume() -> None:
        async for _ in held:
            pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    assert connections_held(user_id) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert connections_held(user_id) == 0
