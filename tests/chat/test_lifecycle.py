"""Edit, delete and rate messages (chat/lifecycle.py; docs/protocol.md "Editing, deleting
and rating messages"), end to end against the session's real daphne: over the WebSocket
and over HTTP + SSE, what every member sees live, after a replay (`after=`) and in a
snapshot; the refusals; the races (two raters at once, an edit racing a delete); a delete
of a message whose reply is streaming."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat import lifecycle
from chat.events import get_hub
from chat.models import Message, MessageEdit, Rating, Role
from chat.runtime import get_runtime
from chat.services import room_join, room_leave
from tests.support.openai_server import Scenario
from tests.support.rooms import ask, connect, stored
from tests.support.sse import open_sse
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)

# A seq no room has issued: resuming after it forces a snapshot (tests/chat/test_consumers.py).
NEVER_ISSUED = 10**9


@pytest.fixture
def trio(make_user, make_room):
    """ann owns a room (answers only when asked) with bob and cat as members."""
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    cat, cat_token = make_user("cat")
    room = make_room(ann, "Lifecycle", assistant="mention")
    room_join(room=room, user=bob)
    room_join(room=room, user=cat)
    return room, {"ann": ann_token, "bob": bob_token, "cat": cat_token}, {"bob": bob, "cat": cat}


def http(daphne: Any, token: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=daphne.http_url, headers=headers, timeout=30)


async def say(client: RoomClient, text: str) -> dict[str, Any]:
    """Send a message nobody answers; its wire dict once the room has it."""
    cid = f"c-{len(client.events)}-{text[:8]}"
    await client.send(action="send", text=text, client_id=cid)
    event = await client.wait_for(
        lambda e: e.get("type") == "message" and e["message"]["client_id"] == cid
    )
    return event["message"]


async def acked(client: RoomClient, **frame: Any) -> list[dict[str, Any]]:
    """Send an action, then a ping: the events and errors before the pong (frames are
    handled in order, so the pong says the action was handled)."""
    start, cursor = len(client.events), client.cursor
    probe = f"probe-{start}"
    await client.send(**frame, id=frame.get("action"))
    await client.send(action="ping", id=probe)
    await client.wait_for(lambda e: e.get("type") == "pong" and e.get("id") == probe, start=start)
    # The action's room event may come after the pong (it is fanned out, the pong is
    # not): later waits search from where they were.
    client.cursor = cursor
    return client.events[start:]


def errors_in(events: list[dict[str, Any]]) -> list[str]:
    return [e["code"] for e in events if e.get("type") == "error"]


def view(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A member's view of the room's messages, built from the durable events it got, as a
    client does: snapshots replace, events set."""
    messages: dict[str, dict[str, Any]] = {}
    for e in sorted((e for e in events if "seq" in e), key=lambda e: e["seq"]):
        kind = e["type"]
        if kind == "snapshot":
            messages = {m["id"]: dict(m) for m in e["messages"]}
        elif kind == "message":
            messages[e["message"]["id"]] = dict(e["message"])
        elif kind == "delta" and e["message_id"] in messages:
            messages[e["message_id"]]["text"] += e["text"]
        elif kind == "generation" and e["message_id"] in messages:
            messages[e["message_id"]]["status"] = e["state"]
        elif kind == "edit" and e["message_id"] in messages:
            messages[e["message_id"]].update(text=e["text"], edited=True)
        elif kind == "delete" and e["message_id"] in messages:
            messages[e["message_id"]].pop("text", None)
            messages[e["message_id"]]["deleted"] = True
        elif kind == "rating" and e["message_id"] in messages:
            messages[e["message_id"]]["rating"] = {"up": e["up"], "down": e["down"]}
    return messages


LIFE = ("text", "edited", "deleted", "rating")


def life(message: dict[str, Any]) -> dict[str, Any]:
    return {k: message[k] for k in LIFE if k in message}


