"""Waiting in line (docs/protocol.md "Waiting in line"): members see where each waiting
reply stands, live, and one member cannot queue more than their share ahead of others.

A real daphne; the fake model server writes each reply's one piece only when the test
calls ``step()``, so the test decides when a reply ends and the line moves.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.openai_server import Scenario
from tests.support.rooms import ask, connect
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def room_with_two(make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Waiting")
    room_join(room=room, user=bob)
    return room, {"ann": ann_token, "bob": bob_token}


async def place_of(client: RoomClient, message_id: str, position: int) -> dict[str, Any]:
    """The next ``queue`` event that puts ``message_id`` at ``position``."""
    event = await client.wait_for(
        lambda e: (
            e.get("type") == "queue"
            and any(
                p["message_id"] == message_id and p["position"] == position for p in e["replies"]
            )
        ),
        start=0,
    )
    return next(p for p in event["replies"] if p["message_id"] == message_id)


async def test_a_member_sees_the_places_of_others_replies_move_as_replies_end(
    daphne, llm, room_with_two
):
    room, tokens = room_with_two
    llm.set_default(Scenario.stepped(["done"]))
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    try:
        first = await ask(ann, "one")
        await ann.wait_type("generation", message_id=first, state="streaming")
        second = await ask(ann, "two")
        third = await ask(ann, "three")
        # Bob, who asked nothing, sees where ann's waiting questions stand.
        assert (await place_of(bob, second, 2))["model_position"] is None
        await place_of(bob, third, 3)

        llm.step()  # the first reply ends: everyone moves up one
        assert (await bob.wait_terminal(first))["state"] == "complete"
        await place_of(bob, third, 2)
        await place_of(bob, second, 1)

        llm.step()
        await bob.wait_terminal(second)
        await place_of(bob, third, 1)
        llm.step()
        assert (await bob.wait_terminal(third))["state"] == "complete"
    finally:
        await ann.close()
        await bob.close()


async def test_a_burst_past_the_per_member_cap_is_refused_and_others_can_still_ask(
    daphne_factory, llm, room_with_two
):
    room, tokens = room_with_two
    server = daphne_factory(PARLEY_ROOM_QUEUE_PER_MEMBER="2")
    llm.set_default(Scenario.stepped(["done"]))
    ann = await connect(server, room, tokens["ann"])
    bob = await connect(server, room, tokens["bob"])
    try:
        running = await ask(ann, "one")
        await ann.wait_type("generation", message_id=running, state="streaming")
        waiting = [await ask(ann, "two"), await ask(ann, "three")]
        # The third waiting question is one too many: refused, and nothing is stored.
        await ann.send(action="send", text="four", client_id="c-four", id="four")
        refused = await ann.wait_type("error", id="four")
        assert refused["code"] == "busy"
        assert "at most 2" in refused["detail"]
        # Bob still gets in line, behind ann's two.
        bobs = await ask(bob, "mine")
        await place_of(ann, bobs, 4)
        assert not [
            e
            for e in ann.of_type("message")
            if e["message"]["client_id"] == "c-four" or e["message"]["text"] == "four"
        ]
        # Once the first is answered and her next one has started, she may ask again.
        llm.step()
        await ann.wait_terminal(running)
        await ann.wait_type("generation", message_id=waiting[0], state="streaming")
        again = await ask(ann, "four", timeout=10)
        await place_of(bob, again, 4)
        for reply in [*waiting, bobs, again]:
            llm.step()
            assert (await bob.wait_terminal(reply))["state"] == "complete"
    finally:
        await ann.close()
        await bob.close()
