"""The delivery path (chat/events/delivery.py) over real daphne processes.

What a member notices: every token of a quiet room arrives as its own frame; a fast model
is merged, never lost; a reader who stops reading is cut off without growing the server;
an idle room costs no store reads per connection; access that ends closes the connection;
members leaving mid-reply break nothing; a store outage at the handshake says "try again".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.redis import room_key
from tests.support.openai_server import Scenario
from tests.support.redis_server import RedisServer
from tests.support.rooms import ask, connect, stored
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def room_of(make_user, make_room):
    """``room_of(n)`` → (room, [(user, token)] * n): a room whose members are n users."""
    from chat.services import room_join

    def make(count: int, name: str = "Crowd"):
        people = [make_user(f"m{i}-{time.monotonic_ns()}") for i in range(count)]
        room = make_room(people[0][0], name)
        for user, _ in people[1:]:
            room_join(room=room, user=user)
        return room, people

    return make


def deltas(client: RoomClient, message_id: str) -> list[str]:
    return [
        e["text"] for e in client.events if e["type"] == "delta" and e["message_id"] == message_id
    ]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_quiet_room_gets_every_token_as_its_own_frame(daphne, llm, room_of, settings):
    # The model writes its next token only once the member has the last one (the test
    # steps it, no clock), so however loaded the machine, every token reaches an idle
    # room's outbound alone: each must leave as its own frame, and promptly, not held
    # back for company (a hold would show as a median latency past the merge window).
    pieces = [f"w{i} " for i in range(15)]
    llm.set_default(Scenario.stepped(pieces))
    room, people = await sync_to_async(room_of)(1)
    c = await connect(daphne, room, people[0][1])
    reply = await ask(c, ask_ai=True)
    received = []
    for piece in pieces:
        llm.step()
        event = await c.wait_for(lambda e: e["type"] == "delta" and e["message_id"] == reply)
        received.append(time.monotonic())
        assert event["text"] == piece
    await c.wait_terminal(reply)
    assert deltas(c, reply) == pieces
    written = llm.requests[-1].piece_times
    latency = statistics.median(r - w for r, w in zip(received, written, strict=True))
    assert latency < settings.PARLEY_DELTA_MAX_WAIT
    await c.close()


async def test_a_fast_model_is_merged_for_a_crowd_and_nothing_is_lost(daphne, llm, room_of):
    pieces = [f"p{i} " for i in range(400)]
    llm.set_default(Scenario.normal(pieces))  # all at once: faster than any fan-out
    room, people = await sync_to_async(room_of)(30)
    clients = [await connect(daphne, room, token) for _, token in people]
    reply = await ask(clients[0], ask_ai=True)
    for c in clients:
        await c.wait_terminal(reply)
    saved = await stored(reply)
    for c in clients:
        frames = deltas(c, reply)
        assert "".join(frames) == "".join(pieces) == saved.text
        assert len(frames) < len(pieces)  # merged while earlier frames were being written
        seqs = [e["seq"] for e in c.durable()]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for c in clients:
        await c.close()


async def test_slow_sse_readers_are_cut_off_and_do_not_grow_the_server(
    daphne_factory, llm, room_of
):
    # The room's own history is held to a few hundred events, so what the server grows
    # by is what the stalled readers cost, not the second 9.6 MB reply's log and frames.
    server = daphne_factory(
        PARLEY_WS_MAX_BUFFER=str(256 * 1024),
        PARLEY_LOG_MAX_EVENTS="200",
        PARLEY_FANOUT_RECENT_FRAMES="200",
    )
    assert server.proc is not None
    piece = "x" * 8000 + " "
    pieces = [piece] * 1200  # a 9.6 MB reply
    llm.set_default(Scenario.slow(pieces, delay=0.001))
    room, people = await sync_to_async(room_of)(11)
    watcher = await connect(server, room, people[0][1])
    # The same reply once with nobody stalled: what the reply itself costs the server.
    reply = await ask(watcher, ask_ai=True)
    await watcher.wait_terminal(reply, timeout=60)
    readers = []
    for _, token in people[1:]:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", server.port))
        s.sendall(
            f"GET /api/rooms/{room.slug}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        readers.append(s)
    # Every reader is subscribed once its presence is known.
    await watcher.wait_for(
        lambda e: e.get("type") == "presence" and len(e["online"]) == len(people), timeout=20
    )
    before = rss_kb(server.proc.pid)
    reply = await ask(watcher, ask_ai=True)
    await watcher.wait_terminal(reply, timeout=60)
    grown_mb = (rss_kb(server.proc.pid) - before) / 1024
    # Unbounded, ten stalled readers would hold the whole reply each (96 MB).
    assert grown_mb < 30, f"the server grew {grown_mb:.0f} MB for ten stalled readers"
    assert "".join(deltas(watcher, reply)) == "".join(pieces)

    def drain(s: socket.socket) -> int:
        """Read until the server ends the response: the connection dropped (the transport
        bound) or the response's last chunk (the subscriber's own buffer bound)."""
        s.settimeout(12)  # longer than the SSE ping interval: an open stream speaks
        deadline = time.monotonic() + 20
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while time.monotonic() < deadline and (chunk := s.recv(65536)):
                got += chunk
                if got.endswith(b"\r\n0\r\n\r\n"):
                    break
        return len(got)

    for s in readers:
        received = await asyncio.to_thread(drain, s)  # returns: the server ended the response
        assert received < len(piece) * len(pieces)
        s.close()
    await watcher.close()


async def test_an_idle_room_reads_the_store_once_per_interval_not_per_connection(
    daphne_factory, room_of
):
    redis = RedisServer().start()
    try:
        interval = 0.3
        server = daphne_factory(REDIS_URL=redis.url, PARLEY_RESYNC_INTERVAL=str(interval))
        room, people = await sync_to_async(room_of)(20)
        clients = [await connect(server, room, token) for _, token in people]
        seq_key = room_key(room.pk, "seq").encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", redis.port)
        writer.write(b"MONITOR\r\n")
        await reader.readline()  # +OK
        reads: list[float] = []
        while len(reads) < 6:
            line = await asyncio.wait_for(reader.readline(), 10)
            if b'"GET"' in line.upper() and seq_key in line:
                reads.append(time.monotonic())
        writer.close()
        # Twenty connections with a timer each would read the head twenty times an interval.
        assert reads[-1] - reads[0] >= 4 * interval, reads
        for c in clients:
            await c.close()
    finally:
        redis.kill()


async def test_access_that_ends_closes_open_connections(daphne_factory, room_of, make_user):
    from accounts.models import ApiToken
    from chat.models import Membership

    server = daphne_factory(PARLEY_RESYNC_INTERVAL="0.5")
    room, people = await sync_to_async(room_of)(4)
    (_, owner_token), (revoked, revoked_token), (removed, removed_token), (gone, gone_token) = (
        people
    )
    owner = await connect(server, room, owner_token)
    a = await connect(server, room, revoked_token)
    b = await connect(server, room, removed_token)
    c = await connect(server, room, gone_token)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        async with http.stream(
            "GET",
            f"/api/rooms/{room.slug}/events",
            headers={"Authorization": f"Bearer {removed_token}"},
        ) as sse:
            lines = sse.aiter_lines()
            while "hello" not in await anext(lines):
                pass

            def revoke() -> None:
                from django.utils import timezone

                ApiToken.objects.filter(user=revoked).update(revoked=timezone.now())
                Membership.objects.filter(room=room, user=removed).delete()
                type(gone).objects.filter(pk=gone.pk).update(is_active=False)

            await sync_to_async(revoke)()
            cut_at = time.monotonic()
            assert await a.wait_closed(5) == 4401
            assert await b.wait_closed(5) == 4403
            assert await c.wait_closed(5) == 4401
            rest = [line async for line in lines]  # the stream ends
            assert time.monotonic() - cut_at < 5
            assert any('"code":"forbidden"' in line for line in rest)
    await owner.send(action="ping", id="still-here")
    assert (await owner.wait_type("pong", id="still-here"))["type"] == "pong"
    await owner.close()


async def test_members_leaving_mid_reply_break_nothing(daphne, llm, room_of):
    llm.set_default(Scenario.slow([f"s{i} " for i in range(200)], delay=0.01))
    room, people = await sync_to_async(room_of)(30)
    stayer = await connect(daphne, room, people[0][1])
    leavers = [await connect(daphne, room, token) for _, token in people[1:]]
    reply = await ask(stayer, ask_ai=True)
    await stayer.wait_type("delta", message_id=reply)
    departures = len(stayer.events)
    for c in leavers:
        c.conn.transport.abort()  # gone at once, mid-frame, as a dropped network would
        await asyncio.sleep(0)  # let the reply go on between departures (not a sync)
    await stayer.wait_terminal(reply, timeout=30)
    me = people[0][0].username
    # Presence after the departures, which may have come before the reply's end or after.
    await stayer.wait_for(
        lambda e: e.get("type") == "presence" and e["online"] == [me], start=departures
    )
    assert "Traceback" not in daphne.log()
    assert "Attempt to send on a closed protocol" not in daphne.log()
    await stayer.close()


async def test_a_handshake_during_a_store_outage_is_told_to_try_again(daphne_factory, room_of):
    redis = RedisServer().start()
    server = daphne_factory(REDIS_URL=redis.url)
    room, people = await sync_to_async(room_of)(1)
    token = people[0][1]
    redis.kill()
    c = await RoomClient.connect(server.ws_url, room.slug, token=token)
    assert await c.wait_closed(20) == 1013
    async with httpx.AsyncClient(base_url=server.http_url, timeout=20) as http:
        response = await http.get(
            f"/api/rooms/{room.slug}/events", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 503
    assert response.json()["code"] == "busy"
    assert int(response.headers["Retry-After"]) >= 1
