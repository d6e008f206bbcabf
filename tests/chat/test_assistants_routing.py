"""A room with three assistants on three loopback model servers, over a real daphne.

docs/protocol.md "Assistants answer": each ``@handle`` is answered by its own assistant's
provider and model, several mentions in mention order through the room's line, an
assistant's reply that mentions another asks it (bounded per human message), and each
model sees the room labelled as the architecture says (docs/architecture.md "The prompt").
Every member sees the same events in the same order, a reconnecting one included.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import Assistant, Generation, Message, RoomAssistant
from tests.conftest import daphne_env
from tests.support.daphne import DaphneServer
from tests.support.openai_server import FakeOpenAIServer, Scenario
from tests.support.rooms import ask, connect

pytestmark = pytest.mark.django_db(transaction=True)

HANDLES = ("coder", "critic", "poet")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeOpenAIServer]]:
    """One model server per provider, each with its own key."""
    started = {h: FakeOpenAIServer(api_key=f"key-{h}").start() for h in HANDLES}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def server(
    django_db_setup: Any,
    django_db_blocker: Any,
    fake_llm_server: FakeOpenAIServer,
    servers: dict[str, FakeOpenAIServer],
) -> Iterator[DaphneServer]:
    """A daphne whose PARLEY_PROVIDERS names the three servers (p-coder, p-critic, p-poet)."""
    providers = {
        f"p-{h}": {"base_url": s.base_url, "api_key": f"key-{h}"} for h, s in servers.items()
    }
    with django_db_blocker.unblock():
        env = daphne_env(
            fake_llm_server,
            PARLEY_PROVIDERS=json.dumps(providers),
            PARLEY_ASSISTANT_REPLIES_MAX="3",
            VOICE_PRELOAD="0",
            STT_PRELOAD="0",
        )
    daphne = DaphneServer(env).start()
    yield daphne
    daphne.stop()


@pytest.fixture
def models(servers: dict[str, FakeOpenAIServer], llm: FakeOpenAIServer) -> Iterator[dict]:
    """The servers, reset for this test; "assistant" is the default provider's (llm)."""
    for s in servers.values():
        s.script()
        s.set_default(Scenario.normal())
    yield {**servers, "assistant": llm}
    for s in servers.values():
        s.script()
        s.set_default(Scenario.normal())


@pytest.fixture
def room(make_user, make_room):
    """ann's room with members bob and cat, its migrated-style `assistant` (mention only
    here) and three assistants, each on its own provider and model."""
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    cat, cat_token = make_user("cat")
    room = make_room(ann, "Team")
    room_join(room=room, user=bob)
    room_join(room=room, user=cat)
    RoomAssistant.objects.filter(room=room).update(mode="mention")
    for handle in HANDLES:
        assistant = Assistant.objects.create(
            room=room,
            handle=handle,
            name=handle.title(),
            provider=f"p-{handle}",
            model=f"m-{handle}",
            system_prompt=f"You are the {handle}.",
            temperature=0.25,
            max_tokens=64,
        )
        RoomAssistant.objects.create(room=room, assistant=assistant, handle=handle)
    return room, {"ann": ann_token, "bob": bob_token, "cat": cat_token}


def send(server: DaphneServer, room: Any, token: str, text: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.http_url}/api/rooms/{room.slug}/messages",
        headers={"Authorization": f"Bearer {token}"},
        json={"text": text, **body},
        timeout=30,
    )


def prompt(request: Any) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request.body["messages"]]


def system_of(handle: str, others: list[str]) -> str:
    listed = ", ".join(f"@{h} ({h.title() if h != 'assistant' else 'Assistant'})" for h in others)
    return (
        f"You are the {handle}.\n\n"
        f'You are {handle.title()} (@{handle}), an AI assistant in the chat room "Team".\n'
        "People in the room: ann, bob, cat.\n"
        f"Other AI assistants in the room: {listed}. Their messages start with their "
        "@handle. Writing an @handle in your reply asks that assistant to answer too."
    )


