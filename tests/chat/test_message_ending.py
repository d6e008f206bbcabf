"""An ended reply says how it ended (by, reason, metrics) on every path a message takes:
the newest page, an older page, one message, the snapshot, as its terminal ``generation``
event said it live (docs/protocol.md "Objects", extension)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.models import Generation, Message, Role, Status
from chat.selectors import messages_page
from chat.serializers import message_to_dict
from chat.services import room_join
from tests.support.openai_server import Scenario
from tests.support.rooms import connect

pytestmark = pytest.mark.django_db(transaction=True)

ENDING = {"by", "reason", "metrics"}


@pytest.fixture
def pair(make_user, make_room):
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Endings")
    room_join(room=room, user=bob)
    return room, {"ann": ann_token, "bob": bob_token}


def http(daphne: Any, token: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=daphne.http_url, headers=headers, timeout=30)


def ending(message: dict[str, Any]) -> dict[str, Any]:
    return {k: message[k] for k in ENDING}


async def test_a_reply_reads_the_same_from_the_api_as_its_end_event_said(daphne, llm, pair):
    room, tokens = pair
    url = f"/api/rooms/{room.slug}/messages"
    watcher = await connect(daphne, room, tokens["ann"])
    async with http(daphne, tokens["bob"]) as bob, http(daphne, tokens["ann"]) as ann:
        # Completed.
        llm.set_default(Scenario.normal(["Four", "."]))
        done = (await bob.post(url, json={"text": "2+2?", "ask_ai": True, "wait": True})).json()
        done_id = done["reply"]["id"]
        done_end = await watcher.wait_terminal(done_id)
        # Stopped by a member who is not the asker (the owner).
        llm.set_default(Scenario.endless(("tick ",), interval=0.02))
        r = await bob.post(url, json={"text": "count", "ask_ai": True})
        stopped_id = r.json()["reply"]["id"]
        await watcher.wait_for(lambda e: e["type"] == "delta" and e["message_id"] == stopped_id)
        answer = await ann.post(f"/api/messages/{stopped_id}/stop")
        assert answer.status_code == 200
        stopped_end = await watcher.wait_terminal(stopped_id)
        # The stop's own answer already says how the reply ended.
        assert ending(answer.json()["message"]) == {k: stopped_end[k] for k in ENDING}
        # Failed: the reason members read.
        llm.set_default(Scenario.error_status(500, message="model exploded"))
        r = await bob.post(url, json={"text": "fail", "ask_ai": True})
        failed_id = r.json()["reply"]["id"]
        failed_end = await watcher.wait_terminal(failed_id)

        assert stopped_end["by"] == "ann"
        assert done_end["metrics"]["tokens"] == 2
        assert failed_end["reason"]
        live = {done_id: done_end, stopped_id: stopped_end, failed_id: failed_end}

        newest = (await bob.get(url)).json()["messages"]
        older = (await bob.get(url, params={"before": int(failed_id) + 1})).json()["messages"]
        for page in (newest, older):
            by_id = {m["id"]: m for m in page}
            for rid, event in live.items():
                assert ending(by_id[rid]) == {k: event[k] for k in ENDING}, rid
            asks = [m for m in page if m["role"] == "user"]
            assert asks
            assert not ENDING & set(asks[0])  # a member's message has none of it
        for rid, event in live.items():
            one = (await bob.get(f"/api/messages/{rid}")).json()
            assert ending(one) == {k: event[k] for k in ENDING}
        assert ending(done["reply"]) == {k: done_end[k] for k in ENDING}  # "wait": true

    # A snapshot (resuming from a seq never issued) carries the same.
    late = await connect(daphne, room, tokens["bob"], after=10**9)
    snapshot = await late.wait_type("snapshot")
    by_id = {m["id"]: m for m in snapshot["messages"]}
    for rid, event in live.items():
        assert ending(by_id[rid]) == {k: event[k] for k in ENDING}
    await late.close()
    await watcher.close()


def _ended_replies(room: Any, author: Any, count: int) -> None:
    for i in range(count):
        ask = Message.objects.create(room=room, role=Role.USER, author=author, text=f"q{i}")
        reply = Message.objects.create(
            room=room, role=Role.ASSISTANT, text="a", status=Status.STOPPED, reply_to=ask
        )
        Generation.objects.create(
            message=reply,
            backend="openai",
            queued_at=timezone.now(),
            stopped_by=author,
            reason="user",
            metrics={"tokens": 1, "duration_ms": 10.0},
        )


def test_a_page_of_ended_replies_is_one_query_however_long(pair):
    room, _ = pair
    count = 5
    author = room.owner

    def read() -> int:
        with CaptureQueriesContext(connection) as queries:
            page = messages_page(room=room, before=None, after=None, limit=200)
            dicts = [message_to_dict(m, room_slug=room.slug) for m in page]
        assert dicts[-1]["by"] == author.username
        return len(queries)

    _ended_replies(room, author, count)
    few = read()
    _ended_replies(room, author, 6 * count)
    assert read() == few == 1


async def test_the_newest_page_is_read_in_the_event_loop_without_extra_queries(daphne, llm, pair):
    # message_to_dict reads the generation record only as selected with the message: in
    # async code a lazy read would raise, not just cost a query.
    room, tokens = pair
    await sync_to_async(_ended_replies)(room, room.owner, 3)
    async with http(daphne, tokens["bob"]) as bob:
        pages = await asyncio.gather(
            *(bob.get(f"/api/rooms/{room.slug}/messages") for _ in range(3))
        )
    for page in pages:
        assert page.status_code == 200, page.text
        assert [m["by"] for m in page.json()["messages"] if m["role"] == "assistant"] == ["ann"] * 3
