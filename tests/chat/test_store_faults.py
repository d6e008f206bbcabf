"""Faults of the event store and of whole processes, with real daphnes and a real Redis.

Each test owns what it breaks: a redis-server it kills and restarts (tests/support/
redis_server.py), daphne processes it kills. The fake model server streams slowly enough
for a reply to span the fault.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import TERMINAL_STATUSES, Message, Role, Room
from tests.support.daphne import DaphneServer
from tests.support.openai_server import Scenario
from tests.support.redis_server import RedisServer
from tests.support.rooms import ask, connect, stored
from tests.support.wsclient import RoomClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

# Resync quickly; notice dead processes within a couple of seconds.
FAST = {"PARLEY_RESYNC_INTERVAL": "0.5", "PARLEY_WORKER_LEASE": "3", "PARLEY_WORKER_HEARTBEAT": "1"}


@pytest.fixture
def private_redis(sole_deployment: None) -> Any:
    """A redis-server this test may kill; the session's daphne (on another Redis, same
    database) is stopped meanwhile (tests/conftest.py)."""
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def members(make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    cat, cat_token = make_user("cat")
    room = make_room(ann, "Faults")
    room_join(room=room, user=bob)
    room_join(room=room, user=cat)
    return room, {"ann": ann_token, "bob": bob_token, "cat": cat_token}


def view_of(client: RoomClient, message_id: str) -> tuple[str, str | None]:
    """What a member's screen shows for a reply: (text, status), built the way a client
    builds it from the events it got (a snapshot replaces, a delta appends)."""
    text, status = "", None
    for event in client.events:
        kind = event.get("type")
        if kind == "snapshot":
            for message in event["messages"]:
                if message["id"] == message_id:
                    text, status = message["text"], message["status"]
        elif kind == "message" and event["message"]["id"] == message_id:
            text, status = event["message"]["text"], event["message"]["status"]
        elif kind == "delta" and event["message_id"] == message_id:
            text += event["text"]
        elif kind == "generation" and event["message_id"] == message_id:
            status = event["state"]
    return text, status


def terminal_events(client: RoomClient, message_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in client.of_type("generation")
        if e["message_id"] == message_id and e["state"] in TERMINAL_STATUSES
    ]


async def until_ended(client: RoomClient, message_id: str, timeout: float = 60) -> None:
    """Until the member's view shows the reply ended (by its event or a snapshot)."""
    await client.wait_for(lambda e: view_of(client, message_id)[1] in TERMINAL_STATUSES, timeout)


# Two timings of the same restart. "sweeper-first": the owner beats once a second and
# the other process sweeps five times a second, so after the restart wipes the leases it
# looks long before the owner's next beat, and only the grace after the store's return
# keeps it from calling the reply dead (defect: a false interrupt, then a second end).
# "owner-first": the owner beats fast and the other sweeps rarely, so no sweep comes near
# (defect: the live copy lost with Redis leaves a hole in every member's text).
TIMINGS = {
    "sweeper-first": ({"PARLEY_WORKER_HEARTBEAT": "1"}, {"PARLEY_WORKER_HEARTBEAT": "0.2"}),
    "owner-first": ({"PARLEY_WORKER_HEARTBEAT": "0.2"}, {"PARLEY_WORKER_HEARTBEAT": "2"}),
}


@pytest.mark.parametrize("timing", list(TIMINGS))
async def test_redis_restart_mid_reply_leaves_every_view_whole_with_one_end(
    daphne_factory, private_redis, llm, members, timing
):
    room, tokens = members
    owner_env, sweeper_env = TIMINGS[timing]
    owner = daphne_factory(REDIS_URL=private_redis.url, **{**FAST, **owner_env})
    sweeper = daphne_factory(REDIS_URL=private_redis.url, **{**FAST, **sweeper_env})
    pieces = [f"w{i} " for i in range(500)]
    llm.set_default(Scenario.slow(pieces, delay=0.01))
    ann = await connect(owner, room, tokens["ann"])
    bob = await connect(sweeper, room, tokens["bob"])
    cat = await connect(sweeper, room, tokens["cat"])
    clients = (ann, bob, cat)
    try:
        reply = await ask(ann)  # runs on the owner's process
        # Past a database save (1 s), so the database copy is behind the live one.
        await bob.wait_for(lambda e: len(bob.text_of(reply)) > 600, timeout=20)
        private_redis.restart()
        for client in clients:
            await until_ended(client, reply)
        saved = await stored(reply)
        for client in clients:
            assert view_of(client, reply)[0] == saved.text  # no hole in anyone's text
        for client in clients:
            assert [e["state"] for e in terminal_events(client, reply)] == ["complete"]
        assert (saved.status, saved.text) == ("complete", "".join(pieces))
    finally:
        for client in clients:
            await client.close()


