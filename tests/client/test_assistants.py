"""The client's view of a room's assistants, against a real daphne: typed assistants on
rooms and in ``hello``, replies that name their assistant, the ``room`` event, the models
list and the assistants API (docs/protocol.md "Assistants").

The parsing of shapes a server may send (an older server's, without assistants; a newer
one's) is checked on the shapes themselves, as a program would meet them.

test_the_assistants_api_and_the_room_event uses ``GET /api/models`` and the room
assistants API, which the settings work of issue 18 adds.
"""

from __future__ import annotations

import asyncio

import pytest

from parley_client import (
    Assistant,
    BadRequest,
    Client,
    Forbidden,
    Generation,
    Hello,
    Message,
    MessageEvent,
    Models,
    ReplyAssistant,
    Room,
    RoomEvent,
    UnknownEvent,
)
from parley_client.models import parse_event
from tests.support.assistants import add_assistant

TIMEOUT = 30


async def next_of(session, kind, timeout: float = TIMEOUT, **fields):
    async with asyncio.timeout(timeout):
        async for event in session.events():
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
                return event
    raise AssertionError(f"the session ended before a {kind.__name__}")


# --- shapes ---------------------------------------------------------------------------------

OLD_ROOM = {
    "slug": "r",
    "name": "R",
    "owner": "ann",
    "visibility": "public",
    "assistant": "mention",
    "voice": "off",
    "head": 3,
}
OLD_REPLY = {
    "id": "7",
    "room": "r",
    "role": "assistant",
    "author": "assistant",
    "text": "Hi.",
    "status": "complete",
    "reply_to": "6",
    "client_id": None,
    "created": "2026-01-01T00:00:00Z",
}


def test_an_older_server_s_room_and_reply_read_with_defaults():
    room = Room.from_dict(OLD_ROOM)
    assert room.assistants == ()
    # The one assistant, as it was: mentioned as @assistant.
    assert not room.answers("hello")
    assert room.answers("hello @assistant")
    reply = Message.from_dict(OLD_REPLY)
    assert reply.assistant is None
    assert reply.assistant_name == "Assistant"
    person = Message.from_dict({**OLD_REPLY, "role": "user", "author": "ann"})
    assert person.assistant_name is None


def test_a_room_event_is_typed_and_an_unknown_one_still_passes():
    coder = {
        "handle": "coder",
        "name": "Coder",
        "avatar": "#336699",
        "model": "fast/qwen",
        "mode": "always",
        "shared": False,
        "a_later_field": 1,
    }
    event = parse_event(
        {"type": "room", "seq": 9, "room": {**OLD_ROOM, "name": "Renamed", "assistants": [coder]}}
    )
    assert isinstance(event, RoomEvent)
    assert (event.seq, event.room.name) == (9, "Renamed")
    assert event.room.assistants == (
        Assistant(handle="coder", name="Coder", avatar="#336699", model="fast/qwen", mode="always"),
    )
    assert event.room.assistants[0].provider == "fast"
    assert event.room.answers("anything")  # coder answers every message
    later = parse_event({"type": "room_poll", "seq": 10, "x": 1})
    assert isinstance(later, UnknownEvent)
    assert later.seq == 10


def test_mentions_count_as_the_server_counts_them():
    from parley_client.models import mentions

    assert mentions("@Coder and @poet, then @coder again") == ["coder", "poet"]
    assert mentions("mail bob@coder.io or see @coder.") == ["coder"]
    assert mentions("@coder-x @coder_") == ["coder-x", "coder_"]
    room = Room.from_dict(
        {
            **OLD_ROOM,
            "assistants": [
                {"handle": "assistant", "name": "Assistant", "mode": "mention"},
                {"handle": "coder", "name": "Coder", "mode": "mention"},
            ],
        }
    )
    assert [a.handle for a in room.answering("@CODER, then @assistant")] == [
        "coder",
        "assistant",
    ]
    assert not room.answers("write to bob@coder.io")
    assert not room.answers("hi @ann")  # a member: nobody answers
    assert room.answers("hi @coder")
    assert room.answers("hi", ask_ai=True)


def test_the_models_list_reads_models_and_errors():
    models = Models.from_dict(
        {
            "models": [{"id": "default/m-1", "provider": "default", "model": "m-1"}, {"x": 1}],
            "errors": [{"provider": "down", "error": "cannot connect"}],
        }
    )
    assert [m.id for m in models.models] == ["default/m-1"]
    assert models.models[0].model == "m-1"
    assert models.errors == {"down": "cannot connect"}