async def marker(client: RoomClient, watchers: list[RoomClient]) -> None:
    """A message after everything else: once every watcher has it, every earlier durable
    event has reached them (they arrive in seq order)."""
    sent = await say(client, "-- marker --")
    for w in watchers:
        await w.wait_for(
            lambda e: e.get("type") == "message" and e["message"]["id"] == sent["id"], start=0
        )


async def test_an_edit_reaches_every_member_and_reads_the_same_everywhere(daphne, llm, trio):
    room, tokens, _ = trio
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    mine = await say(ann, "capitol of Frnace?")
    seq_before = (await bob.wait_type("message"))["seq"]

    answers = await acked(ann, action="edit", message_id=mine["id"], text="capital of France?")
    assert errors_in(answers) == []
    for member in (ann, bob):
        edit = await member.wait_type("edit", message_id=mine["id"])
        assert {k: edit[k] for k in ("text", "edited", "by")} == {
            "text": "capital of France?",
            "edited": True,
            "by": "ann",
        }
    # The earlier text is kept for staff; the message says it was edited.
    history = await sync_to_async(
        lambda: list(MessageEdit.objects.filter(message_id=int(mine["id"])))
    )()
    assert [h.text_before for h in history] == ["capitol of Frnace?"]
    async with http(daphne, tokens["bob"]) as b:
        got = (await b.get(f"/api/messages/{mine['id']}")).json()
        page = (await b.get(f"/api/rooms/{room.slug}/messages")).json()["messages"]
    assert life(got) == {"text": "capital of France?", "edited": True}
    assert life(next(m for m in page if m["id"] == mine["id"])) == life(got)

    # A member who resumes from before the edit replays it; one who gets a snapshot sees it.
    resumed = await connect(daphne, room, tokens["cat"], after=seq_before)
    replayed = await resumed.wait_type("edit", message_id=mine["id"])
    assert replayed["text"] == "capital of France?"
    late = await connect(daphne, room, tokens["cat"], after=NEVER_ISSUED)
    snapshot = await late.wait_type("snapshot")
    shown = next(m for m in snapshot["messages"] if m["id"] == mine["id"])
    assert life(shown) == life(got)

    # The model is asked with the edited text, not the text before.
    llm.set_default(Scenario.normal(["Paris."]))
    reply_id = await ask(ann, "and its river? @assistant")
    await ann.wait_terminal(reply_id)
    prompt = json.dumps(llm.requests[-1].body["messages"])
    assert "capital of France?" in prompt
    assert "Frnace" not in prompt
    for c in (ann, bob, resumed, late):
        await c.close()


async def test_edit_over_http_is_heard_over_sse(daphne, trio):
    room, tokens, _ = trio
    async with http(daphne, tokens["ann"]) as a, http(daphne, tokens["bob"]) as b:
        sent = (
            await a.post(f"/api/rooms/{room.slug}/messages", json={"text": "hello wrold"})
        ).json()
        mid = sent["message"]["id"]
        sse = await open_sse(b, f"/api/rooms/{room.slug}/events")
        try:
            await sse.wait_for(lambda e: e["type"] == "hello")
            r = await a.patch(f"/api/messages/{mid}", json={"text": "hello world", "rerun": False})
            assert r.status_code == 200, r.text
            assert life(r.json()["message"]) == {"text": "hello world", "edited": True}
            edit = await sse.wait_for(lambda e: e["type"] == "edit")
            assert (edit["message_id"], edit["text"], edit["by"]) == (mid, "hello world", "ann")
            assert sse.ids[-1] == str(edit["seq"])  # durable: it has an SSE id
            # The same text again changes nothing.
            again = await a.patch(f"/api/messages/{mid}", json={"text": "hello world"})
            assert again.status_code == 200
            assert await sync_to_async(MessageEdit.objects.filter(message_id=int(mid)).count)() == 1
        finally:
            await sse.close()