async def test_outage_longer_than_the_retry_ends_the_reply_with_an_event_once_back(
    daphne_factory, private_redis, llm, members
):
    room, tokens = members
    server = daphne_factory(REDIS_URL=private_redis.url, PARLEY_STORE_RETRY_SECONDS="1", **FAST)
    llm.set_default(Scenario.endless(("e ",), interval=0.01))
    ann = await connect(server, room, tokens["ann"])
    try:
        reply = await ask(ann)
        await ann.wait_type("delta", message_id=reply)
        private_redis.kill()
        # Redis comes back empty and seeds each room's seq from this floor.
        floor = await sync_to_async(
            lambda: Room.objects.values_list("seq_reserved", flat=True).get(pk=room.pk)
        )()
        # The reply gives up on the store (its process logs why) while the store is away.
        await asyncio.to_thread(server.wait_log, f"reply {reply}", 30)
        # Its terminal event now waits for the store for as long as it takes; a member's
        # send meanwhile is still told to try again within the retry bound, and stores
        # nothing (it used to wait behind that event for the whole outage).
        before = await sync_to_async(Message.objects.filter(room=room).count)()
        async with httpx.AsyncClient(base_url=server.http_url, timeout=20) as http:
            refused = await http.post(
                f"/api/rooms/{room.slug}/messages",
                headers={"Authorization": f"Bearer {tokens['bob']}"},
                json={"text": "anyone there?"},
            )
        assert (refused.status_code, refused.json()["code"]) == (503, "busy"), refused.text
        assert await sync_to_async(Message.objects.filter(room=room).count)() == before
        private_redis.start()
        # The member connected throughout resynchronises across the outage (its log is
        # gone) and still gets the reply's one terminal event, not only a snapshot.
        end = await ann.wait_terminal(reply, timeout=60)
        saved = await stored(reply)
        assert saved.status == "failed"
        assert "event store" in end["reason"]
        assert view_of(ann, reply) == (saved.text, "failed")
        assert len(terminal_events(ann, reply)) == 1
        # The end was recorded once the store came back: a member replaying from the
        # store's return gets it, with a reason to show.
        late = await connect(server, room, tokens["bob"], after=floor)
        try:
            end = await late.wait_terminal(reply)
            assert end["state"] == "failed"
            assert "event store" in end["reason"]
            assert len(terminal_events(late, reply)) == 1
        finally:
            await late.close()
    finally:
        await ann.close()


async def test_a_handshake_into_a_warm_room_during_an_outage_is_told_to_try_again(
    daphne_factory, private_redis, members
):
    """The room is open in the process (a member is in it) when its store goes away: a
    new member is refused as for a cold room (1013; SSE 503 with Retry-After), not
    welcomed with a hello and then left in silence for the whole outage."""
    room, tokens = members
    server = daphne_factory(REDIS_URL=private_redis.url, **FAST)
    ann = await connect(server, room, tokens["ann"])
    try:
        private_redis.kill()
        bob = await RoomClient.connect(server.ws_url, room.slug, token=tokens["bob"])
        assert await bob.wait_closed(20) == 1013
        assert bob.of_type("hello") == []
        async with httpx.AsyncClient(base_url=server.http_url, timeout=20) as http:
            response = await http.get(
                f"/api/rooms/{room.slug}/events",
                headers={"Authorization": f"Bearer {tokens['cat']}"},
            )
        assert (response.status_code, response.json()["code"]) == (503, "busy")
        assert int(response.headers["Retry-After"]) >= 1
        # The member already in is not cut off by the refusals.
        await ann.send(action="ping", id="still-in")
        await ann.wait_type("pong", id="still-in")
        private_redis.start()
        # Once the store is back, the same handshake is welcomed.
        again = await connect(server, room, tokens["bob"])
        await again.close()
    finally:
        await ann.close()


def count_sent(room: Room, client_id: str) -> int:
    return Message.objects.filter(room=room, role=Role.USER, client_id=client_id).count()