# --- against the server ---------------------------------------------------------------------


async def test_rooms_and_hello_list_the_room_s_assistants(daphne, llm, members):
    room, tokens = members
    await asyncio.to_thread(
        add_assistant, room, "coder", "Coder", avatar="🛠", model="fake-model", mode="mention"
    )
    async with Client(daphne.http_url, token=tokens["bob"]) as client:
        fetched = await client.get_room(room.slug)
        assert [a.handle for a in fetched.assistants] == ["assistant", "coder"]
        coder = fetched.assistant_named("coder")
        assert coder == Assistant(
            handle="coder",
            name="Coder",
            avatar="🛠",
            model="default/fake-model",
            mode="mention",
            shared=False,
        )
        # The room's first assistant answers every message (the fixture's room).
        first = fetched.assistant_named("assistant")
        assert first is not None
        assert first.mode == "always"
        assert fetched.answers("hi")
        async with client.room(room.slug) as session:
            hello = await next_of(session, Hello)
            assert hello.room.assistants == fetched.assistants
            assert session.room.assistant_named("coder") == coder


async def test_a_reply_names_the_assistant_that_wrote_it(daphne, llm, members):
    room, tokens = members
    async with (
        Client(daphne.http_url, token=tokens["ann"]) as client,
        client.room(room.slug) as session,
    ):
        sent = await session.send("hello")
        assert sent.reply is not None
        reply = await session.wait_reply(sent)
        assert reply.assistant == ReplyAssistant(
            handle="assistant", name="Assistant", model="default/fake-model"
        )
        assert reply.author == "assistant"
        assert reply.assistant_name == "Assistant"
        page = await client.messages(room.slug)
        stored = next(m for m in page.messages if m.id == sent.reply.id)
        assert stored.assistant == reply.assistant
        assert next(m for m in page.messages if m.id == sent.message.id).assistant is None


async def test_the_assistants_api_and_the_room_event(daphne, llm, members):
    """Needs the room assistants API and its ``room`` event (issue 18's settings work)."""
    room, tokens = members
    async with (
        Client(daphne.http_url, token=tokens["ann"]) as ann,
        Client(daphne.http_url, token=tokens["bob"]) as bob,
        bob.room(room.slug) as session,
    ):
        await next_of(session, Hello)
        models = await ann.models()
        assert "default/fake-model" in [m.id for m in models.models]
        assert models.errors == {}

        made = await ann.create_assistant(
            room.slug,
            "coder",
            name="Coder",
            model="default/fake-model",
            system_prompt="You review code.",
            temperature=0.2,
            mode="mention",
            avatar="🛠",
        )
        assert (made.handle, made.name, made.model, made.mode) == (
            "coder",
            "Coder",
            "default/fake-model",
            "mention",
        )
        # Every open connection hears of it, and the session's room says so.
        event = await next_of(session, RoomEvent)
        assert event.room.assistant_named("coder") is not None
        assert session.room.assistant_named("coder") is not None

        listed = await bob.assistants(room.slug)
        coder = next(a for a in listed if a.handle == "coder")
        assert (coder.system_prompt, coder.temperature) == ("You review code.", 0.2)

        changed = await ann.update_assistant(room.slug, "coder", name="Reviewer")
        assert changed.name == "Reviewer"
        renamed = await next_of(session, RoomEvent)
        reviewer = renamed.room.assistant_named("coder")
        assert reviewer is not None
        assert reviewer.name == "Reviewer"

        # Bad input: a clear error, and nothing changed.
        with pytest.raises(BadRequest):
            await ann.update_assistant(room.slug, "coder", temperature=9.0)
        with pytest.raises(Forbidden):
            await bob.update_assistant(room.slug, "coder", name="Mine")
        assert next(a for a in await bob.assistants(room.slug) if a.handle == "coder").name == (
            "Reviewer"
        )

        await ann.delete_assistant(room.slug, "coder")
        removed = await next_of(session, RoomEvent)
        assert removed.room.assistant_named("coder") is None
        assert session.room.assistant_named("coder") is None


async def test_a_reply_event_carries_its_assistant(daphne, llm, members):
    room, tokens = members
    async with (
        Client(daphne.http_url, token=tokens["ann"]) as client,
        client.room(room.slug) as session,
    ):
        sent = await session.send("hello")
        started = await next_of(session, MessageEvent)
        while started.message.id != sent.id:
            started = await next_of(session, MessageEvent)
        assert started.message.assistant_name == "Assistant"
        await next_of(session, Generation, message_id=sent.id, state="complete")