def others_of(handle: str) -> list[str]:
    return [h for h in ("assistant", *HANDLES) if h != handle]


async def test_each_mention_is_answered_by_its_own_assistants_model(server, room, models):
    room, tokens = room
    for handle in HANDLES:
        models[handle].set_default(Scenario.normal([f"{handle} ", "here"]))
    for handle in HANDLES:
        before = {h: len(s.requests) for h, s in models.items()}
        answer = send(server, room, tokens["bob"], f"hi @{handle.upper()}", wait=True)
        assert answer.status_code == 200, answer.text
        reply = answer.json()["reply"]
        assert answer.json()["replies"] == [reply]
        assert (reply["author"], reply["text"], reply["status"]) == (
            handle,
            f"{handle} here",
            "complete",
        )
        assert reply["assistant"] == {
            "handle": handle,
            "name": handle.title(),
            "model": f"p-{handle}/m-{handle}",
        }
        # Only its own server was asked, with its model, sampling and key.
        after = {h: len(s.requests) for h, s in models.items()}
        assert {h: after[h] - before[h] for h in after} == {h: int(h == handle) for h in after}
        request = models[handle].requests[-1]
        assert request.body["model"] == f"m-{handle}"
        assert request.body["temperature"] == 0.25
        assert request.body["max_tokens"] == 64
        assert request.headers["authorization"] == f"Bearer key-{handle}"
        assert prompt(request)[0] == ("system", system_of(handle, others_of(handle)))
        assert prompt(request)[-1] == ("user", f"bob: hi @{handle.upper()}")
        gen = await sync_to_async(Generation.objects.select_related("assistant").get)(
            message_id=int(reply["id"])
        )
        assert (gen.handle, gen.assistant_name, gen.provider, gen.model, gen.backend) == (
            handle,
            handle.title(),
            f"p-{handle}",
            f"m-{handle}",
            "openai",
        )
        assert gen.assistant is not None
        assert gen.assistant.handle == handle


async def test_two_mentions_are_answered_in_order_and_every_member_sees_the_same(
    server, room, models
):
    room, tokens = room
    models["poet"].set_default(Scenario.slow(["roses ", "are ", "red"], delay=0.01))
    models["coder"].set_default(Scenario.normal(["print(", "'red')"]))
    ann = await connect(server, room, tokens["ann"])
    bob = await connect(server, room, tokens["bob"])
    cat = await connect(server, room, tokens["cat"])
    try:
        client_id = f"c-{uuid.uuid4().hex}"
        await ann.send(action="send", text="@poet then @coder: colours?", client_id=client_id)
        mine = await cat.wait_for(
            lambda e: e.get("type") == "message" and e["message"]["client_id"] == client_id
        )
        # cat drops off after the message and comes back with `after`: nothing missed.
        await cat.close()
        first_part = cat.durable()
        cat = await connect(server, room, tokens["cat"], after=mine["seq"])
        replies = []
        for _ in range(2):
            event = await ann.wait_for(
                lambda e: e.get("type") == "message" and e["message"]["role"] == "assistant"
            )
            replies.append(event["message"])
        assert [r["author"] for r in replies] == ["poet", "coder"]
        assert all(r["reply_to"] == mine["message"]["id"] for r in replies)
        for r in replies:
            await ann.wait_terminal(r["id"])
            await bob.wait_terminal(r["id"], start=0)
            await cat.wait_terminal(r["id"], start=0)
        assert ann.text_of(replies[0]["id"]) == "roses are red"
        assert ann.text_of(replies[1]["id"]) == "print('red')"
        # The poet finished before the coder was asked, and the coder saw its answer.
        coder_request = models["coder"].requests[-1]
        assert models["poet"].requests[-1].finished
        assert prompt(coder_request)[1:] == [
            ("user", "ann: @poet then @coder: colours?"),
            ("user", "@poet: roses are red"),
        ]
        # Every member: the same durable events in the same order, seqs without a gap.
        assert ann.durable() == bob.durable()
        cat_seen = [e for e in first_part if e["seq"] <= mine["seq"]] + cat.durable()
        assert cat_seen == [e for e in ann.durable() if e["seq"] >= cat_seen[0]["seq"]]
        seqs = [e["seq"] for e in ann.durable()]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        for client in (ann, bob, cat):
            await client.close()