async def test_busy_means_nothing_was_stored_and_a_resend_never_duplicates(
    daphne_factory, private_redis, llm, members
):
    room, tokens = members
    server = daphne_factory(REDIS_URL=private_redis.url, PARLEY_STORE_RETRY_SECONDS="1")
    headers = {"Authorization": f"Bearer {tokens['ann']}"}
    url = f"{server.http_url}/api/rooms/{room.slug}/messages"
    body = {"text": "hello @assistant", "client_id": "resend-1"}
    ann = await connect(server, room, tokens["ann"])
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        try:
            private_redis.kill()
            r = await http.post(url, json=body)
            assert (r.status_code, r.json()["code"]) == (503, "busy")
            assert await sync_to_async(count_sent)(room, "resend-1") == 0
            private_redis.start()
            # The client retries, as the contract says: one message, one reply.
            mark = len(ann.events)
            first = await http.post(url, json=body)
            assert first.status_code == 202, first.text
            again = await http.post(url, json=body)
            assert again.status_code == 202, again.text
            assert again.json()["message"]["id"] == first.json()["message"]["id"]
            assert again.json()["reply"]["id"] == first.json()["reply"]["id"]
            # Over the WebSocket too: the same client_id is the same message.
            await ann.send(action="send", text=body["text"], client_id="resend-1")
            await ann.send(action="ping", id="after-resend")
            await ann.wait_type("pong", id="after-resend")
            # The reply may have ended before the pong or after it.
            await ann.wait_terminal(first.json()["reply"]["id"], start=mark)
            assert await sync_to_async(count_sent)(room, "resend-1") == 1
            mine = [e for e in ann.of_type("message") if e["message"]["client_id"] == "resend-1"]
            assert len(mine) == 1
            # The same client_id with other text is not a resend: refused, not swallowed.
            other = await http.post(url, json={"text": "other", "client_id": "resend-1"})
            assert (other.status_code, other.json()["code"]) == (409, "conflict")
        finally:
            await ann.close()


async def api_status(server: DaphneServer, token: str, message_id: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{server.http_url}/api/messages/{message_id}",
            headers={"Authorization": f"Bearer {token}"},
        )
    return str(r.json()["status"])


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "one-process"])
async def test_a_fresh_process_interrupts_orphans_with_nobody_connected(
    daphne_factory, private_redis, llm, members, with_redis
):
    room, tokens = members
    env = {**FAST, "REDIS_URL": private_redis.url if with_redis else ""}
    first = daphne_factory(**env)
    llm.set_default(Scenario.endless(("o ",), interval=0.01))
    ann = await connect(first, room, tokens["ann"])
    try:
        reply = await ask(ann)
        await ann.wait_type("delta", message_id=reply)
    finally:
        await ann.close()
    first.kill()  # every process is gone
    assert await sync_to_async(lambda: Message.objects.get(pk=int(reply)).status)() in (
        "streaming",
        "paused",
    )
    fresh = daphne_factory(**env)
    started = time.monotonic()  # it listens: the process has started
    # Nobody connects: the process sweeps on its own.
    await asyncio.to_thread(fresh.wait_log, f"reply {reply} lost its process", 20)
    elapsed = time.monotonic() - started
    assert await api_status(fresh, tokens["ann"], reply) == "interrupted"
    # Within the lease of the process starting (plus one sweep interval for the check).
    lease, beat = float(FAST["PARLEY_WORKER_LEASE"]), float(FAST["PARLEY_WORKER_HEARTBEAT"])
    assert elapsed < lease + beat + 1.0


async def test_a_reply_ended_elsewhere_stops_without_a_second_end(daphne, llm, members):
    """The database is the judge of a reply's end: when a survivor's sweep has marked it
    interrupted (here: the same conditional update, run by the test), its owner stops at
    its next save and announces nothing, instead of streaming on to a second end."""
    from chat.replies import db

    room, tokens = members
    llm.set_default(Scenario.endless(("x ",), interval=0.01))
    ann = await connect(daphne, room, tokens["ann"])
    try:
        start = len(llm.requests)
        reply = await ask(ann)
        await ann.wait_type("delta", message_id=reply)
        changed = await sync_to_async(db.interrupt)([(room.pk, int(reply))])
        assert changed == [(room.pk, int(reply))]
        # The owner finds out at its next save (PARLEY_SAVE_INTERVAL, 1 s) and lets go of
        # the model at once.
        await asyncio.to_thread(llm.wait_disconnect, start, 10)
        await ann.send(action="ping", id="after-stop")
        await ann.wait_type("pong", id="after-stop")
        assert terminal_events(ann, reply) == []
        assert (await stored(reply)).status == "interrupted"
    finally:
        await ann.close()
