"""Versions of a reply (docs/protocol.md "Versions of a reply"), end to end over a real
daphne: regenerate streams a new version to every member, earlier versions are kept, the
asker picks which is current, later prompts use the current version only, and a member
who reconnects (replay or snapshot) sees exactly what a member who stayed sees."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import Message
from chat.services import room_join, room_leave
from tests.support.openai_server import Scenario
from tests.support.rooms import ask, connect, stored
from tests.support.sse import open_sse

pytestmark = pytest.mark.django_db(transaction=True)

# What a member's view of a message holds: text and status, and its place among versions.
VIEW_FIELDS = ("text", "status", "version_of", "version", "versions", "current")


@pytest.fixture
def members(make_user, make_room):
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    carol, carol_token = make_user("carol")
    room = make_room(ann, "Versions")  # ann owns it
    room_join(room=room, user=bob)
    room_join(room=room, user=carol)
    return room, {"ann": ann_token, "bob": bob_token, "carol": carol_token}, {"carol": carol}


def http(daphne: Any, token: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=daphne.http_url, headers=headers, timeout=30)


def fold(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A member's view of the room from the durable events it received, as a page keeps
    it: a snapshot replaces everything, a message adds one, a delta appends, a
    generation sets the status, a version sets its reply's count and current."""
    view: dict[str, dict[str, Any]] = {}
    for event in events:
        kind = event["type"]
        if kind == "snapshot":
            view = {m["id"]: dict(m) for m in event["messages"]}
        elif kind == "message":
            view.setdefault(event["message"]["id"], dict(event["message"]))
        elif kind == "delta" and event["message_id"] in view:
            view[event["message_id"]]["text"] += event["text"]
        elif kind == "generation" and event["message_id"] in view:
            view[event["message_id"]]["status"] = event["state"]
        elif kind == "version" and event["message_id"] in view:
            reply = view[event["message_id"]]
            reply.update(version=1, versions=event["versions"], current=event["current"])
    return {mid: {k: m.get(k) for k in VIEW_FIELDS} for mid, m in view.items()}


def prompts(llm: Any) -> list[str]:
    """What the model was asked, chat request by chat request (all of them so far)."""
    return [
        "\n".join(m["content"] for m in r.body["messages"])
        for r in llm.requests
        if r.path.endswith("/chat/completions")
    ]


async def test_regenerate_streams_a_new_version_to_two_members_and_keeps_the_first(
    daphne, llm, members
):
    room, tokens, _ = members
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    llm.script(Scenario.normal(["First", " answer."]), Scenario.normal(["Second", " one."]))
    reply = await ask(ann, "what?", ask_ai=True)
    await bob.wait_terminal(reply)

    await ann.send(action="regenerate", message_id=reply, id="r1")
    for member in (ann, bob):
        made = await member.wait_for(
            lambda e: e.get("type") == "message" and e["message"].get("version_of") == reply
        )
        version = made["message"]
        assert (version["version"], version["text"], version["status"]) == (2, "", "queued")
        assert version["reply_to"] == str((await stored(reply)).reply_to_id)
        assert version["author"] == "assistant"
        announced = await member.wait_type("version", message_id=reply)
        assert announced["current"] == version["id"]
        assert (announced["versions"], announced["by"]) == (2, "ann")
        assert announced["seq"] > made["seq"]
        end = await member.wait_terminal(version["id"])
        assert end["state"] == "complete"
        assert member.text_of(version["id"]) == "Second one."
    assert not ann.of_type("error")
    new_id = version["id"]

    async with http(daphne, tokens["bob"]) as client:
        detail = (await client.get(f"/api/messages/{reply}")).json()
        assert detail["current"] == new_id
        assert [(v["id"], v["version"], v["text"], v["status"]) for v in detail["versions"]] == [
            (reply, 1, "First answer.", "complete"),
            (new_id, 2, "Second one.", "complete"),
        ]
        of_version = (await client.get(f"/api/messages/{new_id}")).json()
        assert (of_version["version_of"], of_version["version"]) == (reply, 2)
        assert of_version["current"] == new_id
        page = {
            m["id"]: m
            for m in (await client.get(f"/api/rooms/{room.slug}/messages")).json()["messages"]
        }
        assert (page[reply]["versions"], page[reply]["current"], page[reply]["version"]) == (
            2,
            new_id,
            1,
        )
        assert page[new_id]["version_of"] == reply
    await ann.close()
    await bob.close()