async def test_assistants_asking_each_other_stop_at_the_bound(server, room, models):
    room, tokens = room
    models["coder"].script(
        Scenario.normal(["ask @critic ", "about it"]),
        Scenario.normal(["fine, @critic ", "again"]),
    )
    models["critic"].script(Scenario.normal(["@coder, ", "what do you say?"]))
    models["poet"].set_default(Scenario.normal(["done"]))
    critic_before = len(models["critic"].requests)
    ann = await connect(server, room, tokens["ann"])
    try:
        answer = send(server, room, tokens["ann"], "@coder start", wait=True)
        assert answer.status_code == 200, answer.text
        asked = answer.json()["message"]["id"]
        # The send waited for its own reply; the exchange goes on through the line. A
        # later question is answered after it, so once it is, the exchange is over.
        later = send(server, room, tokens["bob"], "@poet are they done?", wait=True)
        assert later.json()["reply"]["text"] == "done"
        replies = await sync_to_async(
            lambda: list(
                Message.objects.filter(reply_to_id=int(asked))
                .order_by("id")
                .values_list("generation__handle", "text", "status")
            )
        )()
        assert replies == [
            ("coder", "ask @critic about it", "complete"),
            ("critic", "@coder, what do you say?", "complete"),
            ("coder", "fine, @critic again", "complete"),
        ]
        # The third reply asked nobody more.
        assert len(models["critic"].requests) == critic_before + 1
        # Each model saw the room: its own replies as its own, the others' labelled.
        assert prompt(models["critic"].requests[-1]) == [
            ("system", system_of("critic", others_of("critic"))),
            ("user", "ann: @coder start"),
            ("user", "@coder: ask @critic about it"),
        ]
        assert prompt(models["coder"].requests[-1])[1:] == [
            ("user", "ann: @coder start"),
            ("assistant", "ask @critic about it"),
            ("user", "@critic: @coder, what do you say?"),
        ]
        # Members saw each reply announced as it was asked, in that order.
        await ann.wait_for(
            lambda e: e.get("type") == "message" and e["message"]["author"] == "poet"
        )
        events = [e["message"]["author"] for e in ann.durable() if e["type"] == "message"]
        assert events == ["ann", "coder", "critic", "coder", "bob", "poet"]
    finally:
        await ann.close()


async def test_who_answers_a_message_that_mentions_nobody(server, room, models):
    room, tokens = room
    models["critic"].set_default(Scenario.normal(["critic says"]))
    # No `always` assistant: nobody answers, unless asked (then the `assistant` handle).
    quiet = send(server, room, tokens["ann"], "just chatting")
    assert quiet.status_code == 201
    assert quiet.json()["reply"] is None
    assert quiet.json()["replies"] == []
    asked = send(server, room, tokens["ann"], "a question", ask_ai=True, wait=True)
    assert asked.json()["reply"]["author"] == "assistant"
    assert asked.json()["reply"]["assistant"]["model"] == "default/fake-model"
    # With an `always` assistant: it answers unmentioned messages, and only those.
    await sync_to_async(RoomAssistant.objects.filter(room=room, handle="critic").update)(
        mode="always"
    )
    unmentioned = send(server, room, tokens["ann"], "anyone?", wait=True)
    assert [r["author"] for r in unmentioned.json()["replies"]] == ["critic"]
    before = len(models["critic"].requests)
    mentioned = send(server, room, tokens["ann"], "@poet only you", wait=True)
    assert [r["author"] for r in mentioned.json()["replies"]] == ["poet"]
    assert len(models["critic"].requests) == before
    # `@alice`, a member or a stranger, is not an assistant.
    nobody = send(server, room, tokens["ann"], "@bob and @alice, hi", wait=True)
    assert [r["author"] for r in nobody.json()["replies"]] == ["critic"]


