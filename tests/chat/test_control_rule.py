"""Who may control a reply (chat/selectors.py ``can_control_reply``), held on every path.

The rule (docs/protocol.md, "Who controls a reply"): staff may control any reply, in any
room, member or not; otherwise the asker or the room's owner, while members. Others: 403
when they are members, 404 when they are not (a private room's messages are invisible).
"""

from __future__ import annotations

import httpx
import pytest

from chat.services import room_member_add
from tests.support.openai_server import Scenario
from tests.support.rooms import ask
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)


def client(daphne, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=daphne.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


@pytest.fixture
def private_room(make_user, make_room):
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    mod, mod_token = make_user("mod", staff=True)
    _, eve_token = make_user("eve")
    room = make_room(ann, "Secret", visibility="private")
    room_member_add(room=room, by=ann, username="bob")  # a member, not the asker
    lobby = make_room(mod, "Mods' lobby")
    return room, lobby, {"ann": ann_token, "bob": bob_token, "mod": mod_token, "eve": eve_token}


async def test_staff_control_replies_in_private_rooms_they_are_not_in(daphne, llm, private_room):
    room, lobby, tokens = private_room
    llm.set_default(Scenario.endless(("t ",), interval=0.01))
    watcher = await RoomClient.connect(daphne.ws_url, room.slug, token=tokens["ann"])
    await watcher.wait_type("hello")
    async with (
        client(daphne, tokens["ann"]) as ann,
        client(daphne, tokens["bob"]) as bob,
        client(daphne, tokens["mod"]) as mod,
        client(daphne, tokens["eve"]) as eve,
    ):
        r = await ann.post(f"/api/rooms/{room.slug}/messages", json={"text": "go"})
        reply_id = r.json()["reply"]["id"]
        await watcher.wait_type("delta", message_id=reply_id)
        # The rule's refusals stay as they were.
        r = await bob.post(f"/api/messages/{reply_id}/pause")
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        r = await eve.post(f"/api/messages/{reply_id}/pause")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        # Staff over HTTP, without being a member: pause and resume.
        r = await mod.post(f"/api/messages/{reply_id}/pause")
        assert r.status_code == 200, r.text
        assert r.json()["message"]["status"] == "paused"
        paused = await watcher.wait_type("generation", message_id=reply_id, state="paused")
        assert paused["by"] == "mod"
        r = await mod.post(f"/api/messages/{reply_id}/resume")
        assert (r.status_code, r.json()["message"]["status"]) == (200, "streaming")
        # Reading the room stays members-only: control is not a way in.
        assert (await mod.get(f"/api/rooms/{room.slug}")).status_code == 404

    # Staff over the WebSocket, connected to another room: stop.
    ws = await RoomClient.connect(daphne.ws_url, lobby.slug, token=tokens["mod"])
    await ws.wait_type("hello")
    await ws.send(action="stop", id="s1", message_id=reply_id)
    end = await watcher.wait_terminal(reply_id)
    assert (end["state"], end["by"]) == ("stopped", "mod")
    assert [e for e in ws.of_type("error") if e["id"] == "s1"] == []
    await ws.send(action="stop", id="s2", message_id=reply_id)
    again = await ws.wait_type("error", id="s2")
    assert again["code"] == "not_generating"
    await ws.close()
    await watcher.close()


async def test_a_non_staff_member_over_the_websocket_is_forbidden(daphne, llm, private_room):
    room, _, tokens = private_room
    llm.set_default(Scenario.endless(("t ",), interval=0.01))
    ann = await RoomClient.connect(daphne.ws_url, room.slug, token=tokens["ann"])
    bob = await RoomClient.connect(daphne.ws_url, room.slug, token=tokens["bob"])
    await ann.wait_type("hello")
    await bob.wait_type("hello")
    reply_id = await ask(ann)
    await bob.send(action="stop", id="b", message_id=reply_id)
    assert (await bob.wait_type("error", id="b"))["code"] == "forbidden"
    await ann.send(action="stop", id="a", message_id=reply_id)
    assert (await ann.wait_terminal(reply_id))["state"] == "stopped"
    await ann.close()
    await bob.close()
