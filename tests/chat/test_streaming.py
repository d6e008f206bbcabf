"""Streamed replies over a real daphne and real WebSockets, against the fake model server.

docs/protocol.md "The event stream" and "Who controls a reply": every member sees the same
deltas, their concatenation is
the stored text, and pause / resume / stop behave as the contract says.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import Generation
from tests.support.openai_server import Scenario
from tests.support.rooms import ask, connect, stored

pytestmark = pytest.mark.django_db(transaction=True)

PIECES = [f"word{i} " for i in range(12)]


@pytest.fixture
def room_with_two(make_user, make_room):
    """A room owned by ann, with member bob and bystander cat (also a member)."""
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    cat, cat_token = make_user("cat")
    room = make_room(ann, "Streaming")
    room_join(room=room, user=bob)
    room_join(room=room, user=cat)
    return room, {"ann": ann_token, "bob": bob_token, "cat": cat_token}


def api_message(daphne, token: str, message_id: str) -> dict:
    r = httpx.get(
        f"{daphne.http_url}/api/messages/{message_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200
    return r.json()


async def test_two_members_see_identical_deltas_equal_to_stored_text(daphne, llm, room_with_two):
    room, tokens = room_with_two
    llm.set_default(Scenario.slow(PIECES, delay=0.01, prompt_tokens=7))
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    try:
        reply_id = await ask(ann, "hello @assistant")
        done_ann = await ann.wait_terminal(reply_id)
        done_bob = await bob.wait_terminal(reply_id)
        assert done_ann["state"] == done_bob["state"] == "complete"
        # The same durable events, in the same order, for both members.
        assert ann.durable() == bob.durable()
        seqs = [e["seq"] for e in ann.durable()]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert ann.text_of(reply_id) == "".join(PIECES)
        assert (await stored(reply_id)).text == "".join(PIECES)
        assert api_message(daphne, tokens["bob"], reply_id)["text"] == "".join(PIECES)
        assert api_message(daphne, tokens["bob"], reply_id)["status"] == "complete"
        # The user's message came first, with the sender's client_id for reconciliation.
        user_msg = ann.of_type("message")[0]["message"]
        assert (user_msg["role"], user_msg["author"]) == ("user", "ann")
        assert user_msg["client_id"].startswith("c-")
        assert done_ann["usage"]["prompt_tokens"] == 7
        assert done_ann["usage"]["completion_tokens"] == len(PIECES)
        metrics = done_ann["metrics"]
        assert metrics["tokens"] == len(PIECES)
        assert metrics["ttft_ms"] is not None
        assert metrics["ttft_ms"] >= 0
        assert metrics["duration_ms"] > 0
        assert metrics["tokens_per_second"] > 0
        gen = await sync_to_async(Generation.objects.get)(message_id=int(reply_id))
        assert gen.backend == "openai"
        assert gen.completion_tokens == len(PIECES)
        assert gen.started_at
        assert gen.first_token_at
        assert gen.ended_at
        # The prompt carried the conversation with author names.
        body = llm.requests[-1].body
        assert body["stream"] is True
        assert body["messages"][-1] == {"role": "user", "content": "ann: hello @assistant"}
    finally:
        await ann.close()
        await bob.close()


async def test_pause_holds_and_resume_loses_nothing(daphne, llm, room_with_two):
    room, tokens = room_with_two
    pieces = [f"p{i} " for i in range(40)]
    # Reference: the text of an unpaused run of the same stream.
    llm.script(Scenario.slow(pieces, delay=0.02), Scenario.slow(pieces, delay=0.02))
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    try:
        ref_id = await ask(ann)
        await ann.wait_terminal(ref_id)
        start = len(llm.requests)
        reply_id = await ask(ann)
        await bob.wait_type("delta", message_id=reply_id)
        await ann.send(action="pause", message_id=reply_id, id="p1")
        paused = await bob.wait_type("generation", message_id=reply_id, state="paused")
        assert paused["by"] == "ann"
        # The model keeps producing while paused; wait until it has finished the stream.
        record = await asyncio.to_thread(llm.wait_finished, start, 10)
        assert record.pieces_sent == len(pieces)
        during_pause = len(bob.events)
        # Nothing was delivered after the pause while the model finished.
        pause_index = bob.events.index(paused)
        assert not [e for e in bob.events[pause_index:] if e.get("type") == "delta"]
        assert (await stored(reply_id)).status == "paused"
        await bob.send(action="resume", message_id=reply_id)  # bob is not the asker
        err = await bob.wait_type("error", code="forbidden")
        assert err["code"] == "forbidden"
        await ann.send(action="resume", message_id=reply_id)
        resumed = await bob.wait_type(
            "generation", message_id=reply_id, state="streaming", by="ann"
        )
        done = await bob.wait_terminal(reply_id)
        assert done["state"] == "complete"
        assert bob.events.index(resumed) >= during_pause
        assert done["metrics"]["paused_ms"] > 0
        assert bob.text_of(reply_id) == ann.text_of(ref_id) == "".join(pieces)
        assert (await stored(reply_id)).text == "".join(pieces)
        # Pausing twice is a no-op; controlling a finished reply is not_generating.
        await ann.send(action="pause", message_id=reply_id, id="late")
        late = await ann.wait_type("error", id="late")
        assert late["code"] == "not_generating"
    finally:
        await ann.close()
        await bob.close()


async def test_stop_closes_upstream_and_stores_what_was_delivered(daphne, llm, room_with_two):
    room, tokens = room_with_two
    llm.set_default(Scenario.endless(("tick ",), interval=0.01))
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    try:
        start = len(llm.requests)
        reply_id = await ask(ann)
        await bob.wait_for(lambda e: e.get("type") == "delta" and len(bob.text_of(reply_id)) > 20)
        # Pausing twice is idempotent.
        await ann.send(action="pause", message_id=reply_id)
        await ann.send(action="pause", message_id=reply_id, id="again")
        await ann.send(action="ping", id="sync")
        await ann.wait_type("pong", id="sync")
        assert not [e for e in ann.of_type("error") if e.get("id") == "again"]
        stop_sent = time.monotonic()
        await ann.send(action="stop", message_id=reply_id)
        record = await asyncio.to_thread(llm.wait_disconnect, start, 5)
        assert record.closed_by == "client"
        assert record.disconnected_at - stop_sent < 0.1
        stopped = await bob.wait_terminal(reply_id)
        assert (stopped["state"], stopped["by"]) == ("stopped", "ann")
        after = bob.events[bob.events.index(stopped) :]
        assert not [e for e in after if e.get("type") == "delta"]
        text = bob.text_of(reply_id)
        assert text  # some text was delivered before the stop
        assert (await stored(reply_id)).text == text == ann.text_of(reply_id)
        assert api_message(daphne, tokens["ann"], reply_id)["status"] == "stopped"
        gen = await sync_to_async(Generation.objects.select_related("stopped_by").get)(
            message_id=int(reply_id)
        )
        assert gen.stopped_by is not None
        assert gen.stopped_by.username == "ann"
        assert gen.stop_reason == "user"
    finally:
        await ann.close()
        await bob.close()


async def test_bystander_cannot_stop_and_owner_can(daphne, llm, room_with_two, make_user):
    room, tokens = room_with_two
    llm.set_default(Scenario.endless(("x ",), interval=0.01))
    bob = await connect(daphne, room, tokens["bob"])
    cat = await connect(daphne, room, tokens["cat"])
    ann = await connect(daphne, room, tokens["ann"])
    try:
        reply_id = await ask(bob)
        await cat.wait_type("delta", message_id=reply_id)
        await cat.send(action="stop", message_id=reply_id, id="s")
        err = await cat.wait_type("error", id="s")
        assert err["code"] == "forbidden"
        assert (await stored(reply_id)).status == "streaming"
        # The error went to cat alone.
        assert not [e for e in bob.of_type("error")]
        await ann.send(action="stop", message_id=reply_id)  # the room owner may
        stopped = await bob.wait_terminal(reply_id)
        assert (stopped["state"], stopped["by"]) == ("stopped", "ann")
    finally:
        for c in (bob, cat, ann):
            await c.close()


async def test_reply_outlives_the_askers_connection(daphne, llm, room_with_two):
    room, tokens = room_with_two
    pieces = [f"w{i} " for i in range(30)]
    llm.set_default(Scenario.slow(pieces, delay=0.02))
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    try:
        reply_id = await ask(ann)
        await bob.wait_type("delta", message_id=reply_id)
        await ann.close()
        done = await bob.wait_terminal(reply_id)
        assert done["state"] == "complete"
        assert bob.text_of(reply_id) == "".join(pieces)
        assert (await stored(reply_id)).text == "".join(pieces)
    finally:
        await bob.close()


@pytest.mark.parametrize(
    ("scenario", "reason_part", "kept"),
    [
        (Scenario.error_status(status=500, message="model exploded"), "model exploded", ""),
        (Scenario.malformed(["a ", "b ", "c "], after=2), "", "a b "),
        (Scenario.disconnect(["a ", "b ", "c "], after=2), "", "a b "),
        (Scenario.hang(["a ", "b "], after=1), "", "a "),
    ],
    ids=["error-status", "malformed", "disconnect", "hang"],
)
async def test_upstream_failures_end_as_failed(
    daphne, llm, room_with_two, scenario, reason_part, kept
):
    room, tokens = room_with_two
    llm.set_default(scenario)
    ann = await connect(daphne, room, tokens["ann"])
    try:
        reply_id = await ask(ann)
        done = await ann.wait_terminal(reply_id, timeout=30)
        assert done["state"] == "failed"
        assert done["reason"]
        assert reason_part in done["reason"]
        assert ann.text_of(reply_id) == kept
        assert (await stored(reply_id)).text == kept
    finally:
        await ann.close()


async def test_upstream_refused_ends_as_failed(daphne_factory, room_with_two):
    from tests.support.daphne import free_port

    room, tokens = room_with_two
    server = daphne_factory(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    ann = await connect(server, room, tokens["ann"])
    try:
        reply_id = await ask(ann)
        done = await ann.wait_terminal(reply_id)
        assert done["state"] == "failed"
        assert "connect" in done["reason"].lower()
    finally:
        await ann.close()


async def test_replies_run_one_at_a_time_and_a_queued_one_can_be_stopped(
    daphne, llm, room_with_two
):
    room, tokens = room_with_two
    llm.script(Scenario.endless(("first ",), interval=0.01), Scenario.normal(["third"]))
    ann = await connect(daphne, room, tokens["ann"])
    try:
        first = await ask(ann, "one")
        await ann.wait_type("delta", message_id=first)
        second = await ask(ann, "two")
        third = await ask(ann, "three")
        second_msg = [e for e in ann.of_type("message") if e["message"]["id"] == second][0]
        assert second_msg["message"]["status"] == "queued"
        await ann.send(action="stop", message_id=second)
        stopped = await ann.wait_terminal(second)
        assert stopped["state"] == "stopped"
        assert (await stored(first)).status == "streaming"  # still the one running
        await ann.send(action="stop", message_id=first)
        await ann.wait_terminal(first)
        done = await ann.wait_terminal(third)
        assert done["state"] == "complete"
        assert ann.text_of(third) == "third"
        assert not [e for e in ann.events if e.get("message_id") == second and e["type"] == "delta"]
        # Only two model requests were made: the stopped queued reply never ran.
        starts = [e for e in ann.of_type("generation") if e["state"] == "streaming"]
        assert [e["message_id"] for e in starts] == [first, third]
    finally:
        await ann.close()


async def test_a_frame_over_64_kib_closes_1009_and_others_stay(daphne, room_with_two):
    room, tokens = room_with_two
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    try:
        await ann.send_raw('{"action": "send", "text": "' + "x" * 70_000 + '"}')
        assert await ann.wait_closed() == 1009
        await bob.send(action="ping", id="still-here")
        await bob.wait_type("pong", id="still-here")
    finally:
        await ann.close()
        await bob.close()
