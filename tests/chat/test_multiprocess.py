"""Several daphne processes on one Redis: the guarantees of docs/protocol.md "The event
stream" across them.

Runs against the machine's Redis in CI (REDIS_URL); the restart test runs its own
redis-server so it can kill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from chat.models import TERMINAL_STATUSES
from tests.support.openai_server import Scenario
from tests.support.redis_server import RedisServer
from tests.support.rooms import ask, connect, stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

# Short leases so a killed process is noticed within seconds.
FAST_LEASES = {
    "PARLEY_WORKER_HEARTBEAT": "0.3",
    "PARLEY_WORKER_LEASE": "1.5",
    "PARLEY_RESYNC_INTERVAL": "0.5",
}


@pytest.fixture
def pair(daphne_factory, redis_url):
    """Two daphne processes sharing the test database and Redis."""
    return (
        daphne_factory(REDIS_URL=redis_url, **FAST_LEASES),
        daphne_factory(REDIS_URL=redis_url, **FAST_LEASES),
    )


@pytest.fixture
def members(make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Shared")
    room_join(room=room, user=bob)
    return room, ann_token, bob_token


async def aget(url: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, headers=headers)


def assert_contiguous(events: list[dict]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


async def test_members_on_two_processes_see_the_same_ordered_stream(pair, llm, members):
    one, two = pair
    room, ann_token, bob_token = members
    llm.set_default(Scenario.slow([f"t{i} " for i in range(30)], delay=0.005))
    ann = await connect(one, room, ann_token)
    bob = await connect(two, room, bob_token)
    try:
        # Both ask at once, from different processes: replies queue one after the other.
        first, second = await asyncio.gather(ask(ann, "from ann"), ask(bob, "from bob"))
        # Either may run first: each end is looked for in everything the member got.
        for client in (ann, bob):
            for reply in (first, second):
                await client.wait_terminal(reply, start=0)
        assert ann.durable() == bob.durable()
        assert_contiguous(ann.durable())
        for reply in (first, second):
            assert (
                ann.text_of(reply)
                == (await stored(reply)).text
                == "".join(f"t{i} " for i in range(30))
            )
        # One reply at a time across processes: the second started after the first ended.
        states = [(e["message_id"], e["state"]) for e in ann.of_type("generation")]
        firsts = [s for s in states if s[1] == "streaming"]
        ends = [s for s in states if s[1] == "complete"]
        assert states.index(ends[0]) < states.index(firsts[1])
    finally:
        await ann.close()
        await bob.close()


async def test_reconnect_to_the_other_process_gets_exactly_the_rest(pair, llm, members):
    one, two = pair
    room, ann_token, bob_token = members
    pieces = [f"r{i} " for i in range(60)]
    llm.set_default(Scenario.slow(pieces, delay=0.01))
    ann = await connect(one, room, ann_token)
    bob = await connect(one, room, bob_token)
    try:
        reply = await ask(ann)
        await bob.wait_for(lambda e: e.get("type") == "delta" and len(bob.text_of(reply)) > 20)
        await bob.close()
        before = bob.durable()
        last = before[-1]["seq"]
        again = await connect(two, room, bob_token, after=last)
        try:
            await again.wait_terminal(reply)
            after = again.durable()
            assert after[0]["seq"] == last + 1  # no gap, no duplicate at the seam
            assert_contiguous(before + after)
            text = bob.text_of(reply) + again.text_of(reply)
            assert text == "".join(pieces) == (await stored(reply)).text
        finally:
            await again.close()
    finally:
        await ann.close()


async def test_stop_sent_to_the_other_process_closes_upstream(pair, llm, members):
    one, two = pair
    room, ann_token, bob_token = members
    llm.set_default(Scenario.endless(("x ",), interval=0.01))
    ann = await connect(one, room, ann_token)  # the owner, on the other process
    bob = await connect(two, room, bob_token)
    try:
        start = len(llm.requests)
        reply = await ask(bob)  # runs on process two
        await ann.wait_type("delta", message_id=reply)
        stop_sent = time.monotonic()
        await ann.send(action="stop", message_id=reply)
        record = await asyncio.to_thread(llm.wait_disconnect, start, 5)
        assert record.disconnected_at - stop_sent < 0.1
        stopped = await bob.wait_terminal(reply)
        assert (stopped["state"], stopped["by"]) == ("stopped", "ann")
        assert (await stored(reply)).text == bob.text_of(reply) == ann.text_of(reply)
    finally:
        await ann.close()
        await bob.close()


async def test_deleting_a_question_whose_reply_streams_on_the_other_process(pair, llm, members):
    """A delete (chat/lifecycle.py) whose reply runs in the other process: the stop goes
    through that process's control channel, and members on both get the reply stopped by
    the deleter with the text stored, then the tombstone, and no delta after the stop."""
    one, two = pair
    room, ann_token, bob_token = members
    llm.set_default(Scenario.endless(("x ",), interval=0.01))
    ann = await connect(one, room, ann_token)  # the owner, on the other process
    bob = await connect(two, room, bob_token)
    try:
        reply = await ask(bob)  # runs on process two
        question = str((await stored(reply)).reply_to_id)
        await ann.wait_type("delta", message_id=reply)
        await ann.send(action="delete", message_id=question, id="del")
        for member in (ann, bob):
            await member.wait_type("delete", message_id=question)
        # A message after the delete: once both members have it, every earlier event has
        # reached them (each got them in seq order).
        llm.set_default(Scenario.normal(["ok"]))
        marker = await ask(bob, "-- marker --")
        kept = (await stored(reply)).text
        for member in (ann, bob):
            await member.wait_for(about(marker), start=0)
            assert [e for e in member.of_type("error") if e.get("id") == "del"] == []
            durable = member.durable()
            ended = next(
                i
                for i, e in enumerate(durable)
                if e["type"] == "generation"
                and e["message_id"] == reply
                and e["state"] in TERMINAL_STATUSES
            )
            end = durable[ended]
            assert (end["state"], end["by"], end["reason"]) == ("stopped", "ann", "user")
            after = [(e["type"], e.get("message_id")) for e in durable[ended + 1 :]]
            assert ("delete", question) in after  # the tombstone after the stop
            assert ("delta", reply) not in after
            assert member.text_of(reply) == kept
    finally:
        await ann.close()
        await bob.close()


async def test_a_stalled_client_is_cut_off_with_4408_and_others_go_on(
    daphne_factory, redis_url, llm, members
):
    server = daphne_factory(REDIS_URL=redis_url, PARLEY_WS_MAX_BUFFER="65536")
    room, ann_token, bob_token = members
    llm.set_default(Scenario.endless(("y" * 2000,), interval=0.002))
    # A client that stops reading: a tiny receive buffer, and it never calls recv.
    # (Set before connecting: shrinking a window already advertised stalls TCP itself.)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    stalled = await websockets.connect(
        f"{server.ws_url}/ws/rooms/{room.slug}/",
        sock=sock,
        max_queue=1,
        additional_headers={"Authorization": f"Bearer {bob_token}"},
    )
    ann = await connect(server, room, ann_token)
    try:
        reply = await ask(ann)
        await asyncio.to_thread(server.wait_log, "fell 65536 bytes behind", 60)

        async def drain() -> int | None:
            # The stalled client reads again: its backlog, then the 4408 close.
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await stalled.recv()
            return stalled.close_code

        draining = asyncio.create_task(drain())
        # The reply still streams to the member who reads, and the server still answers.
        count = len(ann.of_type("delta"))
        await ann.wait_for(
            lambda e: e.get("type") == "delta" and len(ann.of_type("delta")) > count + 5
        )
        await ann.send(action="ping", id="alive")
        await ann.wait_type("pong", id="alive")
        await ann.send(action="stop", message_id=reply)
        await ann.wait_terminal(reply)
        assert await asyncio.wait_for(draining, 30) == 4408
    finally:
        await ann.close()
        await stalled.close()


async def test_killed_process_leaves_its_reply_interrupted_with_saved_text(pair, llm, members):
    one, two = pair
    room, ann_token, bob_token = members
    llm.set_default(Scenario.endless(("z ",), interval=0.01))
    ann = await connect(one, room, ann_token)
    bob = await connect(two, room, bob_token)
    try:
        reply = await ask(ann)  # runs on process one
        first = await bob.wait_type("delta", message_id=reply)
        started = time.monotonic()
        # Stream for longer than the save interval (1 s) so some text is saved.
        await bob.wait_for(lambda e: e.get("type") == "delta" and time.monotonic() - started > 1.5)
        one.kill()
        end = await bob.wait_terminal(reply, timeout=30)
        assert end["state"] == "interrupted"
        saved = await stored(reply)
        assert saved.status == "interrupted"
        assert saved.text  # what was saved before the crash is kept
        assert bob.text_of(reply).startswith(saved.text)
        assert first["text"]
        r = await aget(f"{two.http_url}/api/messages/{reply}", token=bob_token)
        assert r.json()["status"] == "interrupted"
    finally:
        await ann.close()
        await bob.close()


async def test_a_delete_whose_reply_cannot_be_stopped_still_tombstones(pair, llm, members):
    """The process running the reply is killed and a delete comes at once to the other:
    the stop cannot reach the reply (no answer within PARLEY_CONTROL_TIMEOUT), yet the
    tombstone stands and every member hears it; the orphan sweep ends the reply."""
    one, two = pair
    room, ann_token, bob_token = members
    llm.set_default(Scenario.endless(("z ",), interval=0.01))
    ann = await connect(one, room, ann_token)
    bob = await connect(two, room, bob_token)
    try:
        reply = await ask(ann)  # runs on process one
        await bob.wait_type("delta", message_id=reply)
        question = str((await stored(reply)).reply_to_id)
        one.kill()
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.delete(
                f"{two.http_url}/api/messages/{question}",
                headers={"Authorization": f"Bearer {ann_token}"},
            )
        assert r.status_code == 200, r.text
        assert r.json()["message"]["deleted"] is True
        await bob.wait_type("delete", message_id=question)
        end = await bob.wait_terminal(reply, timeout=30, start=0)  # before or after it
        assert end["state"] == "interrupted"
        assert (await stored(question)).deleted_at is not None
    finally:
        await ann.close()
        await bob.close()


async def test_redis_restart_mid_reply(daphne_factory, llm, members, sole_deployment):
    private = RedisServer().start()
    try:
        server = daphne_factory(REDIS_URL=private.url, **FAST_LEASES)
        room, ann_token, bob_token = members
        pieces = [f"s{i} " for i in range(300)]
        llm.set_default(Scenario.slow(pieces, delay=0.01))
        bob = await connect(server, room, bob_token)
        ann = await connect(server, room, ann_token)
        reply = await ask(ann)
        await bob.wait_type("delta", message_id=reply)
        private.kill()
        ready = await aget(server.http_url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["channel_layer"] != "ok"
        private.start()
        # The reply ends cleanly (complete, or failed if Redis stayed away too long), and a
        # member resynchronises: a snapshot, then the end of the reply.
        end = await bob.wait_for(
            lambda e: (
                (
                    e.get("type") == "generation"
                    and e.get("message_id") == reply
                    and e["state"] in ("complete", "failed")
                )
                or (
                    e.get("type") == "snapshot"
                    and any(
                        m["id"] == reply and m["status"] in ("complete", "failed")
                        for m in e["messages"]
                    )
                )
            ),
            timeout=60,
        )
        saved = await stored(reply)
        assert saved.status in ("complete", "failed")
        if end["type"] == "snapshot":
            shown = next(m for m in end["messages"] if m["id"] == reply)
            assert shown["text"] == saved.text
        # Nothing was silently lost: the server is healthy again without a restart.
        assert (await aget(server.http_url + "/readyz")).status_code == 200
        await ann.close()
        await bob.close()
    finally:
        private.kill()


def sent_with(client_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == "message" and e["message"]["client_id"] == client_id


async def test_send_rate_limit_is_shared_across_processes(daphne_factory, redis_url, members):
    limits = {"REDIS_URL": redis_url, "PARLEY_SEND_BURST": "2", "PARLEY_SEND_PER_SECOND": "0.1"}
    one, two = daphne_factory(**limits), daphne_factory(**limits)
    room, ann_token, _ = members
    ann_one = await connect(one, room, ann_token)
    ann_two = await connect(two, room, ann_token)
    try:
        for i, client in enumerate((ann_one, ann_two)):
            await client.send(action="send", text=f"hi {i}", client_id=f"ok-{i}")
            await client.wait_for(sent_with(f"ok-{i}"))
        # The burst of two is spent, whichever process the third send reaches.
        await ann_one.send(action="send", text="one too many", id="third")
        error = await ann_one.wait_type("error", id="third")
        assert error["code"] == "rate_limited"
        assert 0 < error["retry_after"] <= 10
    finally:
        await ann_one.close()
        await ann_two.close()


def about(message_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("message_id") == message_id


# Each member's rating, round after round: every round changes the counts.
ROUNDS = [
    [1, -1, 1, 1, -1, 1],
    [-1, -1, 0, 1, 1, 0],
    [1, 1, 1, 0, -1, -1],
    [0, 1, -1, -1, -1, 1],
] * 3


async def test_ratings_and_edits_from_two_processes_end_in_the_stored_state_everywhere(
    pair, llm, crowd
):
    """Issue 19's races across processes (chat/lifecycle.py, step 3): members rating one
    reply and an author editing one message through both processes at once. Each
    process's events interleave with the other's, and the confirming read after each
    emit is what makes the last `rating` and `edit` every member gets the stored state."""
    one, two = pair
    room, owner_token, people = crowd
    llm.set_default(Scenario.normal(["Yes."]))
    host = await connect(one, room, owner_token)
    watcher = await connect(two, room, people[0][1])
    try:
        reply_id = await ask(host, "rate me @assistant")
        await host.wait_terminal(reply_id)
        question = str((await stored(reply_id)).reply_to_id)
        servers = [one, two] * 3

        async def write(method: str, server: Any, path: str, token: str, body: Any) -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.request(
                    method,
                    f"{server.http_url}{path}",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 200, r.text

        rating, edited = f"/api/messages/{reply_id}/rating", f"/api/messages/{question}"
        for turn, values in enumerate(ROUNDS):
            await asyncio.gather(
                *(
                    write("PUT", server, rating, token, {"value": value})
                    for server, (_, token), value in zip(servers, people, values, strict=True)
                ),
                *(
                    write(
                        "PATCH",
                        server,
                        edited,
                        owner_token,
                        {"text": f"rate me @assistant, take {turn}.{i}"},
                    )
                    for i, server in enumerate(servers)
                ),
            )
            # A message after them: once both members have it, every earlier event has
            # reached them (each got them in seq order).
            marker = await ask(host, f"-- marker {turn} -- @assistant")
            reply = await stored(reply_id)
            asked = await stored(question)
            counts = (reply.rating_up, reply.rating_down)
            assert counts == (values.count(1), values.count(-1))
            for member in (host, watcher):
                await member.wait_for(about(marker), start=0)
                last = [e for e in member.events if e.get("type") == "rating"][-1]
                assert (last["up"], last["down"]) == counts, turn
                text = [e for e in member.events if e.get("type") == "edit"][-1]["text"]
                assert text == asked.text, turn
    finally:
        await host.close()
        await watcher.close()