async def test_a_failing_provider_fails_only_its_reply(server, room, models):
    room, tokens = room
    models["coder"].script(Scenario.error_status(status=500))
    models["poet"].set_default(Scenario.normal(["still ", "here"]))
    answer = send(server, room, tokens["ann"], "@coder @poet go", wait=True)
    assert answer.status_code == 200, answer.text
    coder, poet = answer.json()["replies"]
    assert coder["status"] == "failed"
    assert "500" in coder["reason"]
    assert "key-coder" not in answer.text
    assert (poet["status"], poet["text"]) == ("complete", "still here")


async def test_an_assistant_whose_provider_is_gone_fails_its_reply_and_asks_nobody_else(
    server, room, models
):
    """A provider removed from the configuration never sends the conversation elsewhere:
    the reply fails and says why, and no model server is asked."""
    room, tokens = room
    await sync_to_async(Assistant.objects.filter(room=room, handle="poet").update)(provider="gone")
    before = {h: len(s.requests) for h, s in models.items()}
    answer = send(server, room, tokens["ann"], "@poet are you there", wait=True)
    assert answer.status_code == 200, answer.text
    (poet,) = answer.json()["replies"]
    assert poet["status"] == "failed"
    assert "'gone' is no longer configured" in poet["reason"]
    assert {h: len(s.requests) for h, s in models.items()} == before


async def test_a_resend_returns_every_reply_and_a_send_asks_at_most_the_bound(server, room, models):
    room, tokens = room
    text = "@coder @critic @poet @assistant all of you"
    first = send(server, room, tokens["ann"], text, client_id="once")
    assert first.status_code == 202, first.text
    # PARLEY_ASSISTANT_REPLIES_MAX (3) replies in all: the fourth mention is not asked.
    assert [r["author"] for r in first.json()["replies"]] == ["coder", "critic", "poet"]
    assert first.json()["reply"] == first.json()["replies"][0]
    again = send(server, room, tokens["ann"], text, client_id="once", wait=True)
    assert again.json()["message"]["id"] == first.json()["message"]["id"]
    ids = [r["id"] for r in again.json()["replies"]]
    assert ids == [r["id"] for r in first.json()["replies"]]
    count = await sync_to_async(Message.objects.filter(room=room).count)()
    assert count == 4


async def test_a_send_counts_as_the_replies_it_queues_against_the_members_share(
    server, room, models
):
    room, tokens = room
    models["coder"].script(Scenario.stepped(["one", "two"]))
    first = len(models["coder"].requests)
    ann = await connect(server, room, tokens["ann"])
    try:
        running = send(server, room, tokens["ann"], "@coder hold the line")
        await models["coder"].await_request(first)  # it runs; the next ones wait
        two = send(server, room, tokens["ann"], "@critic @poet wait behind it")
        assert [r["status"] for r in two.json()["replies"]] == ["queued", "queued"]
        stored = await sync_to_async(Message.objects.filter(room=room).count)()
        # 2 waiting + 2 asked > PARLEY_ROOM_QUEUE_PER_MEMBER (3): busy, nothing stored.
        refused = send(server, room, tokens["ann"], "@critic @poet and again")
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "busy"
        assert "asks 2 assistants" in refused.json()["detail"]
        assert await sync_to_async(Message.objects.filter(room=room).count)() == stored
        # One more fits the share.
        one = send(server, room, tokens["ann"], "@poet just you")
        assert one.status_code == 202, one.text
        models["coder"].step()
        models["coder"].step()
        for reply in (
            running.json()["reply"],
            *two.json()["replies"],
            one.json()["reply"],
        ):
            done = await ann.wait_terminal(reply["id"], start=0)
            assert done["state"] == "complete"
    finally:
        await ann.close()


