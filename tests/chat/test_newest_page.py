"""GET /api/rooms/<slug>/messages, the newest page, is exact at its head as a snapshot is
(docs/protocol.md "HTTP", extension): a reader that goes on with ``after=head`` has a
running reply's text whole, with nothing missed and nothing twice."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from chat.services import room_join
from tests.support.openai_server import Scenario
from tests.support.rooms import ask, connect, stored

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def members(make_user, make_room):
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Exact")
    room_join(room=room, user=bob)
    return room, {"ann": ann_token, "bob": bob_token}


async def test_the_newest_page_and_after_head_add_up_to_a_running_reply(
    daphne_factory, sole_deployment, llm, members
):
    room, tokens = members
    pieces = [f"bit{i} " for i in range(6)]
    llm.set_default(Scenario.stepped(pieces))
    # Replies saved only when they end, and a model paced by the test: the database can
    # only ever have "" for the running reply, so its text on the page is the live copy's.
    server: Any = daphne_factory(LLM_READ_TIMEOUT="60", PARLEY_SAVE_INTERVAL="600")
    ann = await connect(server, room, tokens["ann"])
    reply = await ask(ann, "go on", ask_ai=True)
    for _ in range(3):
        llm.step()
        await ann.wait_for(lambda e: e.get("type") == "delta" and e["message_id"] == reply)
    assert (await stored(reply)).text == ""

    headers = {"Authorization": f"Bearer {tokens['bob']}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=10) as http:
        page = (await http.get(f"/api/rooms/{room.slug}/messages")).json()
    listed = {m["id"]: m for m in page["messages"]}[reply]
    assert (listed["text"], listed["status"]) == ("".join(pieces[:3]), "streaming")
    assert page["head"] == ann.durable()[-1]["seq"]

    bob = await connect(server, room, tokens["bob"], after=page["head"])
    for _ in range(3, len(pieces)):
        llm.step()
    end = await bob.wait_terminal(reply)
    assert end["state"] == "complete"
    assert not bob.of_type("snapshot")  # a replay from head, not a resynchronisation
    assert listed["text"] + bob.text_of(reply) == "".join(pieces) == (await stored(reply)).text
    await bob.close()
    await ann.close()