async def test_pick_over_http_is_durable_and_every_member_sees_it_over_sse(daphne, llm, members):
    room, tokens, _ = members
    llm.script(Scenario.normal(["One."]), Scenario.normal(["Two."]), Scenario.normal(["Three."]))
    async with http(daphne, tokens["ann"]) as ann, http(daphne, tokens["bob"]) as bob:
        watch = await open_sse(bob, f"/api/rooms/{room.slug}/events")
        await watch.wait_for(lambda e: e["type"] == "hello")
        sent = (
            await ann.post(
                f"/api/rooms/{room.slug}/messages",
                json={"text": "go", "ask_ai": True, "wait": True},
            )
        ).json()
        reply = sent["reply"]["id"]
        answer = await ann.post(f"/api/messages/{reply}/regenerate")
        assert answer.status_code == 202, answer.text
        second = answer.json()["message"]
        assert (second["version_of"], second["version"], second["status"]) == (reply, 2, "queued")
        await watch.wait_for(
            lambda e: e["type"] == "message" and e["message"]["id"] == second["id"]
        )
        await watch.wait_for(lambda e: e["type"] == "version" and e["current"] == second["id"])
        await watch.wait_for(
            lambda e: (
                e["type"] == "generation"
                and e["message_id"] == second["id"]
                and e["state"] == "complete"
            )
        )
        # Regenerating from any version's id makes the next version of the same reply.
        third = (await ann.post(f"/api/messages/{second['id']}/regenerate")).json()["message"]
        assert (third["version_of"], third["version"]) == (reply, 3)
        await watch.wait_for(lambda e: e["type"] == "version" and e["versions"] == 3)
        await watch.wait_for(
            lambda e: (
                e["type"] == "generation"
                and e["message_id"] == third["id"]
                and e["state"] == "complete"
            )
        )

        picked = await ann.post(f"/api/messages/{reply}/pick")
        assert picked.status_code == 200, picked.text
        assert picked.json()["message"]["current"] == reply
        seen = await watch.wait_for(lambda e: e["type"] == "version" and e["current"] == reply)
        assert (seen["message_id"], seen["versions"], seen["by"]) == (reply, 3, "ann")
        # Picking the current version again changes nothing and tells nobody.
        mark = len(watch.events)
        assert (await ann.post(f"/api/messages/{reply}/pick")).status_code == 200
        # Durable: a later read says the same.
        detail = (await bob.get(f"/api/messages/{third['id']}")).json()
        assert detail["current"] == reply
        assert [v["text"] for v in detail["versions"]] == ["One.", "Two.", "Three."]
        # The next event bob hears is the next change, not a repeat of the pick.
        await ann.post(f"/api/messages/{second['id']}/pick")
        after = await watch.wait_for(lambda e: e["type"] == "version", start=mark)
        assert after["current"] == second["id"]
        await watch.close()


async def test_later_prompts_use_only_the_current_version(daphne, llm, members):
    room, tokens, _ = members
    ann = await connect(daphne, room, tokens["ann"])
    base = len(prompts(llm))
    llm.script(
        Scenario.normal(["apple"]),
        Scenario.normal(["banana"]),
        Scenario.normal(["ok"]),
        Scenario.normal(["ok"]),
    )
    reply = await ask(ann, "name a fruit", ask_ai=True)
    await ann.wait_terminal(reply)
    await ann.send(action="regenerate", message_id=reply)
    made = await ann.wait_for(
        lambda e: e.get("type") == "message" and e["message"].get("version_of") == reply
    )
    await ann.wait_terminal(made["message"]["id"])
    # The regenerate prompt is the conversation up to the question, no earlier version.
    again = prompts(llm)[base + 1]
    assert "name a fruit" in again
    assert "apple" not in again

    second = await ask(ann, "and its colour?", ask_ai=True)
    await ann.wait_terminal(second)
    later = prompts(llm)[base + 2]
    assert "banana" in later
    assert "apple" not in later

    await ann.send(action="pick_version", message_id=reply)
    await ann.wait_type("version", message_id=reply, current=reply)
    third = await ask(ann, "and its taste?", ask_ai=True)
    await ann.wait_terminal(third)
    picked = prompts(llm)[base + 3]
    assert "apple" in picked
    assert "banana" not in picked
    await ann.close()