async def test_a_new_version_is_written_by_its_replys_assistant_on_its_provider_now(
    server, room, models
):
    """Regenerate asks the reply's own assistant again, on the provider it has now: one
    the environment names, one staff added in the admin, or one since removed (the
    version fails and says why). An assistant deleted since is stood in for by the one
    the room now has with its handle; one removed from the room cannot answer again."""
    from tests.support.assistants import add_provider

    room, tokens = room
    bob = await connect(server, room, tokens["bob"])

    async def regenerate(reply: str, request: str, by: str | None = None) -> str:
        """A new version of ``reply``, asked for by its id or a version's (``by``)."""
        await bob.send(action="regenerate", message_id=by or reply, id=request)
        made = await bob.wait_for(
            lambda e: e.get("type") == "message" and e["message"].get("version_of") == reply
        )
        await bob.wait_type("version", message_id=reply, current=made["message"]["id"])
        return str(made["message"]["id"])

    try:
        models["coder"].set_default(Scenario.normal(["first"]))
        reply = await ask(bob, "@coder go")
        await bob.wait_terminal(reply)

        # Its provider from the environment, its model.
        models["coder"].set_default(Scenario.normal(["second"]))
        asked = len(models["coder"].requests)
        version = await regenerate(reply, "r1")
        assert (await bob.wait_terminal(version))["state"] == "complete"
        assert bob.text_of(version) == "second"
        assert models["coder"].requests[asked].body["model"] == "m-coder"

        # Moved to a provider staff added in the admin (the critic's server here); asked
        # for by the last version's id this time.
        await sync_to_async(add_provider)("p-admin", models["critic"].base_url, "key-critic")
        await sync_to_async(Assistant.objects.filter(room=room, handle="coder").update)(
            provider="p-admin"
        )
        models["critic"].set_default(Scenario.normal(["third"]))
        asked = len(models["critic"].requests)
        version = await regenerate(reply, "r2", by=version)
        assert (await bob.wait_terminal(version))["state"] == "complete"
        assert bob.text_of(version) == "third"
        assert models["critic"].requests[asked].body["model"] == "m-coder"
        made = await sync_to_async(Generation.objects.get)(message_id=int(version))
        assert (made.provider, made.handle) == ("p-admin", "coder")

        # Its provider removed: the version fails and says why; no model server is asked.
        await sync_to_async(Assistant.objects.filter(room=room, handle="coder").update)(
            provider="gone"
        )
        before = {h: len(s.requests) for h, s in models.items()}
        version = await regenerate(reply, "r3")
        end = await bob.wait_terminal(version)
        assert end["state"] == "failed"
        assert "'gone' is no longer configured" in end["reason"]
        assert {h: len(s.requests) for h, s in models.items()} == before

        # The assistant deleted, and another placed with its handle: that one answers.
        await sync_to_async(Assistant.objects.filter(room=room, handle="coder").delete)()
        stand_in = await sync_to_async(Assistant.objects.create)(
            room=room, handle="coder", name="New coder", provider="p-poet", model="m-new"
        )
        await sync_to_async(RoomAssistant.objects.create)(
            room=room, assistant=stand_in, handle="coder"
        )
        models["poet"].set_default(Scenario.normal(["fourth"]))
        asked = len(models["poet"].requests)
        version = await regenerate(reply, "r4")
        assert (await bob.wait_terminal(version))["state"] == "complete"
        assert bob.text_of(version) == "fourth"
        assert models["poet"].requests[asked].body["model"] == "m-new"

        # Taken out of the room (the assistant kept): it cannot answer again.
        await sync_to_async(RoomAssistant.objects.filter(room=room, handle="coder").delete)()
        await bob.send(action="regenerate", message_id=reply, id="r5")
        refused = await bob.wait_type("error", id="r5")
        assert refused["code"] == "bad_request"
        assert "@coder is no longer in this room" in refused["detail"]
        head = await sync_to_async(Message.objects.get)(pk=int(reply))
        assert (head.version_count, str(head.current_version_id)) == (5, version)
    finally:
        await bob.close()


