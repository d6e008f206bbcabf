"""Rate limits per user (chat/ratelimit.py): edits, deletes, ratings and version picks
take from an action bucket of their own, sends and regenerations from the send bucket;
over the WebSocket (an ``error`` with ``retry_after``) and over HTTP (``429`` with
``Retry-After``). Against a real daphne started with small buckets."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import Message, Rating, Role, Status
from chat.services import room_join
from tests.support.rooms import connect, stored

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def limited(make_user, make_room) -> Any:
    """ann owns a room with bob in it; bob asked a question, an assistant answered it."""
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Limits", assistant="mention")
    room_join(room=room, user=bob)
    question = Message.objects.create(room=room, role=Role.USER, author=bob, text="helo")
    reply = Message.objects.create(
        room=room, role=Role.ASSISTANT, text="Hello.", status=Status.COMPLETE, reply_to=question
    )
    return room, {"ann": ann_token, "bob": bob_token}, str(question.pk), str(reply.pk)


async def test_actions_have_a_bucket_of_their_own_over_the_websocket(daphne_factory, limited):
    room, tokens, _question, reply = limited
    server = daphne_factory(
        PARLEY_ACTION_BURST="2",
        PARLEY_ACTION_PER_SECOND="0.01",
        PARLEY_SEND_BURST="1",
        PARLEY_SEND_PER_SECOND="0.01",
    )
    ann = await connect(server, room, tokens["ann"])
    bob = await connect(server, room, tokens["bob"])
    try:
        await ann.send(action="rate", message_id=reply, value=1, id="r1")
        await bob.wait_type("rating", message_id=reply, up=1, down=0)
        await ann.send(action="rate", message_id=reply, value=-1, id="r2")
        await bob.wait_type("rating", message_id=reply, up=0, down=1)
        # A third flip within the burst's refill is refused, and nothing changes.
        await ann.send(action="rate", message_id=reply, value=1, id="r3")
        refused = await ann.wait_type("error", id="r3")
        assert refused["code"] == "rate_limited"
        assert refused["retry_after"] > 1
        assert "rating" in refused["detail"]
        # Deletes and picks share that bucket: refused before anything is looked at.
        await ann.send(action="delete", message_id=reply, id="d1")
        assert (await ann.wait_type("error", id="d1"))["code"] == "rate_limited"
        await ann.send(action="pick_version", message_id=reply, id="p1")
        assert (await ann.wait_type("error", id="p1"))["code"] == "rate_limited"
        mine = await sync_to_async(Rating.objects.get)(message_id=int(reply))
        assert mine.value == -1
        assert (await stored(reply)).deleted_at is None

        # Sends have their own bucket: the ratings took nothing from it.
        await ann.send(action="send", text="still here", client_id="c-still", id="s1")
        await bob.wait_for(
            lambda e: e.get("type") == "message" and e["message"]["client_id"] == "c-still"
        )
        # ... and another answer costs the model as a send does: it takes from the send
        # bucket (now empty), not from the action bucket.
        await ann.send(action="regenerate", message_id=reply, id="g1")
        regen = await ann.wait_type("error", id="g1")
        assert regen["code"] == "rate_limited"
        assert "messages" in regen["detail"]

        # The other member's bucket is untouched.
        await bob.send(action="rate", message_id=reply, value=1, id="b1")
        await ann.wait_type("rating", message_id=reply, up=1, down=1)
    finally:
        await ann.close()
        await bob.close()


async def test_actions_over_http_answer_429_with_retry_after(daphne_factory, limited):
    room, tokens, question, reply = limited
    server = daphne_factory(PARLEY_ACTION_BURST="2", PARLEY_ACTION_PER_SECOND="0.01")
    headers = {"Authorization": f"Bearer {tokens['bob']}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=30) as bob:
        r = await bob.patch(f"/api/messages/{question}", json={"text": "hello", "rerun": False})
        assert r.status_code == 200, r.text
        r = await bob.put(f"/api/messages/{reply}/rating", json={"value": -1})
        assert r.status_code == 200, r.text
        for method, path in [
            ("DELETE", f"/api/messages/{question}"),
            ("PATCH", f"/api/messages/{question}"),
            ("PUT", f"/api/messages/{reply}/rating"),
            ("POST", f"/api/messages/{reply}/pick"),
        ]:
            r = await bob.request(method, path, json={"text": "hullo", "value": 1})
            assert r.status_code == 429, (method, path, r.text)
            body = r.json()
            assert body["code"] == "rate_limited"
            assert body["retry_after"] > 1
            assert int(r.headers["Retry-After"]) >= 1
    question_now = await stored(question)
    assert (question_now.text, question_now.deleted_at) == ("hello", None)
    mine = await sync_to_async(Rating.objects.get)(message_id=int(reply))
    assert mine.value == -1