async def test_who_may_regenerate_and_when(daphne, llm, members):
    room, tokens, users = members
    ann = await connect(daphne, room, tokens["ann"])
    bob = await connect(daphne, room, tokens["bob"])
    carol = await connect(daphne, room, tokens["carol"])
    llm.set_default(Scenario.normal(["done"]))
    reply = await ask(bob, "bob asks", ask_ai=True)
    await bob.wait_terminal(reply)

    # Carol neither asked nor owns the room.
    await carol.send(action="regenerate", message_id=reply, id="c1")
    assert (await carol.wait_type("error", id="c1"))["code"] == "forbidden"
    await carol.send(action="pick_version", message_id=reply, id="c2")
    assert (await carol.wait_type("error", id="c2"))["code"] == "forbidden"
    # A member's message has no versions.
    question = (await stored(reply)).reply_to_id
    assert question is not None
    await bob.send(action="regenerate", message_id=str(question), id="b0")
    assert (await bob.wait_type("error", id="b0"))["code"] == "bad_request"
    bad_ids: list[object] = [None, True, [], {"x": 1}, "", "12ab", "\x00", -4]
    for bad in bad_ids:
        await bob.send(action="regenerate", message_id=bad, id="bad")
        assert (await bob.wait_type("error", id="bad"))["code"] in ("bad_request", "not_found")

    # Busy while a version is being written; the owner may regenerate too.
    llm.set_default(Scenario.endless(("tick ",), interval=0.02))
    await ann.send(action="regenerate", message_id=reply, id="a1")
    made = await ann.wait_for(
        lambda e: e.get("type") == "message" and e["message"].get("version_of") == reply
    )
    version = made["message"]["id"]
    await ann.wait_for(lambda e: e.get("type") == "delta" and e["message_id"] == version)
    await bob.send(action="regenerate", message_id=reply, id="b1")
    busy = await bob.wait_type("error", id="b1")
    assert busy["code"] == "busy"
    async with http(daphne, tokens["bob"]) as client:
        answer = await client.post(f"/api/messages/{version}/regenerate")
        assert (answer.status_code, answer.json()["code"]) == (503, "busy")
    # Pause and stop work on a version as on any reply.
    await bob.send(action="pause", message_id=version)
    await ann.wait_type("generation", message_id=version, state="paused")
    await bob.send(action="stop", message_id=version)
    end = await ann.wait_terminal(version)
    assert (end["state"], end["by"]) == ("stopped", "bob")
    kept = await stored(version)
    assert kept.text == ann.text_of(version)
    assert kept.status == "stopped"
    assert (await stored(reply)).version_count == 2

    # Out of the room: no such message.
    await carol.close()
    await sync_to_async(room_leave)(room=room, user=users["carol"])
    async with http(daphne, tokens["carol"]) as client:
        gone = await client.post(f"/api/messages/{reply}/regenerate")
        assert (gone.status_code, gone.json()["code"]) == (404, "not_found")
        gone = await client.post(f"/api/messages/{reply}/pick")
        assert gone.status_code == 404
    assert (await stored(reply)).version_count == 2

    # The question itself is gone (removed from the database): nothing to answer again.
    await sync_to_async(Message.objects.filter(pk=question).delete)()
    # (Its asker is no longer known: the room's owner asks.)
    await ann.send(action="regenerate", message_id=reply, id="a2")
    orphan = await ann.wait_type("error", id="a2")
    assert orphan["code"] == "bad_request"
    assert "gone" in orphan["detail"]
    assert (await stored(reply)).version_count == 2
    await ann.close()
    await bob.close()


async def test_a_member_who_reconnects_mid_regeneration_sees_what_one_who_stayed_sees(
    daphne, llm, members
):
    room, tokens, _ = members
    stayed = await connect(daphne, room, tokens["bob"])
    ann = await connect(daphne, room, tokens["ann"])
    llm.set_default(Scenario.normal(["first"]))
    reply = await ask(ann, "tell me", ask_ai=True)
    await stayed.wait_terminal(reply)

    # Carol drops, having seen everything so far.
    carol = await connect(daphne, room, tokens["carol"], after=0)
    await carol.wait_terminal(reply)
    last_seq = carol.durable()[-1]["seq"]
    await carol.close()

    pieces = [f"p{i} " for i in range(6)]
    llm.set_default(Scenario.stepped(pieces))
    await ann.send(action="regenerate", message_id=reply)
    made = await stayed.wait_for(
        lambda e: e.get("type") == "message" and e["message"].get("version_of") == reply
    )
    version = made["message"]["id"]
    for _ in range(3):
        llm.step()
        await stayed.wait_for(lambda e: e.get("type") == "delta" and e["message_id"] == version)

    # Mid-regeneration: one resumes where it left off, another is resynchronised.
    resumed = await connect(daphne, room, tokens["carol"], after=last_seq)
    snapshotted = await connect(daphne, room, tokens["ann"], after=10**9)
    await snapshotted.wait_type("snapshot")
    for _ in range(3, len(pieces)):
        llm.step()
    for member in (stayed, resumed, snapshotted):
        await member.wait_terminal(version)
    assert not resumed.of_type("snapshot")

    # Everyone sees the same versions, texts, states and current version.
    whole = fold(stayed.durable())
    assert whole[reply]["current"] == version
    assert whole[reply]["versions"] == 2
    assert whole[version]["text"] == "".join(pieces)
    assert fold(carol.durable() + resumed.durable()) == whole
    assert fold(snapshotted.durable()) == whole
    for client in (stayed, resumed, snapshotted, ann):
        await client.close()