async def test_edits_that_are_refused_change_nothing(daphne, llm, trio):
    room, tokens, users = trio
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    mine = await say(ann, "original")
    mid = mine["id"]
    cases: list[tuple[RoomClient, dict[str, Any], str]] = [
        (bob, {"text": "hijacked"}, "forbidden"),  # not yours
        (ann, {"text": ""}, "bad_request"),
        (ann, {"text": "\u200b"}, "bad_request"),
        (ann, {"text": "x\x00y"}, "bad_request"),
        (ann, {"text": "x" * 8001}, "too_long"),
        (ann, {"text": 5}, "bad_request"),
        (ann, {"text": "again", "rerun": "yes"}, "bad_request"),
    ]
    for client, fields, code in cases:
        answers = await acked(client, action="edit", message_id=mid, **fields)
        assert errors_in(answers) == [code], (fields, answers)
    assert errors_in(await acked(ann, action="edit", text="no id")) == ["bad_request"]
    assert errors_in(await acked(ann, action="edit", message_id="999999", text="x")) == [
        "not_found"
    ]
    async with http(daphne, tokens["bob"]) as b, http(daphne, tokens["ann"]) as a:
        r = await b.patch(f"/api/messages/{mid}", json={"text": "hijacked"})
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        r = await a.patch(f"/api/messages/{mid}", json={"text": "y" * 8001})
        assert (r.status_code, r.json()["code"]) == (413, "too_long")
        # An assistant's reply is not editable, even by the asker.
        llm.set_default(Scenario.normal(["Hi."]))
        reply_id = await ask(ann, "hi @assistant")
        await ann.wait_terminal(reply_id)
        r = await a.patch(f"/api/messages/{reply_id}", json={"text": "I said something else"})
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        # While the reply to it is being written: busy, and it stays as asked.
        llm.set_default(Scenario.endless(("tick ",), interval=0.02))
        question = await say(ann, "count @assistant")
        reply = await ann.wait_for(
            lambda e: e.get("type") == "message" and e["message"]["reply_to"] == question["id"]
        )
        r = await a.patch(f"/api/messages/{question['id']}", json={"text": "count to three"})
        assert (r.status_code, r.json()["code"]) == (503, "busy")
        await a.post(f"/api/messages/{reply['message']['id']}/stop")
        await ann.wait_terminal(reply["message"]["id"])
        # Someone who left the room cannot edit what they wrote there.
        theirs = (await b.post(f"/api/rooms/{room.slug}/messages", json={"text": "bye"})).json()
        await sync_to_async(room_leave)(room=room, user=users["bob"])
        r = await b.patch(f"/api/messages/{theirs['message']['id']}", json={"text": "changed"})
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert (await stored(mid)).text == "original"
    assert (await stored(question["id"])).text == "count @assistant"
    assert (await stored(theirs["message"]["id"])).text == "bye"
    assert await sync_to_async(MessageEdit.objects.count)() == 0
    assert not [e for e in ann.events if e.get("type") == "edit"]
    await ann.close()
    await bob.close()