@pytest.mark.parametrize("deleted", ["question", "reply"])
def test_a_mention_in_a_reply_deleted_meanwhile_asks_nobody(room, deleted):
    """A delete that lands between a reply's end and the asking of the assistants its text
    mentions: nobody is asked for the deleted exchange (asked first, they are replies to
    the question, which a later delete stops). The same exchange intact asks @critic."""
    from django.utils import timezone

    from chat.models import Role, Status
    from chat.replies import db

    room, _ = room

    def exchange() -> tuple[Message, Message]:
        question = Message.objects.create(
            room=room, role=Role.USER, author=room.owner, text="@coder who reviews this?"
        )
        reply = Message.objects.create(
            room=room,
            role=Role.ASSISTANT,
            text="@critic should",
            reply_to=question,
            status=Status.COMPLETE,
        )
        return question, reply

    def asked(reply: Message) -> list[str]:
        _, queued = db.create_followups(
            reply_id=reply.pk, text=reply.text, handle="coder", queued=0, worker="w"
        )
        return [q.speaker.handle for q in queued]

    _, intact = exchange()
    assert asked(intact) == ["critic"]
    question, reply = exchange()
    gone = question if deleted == "question" else reply
    Message.objects.filter(pk=gone.pk).update(deleted_at=timezone.now())
    assert asked(reply) == []
    assert not Message.objects.filter(reply_to=question, status=Status.QUEUED).exists()


async def test_deleting_a_question_two_assistants_answer_asks_the_waiting_one_nothing(
    server, room, models
):
    """A question to @coder and @critic, deleted while the coder writes: both replies are
    stopped before the tombstone reaches members, and the critic, still waiting in the
    room's line, is never sent a request (the coder's end does not start it)."""
    room, tokens = room
    models["coder"].set_default(Scenario.endless(("tick ",), interval=0.02))
    critic_before = len(models["critic"].requests)
    ann = await connect(server, room, tokens["ann"])
    bob = await connect(server, room, tokens["bob"])
    try:
        client_id = f"c-{uuid.uuid4().hex}"
        await ann.send(action="send", text="@coder and @critic: count", client_id=client_id)
        mine = await ann.wait_for(
            lambda e: e.get("type") == "message" and e["message"]["client_id"] == client_id
        )
        replies = []
        for _ in range(2):
            event = await bob.wait_for(
                lambda e: e.get("type") == "message" and e["message"]["role"] == "assistant"
            )
            replies.append(event["message"]["id"])
        coder, critic = replies
        await bob.wait_for(lambda e: e.get("type") == "delta" and e["message_id"] == coder)
        start = len(bob.events)
        await ann.send(action="delete", message_id=mine["message"]["id"], id="d")
        await bob.wait_type("delete", message_id=mine["message"]["id"], start=start)
        after = bob.events[start:]
        cut = next(i for i, e in enumerate(after) if e.get("type") == "delete")
        ended = [
            e["message_id"]
            for e in after[:cut]
            if e.get("type") == "generation" and e.get("state") == "stopped"
        ]
        assert sorted(ended) == sorted([coder, critic])  # both, before the tombstone
        assert len(models["critic"].requests) == critic_before
        stored = await sync_to_async(Message.objects.get)(pk=int(critic))
        assert (stored.status, stored.text) == ("stopped", "")
    finally:
        await ann.close()
        await bob.close()