async def test_a_delete_is_a_tombstone_for_everyone_everywhere(daphne, llm, trio):
    room, tokens, _ = trio
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    secret = await say(bob, "my password is hunter2")
    seq_before = (await ann.wait_type("message", start=0))["seq"]

    # Not the author, not an owner: refused.
    cat = await connect(daphne, room, tokens["cat"])
    assert errors_in(await acked(cat, action="delete", message_id=secret["id"])) == ["forbidden"]
    # The author deletes it.
    assert errors_in(await acked(bob, action="delete", message_id=secret["id"])) == []
    for member in (ann, bob, cat):
        gone = await member.wait_type("delete", message_id=secret["id"])
        assert gone["by"] == "bob"
    async with http(daphne, tokens["ann"]) as a:
        got = (await a.get(f"/api/messages/{secret['id']}")).json()
        assert got["deleted"] is True
        assert "text" not in got
        page = (await a.get(f"/api/rooms/{room.slug}/messages")).json()
        older = (await a.get(f"/api/rooms/{room.slug}/messages?after=0")).json()
        for listing in (page, older):
            shown = next(m for m in listing["messages"] if m["id"] == secret["id"])
            assert shown["deleted"] is True
            assert "text" not in shown
        assert "hunter2" not in json.dumps(page) + json.dumps(older)
        # Deleting again is a no-op that answers the tombstone.
        again = await a.delete(f"/api/messages/{secret['id']}")
        assert again.status_code == 200
        assert again.json()["message"]["deleted"] is True

    # Replay and snapshot show the same tombstone.
    resumed = await connect(daphne, room, tokens["cat"], after=seq_before)
    await resumed.wait_type("delete", message_id=secret["id"])
    late = await connect(daphne, room, tokens["cat"], after=NEVER_ISSUED)
    snapshot = await late.wait_type("snapshot")
    shown = next(m for m in snapshot["messages"] if m["id"] == secret["id"])
    assert shown["deleted"] is True
    assert "text" not in shown
    assert "hunter2" not in json.dumps(snapshot)

    # It left the model's prompt; its text stays only for staff (the database).
    llm.set_default(Scenario.normal(["Noted."]))
    reply_id = await ask(ann, "what did bob say? @assistant")
    await ann.wait_terminal(reply_id)
    assert "hunter2" not in json.dumps(llm.requests[-1].body["messages"])
    assert (await stored(secret["id"])).text == "my password is hunter2"

    # The owner deletes anyone's message, a reply too; its audio is gone with it.
    await marker(ann, [bob])
    async with http(daphne, tokens["ann"]) as a, http(daphne, tokens["bob"]) as b:
        r = await a.delete(f"/api/messages/{reply_id}")
        assert r.status_code == 200, r.text
        assert r.json()["message"]["deleted"] is True
        await bob.wait_type("delete", message_id=reply_id)
        audio = await b.get(f"/api/messages/{reply_id}/audio")
        assert (audio.status_code, audio.json()["code"]) == (404, "not_found")
        # One delete event per message, however many times it was deleted.
    await marker(ann, [bob])
    deletes = [e["message_id"] for e in bob.events if e.get("type") == "delete"]
    assert sorted(deletes) == sorted([secret["id"], reply_id])
    assert view(bob.events)[secret["id"]].get("deleted") is True
    for c in (ann, bob, cat, resumed, late):
        await c.close()


async def test_deleting_a_message_whose_reply_streams_stops_the_reply_first(daphne, llm, trio):
    room, tokens, _ = trio
    llm.set_default(Scenario.endless(("tick ",), interval=0.02))
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    reply_id = await ask(ann, "count forever @assistant")
    question_id = (await stored(reply_id)).reply_to_id
    await bob.wait_for(lambda e: e.get("type") == "delta" and e["message_id"] == reply_id)
    start = len(bob.events)

    assert errors_in(await acked(ann, action="delete", message_id=str(question_id))) == []
    await bob.wait_type("delete", message_id=str(question_id), start=start)
    await marker(ann, [bob])  # every event before it has reached bob: a late delta too
    after = bob.events[start:]
    kinds = [(e["type"], e.get("message_id")) for e in after if "seq" in e]
    stopped_at = kinds.index(("generation", reply_id))
    deleted_at = kinds.index(("delete", str(question_id)))
    assert stopped_at < deleted_at  # stopped first
    end = after[[i for i, e in enumerate(after) if "seq" in e][stopped_at]]
    assert (end["state"], end["by"], end["reason"]) == ("stopped", "ann", "user")
    assert ("delta", reply_id) not in kinds[stopped_at:]
    await llm.await_disconnect(len(llm.requests) - 1)
    # The reply keeps exactly the text members saw; the question is a tombstone.
    seen = "".join(
        e["text"] for e in bob.events if e.get("type") == "delta" and e["message_id"] == reply_id
    )
    assert (await stored(reply_id)).text == seen

    # The owner deletes a streaming reply itself: stopped, then a tombstone.
    second = await ask(bob, "and again @assistant")
    await ann.wait_for(lambda e: e.get("type") == "delta" and e["message_id"] == second)
    async with http(daphne, tokens["ann"]) as a:
        r = await a.delete(f"/api/messages/{second}")
    assert r.status_code == 200, r.text
    assert r.json()["message"]["deleted"] is True
    assert r.json()["message"]["status"] == "stopped"
    end = await bob.wait_terminal(second)
    assert end["state"] == "stopped"
    await bob.wait_type("delete", message_id=second)
    await ann.close()
    await bob.close()


async def test_ratings_count_for_everyone_and_change(daphne, llm, trio):
    room, tokens, _ = trio
    llm.set_default(Scenario.normal(["Forty", "-two."]))
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    reply_id = await ask(ann, "meaning of life? @assistant")
    await bob.wait_terminal(reply_id)
    seq_before = max(e["seq"] for e in bob.events if "seq" in e)
    question_id = str((await stored(reply_id)).reply_to_id)

    assert errors_in(await acked(ann, action="rate", message_id=reply_id, value=1)) == []
    first = await bob.wait_type("rating", message_id=reply_id)
    assert (first["up"], first["down"]) == (1, 0)
    async with http(daphne, tokens["bob"]) as b:
        r = await b.put(
            f"/api/messages/{reply_id}/rating", json={"value": -1, "comment": "it is 43"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["message"]["rating"] == {"up": 1, "down": 1}
        second = await ann.wait_type("rating", message_id=reply_id, down=1)
        assert (second["up"], second["down"]) == (1, 1)
        # Changed, then cleared.
        await b.put(f"/api/messages/{reply_id}/rating", json={"value": 1})
        third = await ann.wait_type("rating", message_id=reply_id, up=2)
        assert third["down"] == 0
        r = await b.put(f"/api/messages/{reply_id}/rating", json={"value": 0})
        assert r.json()["message"]["rating"] == {"up": 1, "down": 0}
        # Refused: a member's message, a bad value, a long comment, GET.
        for body, code, status in [
            ({"value": 2}, "bad_request", 400),
            ({"value": True}, "bad_request", 400),
            ({"value": "1"}, "bad_request", 400),
            ({"value": 1, "comment": "c" * 501}, "too_long", 413),
            ({"value": 1, "comment": "a\x00b"}, "bad_request", 400),
        ]:
            r = await b.put(f"/api/messages/{reply_id}/rating", json=body)
            assert (r.status_code, r.json()["code"]) == (status, code), body
        r = await b.put(f"/api/messages/{question_id}/rating", json={"value": 1})
        assert (r.status_code, r.json()["code"]) == (400, "bad_request")
        assert (await b.get(f"/api/messages/{reply_id}/rating")).status_code == 405
        got = (await b.get(f"/api/messages/{reply_id}")).json()
    assert got["rating"] == {"up": 1, "down": 0}
    assert errors_in(await acked(ann, action="rate", message_id=reply_id, value=-2)) == [
        "bad_request"
    ]
    ratings = await sync_to_async(lambda: list(Rating.objects.filter(message_id=int(reply_id))))()
    assert [(r.value, r.comment) for r in ratings] == [(1, "")]

    resumed = await connect(daphne, room, tokens["cat"], after=seq_before)
    await marker(ann, [resumed])
    replayed = [e for e in resumed.events if e.get("type") == "rating"]
    assert [(e["up"], e["down"]) for e in replayed] == [(1, 0), (1, 1), (2, 0), (1, 0)]
    late = await connect(daphne, room, tokens["cat"], after=NEVER_ISSUED)
    snapshot = await late.wait_type("snapshot")
    assert next(m for m in snapshot["messages"] if m["id"] == reply_id)["rating"] == got["rating"]
    for c in (ann, bob, resumed, late):
        await c.close()


async def test_members_rating_at_once_all_end_with_the_stored_counts(daphne, llm, crowd):
    room, owner_token, raters = crowd
    llm.set_default(Scenario.normal(["Yes."]))
    host = await connect(daphne, room, owner_token)
    reply_id = await ask(host, "rate me @assistant")
    await host.wait_terminal(reply_id)
    sockets = [await connect(daphne, room, token) for _, token in raters[:3]]
    clients = [http(daphne, token) for _, token in raters[3:]]

    async def by_ws(client: RoomClient, value: int) -> None:
        assert errors_in(await acked(client, action="rate", message_id=reply_id, value=value)) == []

    async def by_http(client: httpx.AsyncClient, value: int) -> None:
        r = await client.put(f"/api/messages/{reply_id}/rating", json={"value": value})
        assert r.status_code == 200, r.text

    for round_values in ([1, -1, 1, 1, -1, 1], [-1, -1, 0, 1, 1, 0]):
        await asyncio.gather(
            *(by_ws(c, v) for c, v in zip(sockets, round_values[:3], strict=True)),
            *(by_http(c, v) for c, v in zip(clients, round_values[3:], strict=True)),
        )
    await marker(host, [host, *sockets])
    message = await stored(reply_id)
    expected = {"up": message.rating_up, "down": message.rating_down}
    values = await sync_to_async(
        lambda: list(
            Rating.objects.filter(message_id=int(reply_id)).values_list("value", flat=True)
        )
    )()
    assert expected == {"up": values.count(1), "down": values.count(-1)} == {"up": 2, "down": 2}
    for member in (host, *sockets):
        last = [e for e in member.events if e.get("type") == "rating"][-1]
        assert {"up": last["up"], "down": last["down"]} == expected
    for c in clients:
        await c.aclose()
    for s in (host, *sockets):
        await s.close()


async def test_an_edit_racing_a_delete_ends_deleted_for_everyone(daphne, trio):
    room, tokens, _ = trio
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    cat = await connect(daphne, room, tokens["cat"])
    ids = [(await say(bob, f"draft {i}"))["id"] for i in range(4)]
    async with http(daphne, tokens["bob"]) as b:

        async def edit(mid: str) -> None:
            r = await b.patch(f"/api/messages/{mid}", json={"text": f"final {mid}"})
            # Either it landed before the delete, or the message was a tombstone already.
            assert (r.status_code, r.json().get("code")) in [(200, None), (404, "not_found")]

        async def delete(mid: str) -> None:
            assert errors_in(await acked(ann, action="delete", message_id=mid)) == []

        await asyncio.gather(*(f(mid) for mid in ids for f in (edit, delete)))
    await marker(ann, [ann, bob, cat])
    for mid in ids:
        row = await stored(mid)
        assert row.deleted_at is not None
        for member in (ann, bob, cat):
            seen = view(member.events)[mid]
            assert seen.get("deleted") is True
            assert "text" not in seen
            mine = [e for e in member.events if e.get("message_id") == mid and "seq" in e]
            kinds = [e["type"] for e in mine]
            # No edit ever follows the tombstone, and there is exactly one tombstone.
            assert kinds.count("delete") == 1
            assert "edit" not in kinds[kinds.index("delete") :]
    late = await connect(daphne, room, tokens["cat"], after=NEVER_ISSUED)
    snapshot = await late.wait_type("snapshot")
    for m in snapshot["messages"]:
        if m["id"] in ids:
            assert m.get("deleted") is True
            assert "text" not in m
    for c in (ann, bob, cat, late):
        await c.close()


async def test_a_write_overtaken_by_a_later_one_is_never_sent_after_it(trio):
    """The rule the races above rely on, forced instead of hoped for: two edits of one
    message in this process, the later one announced first (its writer reached the lock
    first). The earlier one sends nothing, so the room's last edit is the stored text;
    and a write the next writer's turn did not overtake is still sent."""
    room, _, users = trio
    bob = users["bob"]
    message = await sync_to_async(Message.objects.create)(
        room=room, role=Role.USER, author=bob, text="draft"
    )
    hub = get_hub()
    try:
        start = await hub.head(room.pk)
        async with lifecycle._turns(message.pk) as turns:
            write = sync_to_async(lifecycle._edit_write)
            first = await write(user=bob, pk=message.pk, text="first")
            second = await write(user=bob, pk=message.pk, text="second")
            assert first.number < second.number
            for written in (second, first):
                await lifecycle._announce(
                    turns, pk=message.pk, kind="edit", written=written, answer=False
                )
            third = await write(user=bob, pk=message.pk, text="third")
            await lifecycle._announce(
                turns, pk=message.pk, kind="edit", written=third, answer=False
            )
        sent = await hub.store.since(room.pk, start)
        assert sent is not None
        assert [e["text"] for e in sent if e["type"] == "edit"] == ["second", "third"]
        assert (await stored(str(message.pk))).text == "third"
    finally:
        await get_runtime().aclose()


async def test_edit_and_rerun_makes_a_new_version_from_the_edited_text(daphne, llm, trio):
    """``rerun: true``: the edit stands and the reply to the message gets a new version,
    asked with the text as edited, seen by every member (issue 19, "Edit and rerun")."""
    room, tokens, _ = trio
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    llm.script(Scenario.normal(["Paris."]), Scenario.normal(["Madrid."]))
    base = len(llm.requests)
    reply = await ask(ann, "capital of France? @assistant")
    await ann.wait_terminal(reply)
    question = (await stored(reply)).reply_to_id
    assert not errors_in(
        await acked(
            ann,
            action="edit",
            message_id=str(question),
            text="capital of Spain? @assistant",
            rerun=True,
        )
    )
    edit = await bob.wait_for(lambda e: e.get("type") == "edit")
    version = await bob.wait_for(lambda e: e.get("type") == "version")
    assert edit["seq"] < version["seq"]
    assert (version["message_id"], version["versions"]) == (reply, 2)
    done = await bob.wait_terminal(version["current"])
    assert done["state"] == "complete"
    assert (await stored(version["current"])).text == "Madrid."
    chats = [r for r in llm.requests[base:] if r.path.endswith("/chat/completions")]
    asked = json.dumps(chats[1].body)
    assert "capital of Spain?" in asked
    assert "France" not in asked
    assert "Paris." not in asked
    async with http(daphne, tokens["ann"]) as a:
        # Over HTTP too.
        again = {"text": "capital of Italy? @assistant", "rerun": True}
        r = await a.patch(f"/api/messages/{question}", json=again)
        assert r.status_code == 200, r.text
        third = await bob.wait_for(lambda e: e.get("type") == "version" and e["versions"] == 3)
        await bob.wait_terminal(third["current"])
    await ann.close()
    await bob.close()


async def test_deleting_a_message_whose_reply_is_still_queued_stops_it_and_tombstones(
    daphne, llm, trio
):
    """A delete right after the send, while its reply is queued or just starting: the
    reply is stopped (or never streams), and every member gets the tombstone."""
    room, tokens, _ = trio
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    llm.set_default(Scenario.normal(["again"]))
    cid = "c-quick-delete"
    await ann.send(action="send", text="quick @assistant", client_id=cid)
    mine = await ann.wait_for(
        lambda e: e.get("type") == "message" and e["message"]["client_id"] == cid
    )
    mid = mine["message"]["id"]
    await ann.send(action="delete", message_id=mid, id="d1")
    await bob.wait_for(lambda e: e.get("type") == "delete" and e["message_id"] == mid, timeout=15)
    reply = await bob.wait_for(
        lambda e: e.get("type") == "message" and e["message"]["reply_to"] == mid, start=0
    )
    await bob.wait_terminal(reply["message"]["id"], start=0)  # stopped, or done first
    assert errors_in(ann.events) == []
    await ann.close()
    await bob.close()
