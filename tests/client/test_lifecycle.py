"""parley_client's edit, delete and rate, over both transports, and their typed events;
the terminal chat's /edit and /delete. Against a real daphne."""

from __future__ import annotations

import asyncio

import pytest

from parley_client import (
    Client,
    DeleteEvent,
    EditEvent,
    Forbidden,
    Message,
    MessageEvent,
    RatingCounts,
    RatingEvent,
    Snapshot,
)
from tests.client.test_chat import chat, stored, wait
from tests.support.openai_server import Scenario

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 30
TRANSPORTS = ["websocket", "sse"]


async def next_of(session, kind, **fields):
    async with asyncio.timeout(TIMEOUT):
        async for event in session.events():
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
                return event
    raise AssertionError(f"the session ended before a {kind.__name__}")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_edit_delete_and_rate_with_typed_events(daphne, llm, members, transport):
    room, tokens = members
    llm.set_default(Scenario.normal(["Paris", "."]))
    async with (
        Client(daphne.http_url, token=tokens["ann"], transport=transport) as ann_client,
        Client(daphne.http_url, token=tokens["bob"]) as bob_client,
        ann_client.room(room.slug) as ann,
        bob_client.room(room.slug) as bob,
    ):
        sent = await ann.send("capitol of France?")
        assert sent.reply is not None
        await ann.wait_reply(sent.reply.id)
        await ann.edit(sent.message.id, "capital of France?")
        edit = await next_of(bob, EditEvent, message_id=sent.message.id)
        assert (edit.text, edit.by) == ("capital of France?", "ann")

        await ann.rate(sent.reply.id, 1, "right")
        await bob.rate(sent.reply.id, -1)
        rating = await next_of(ann, RatingEvent, message_id=sent.reply.id, down=1)
        assert (rating.up, rating.down) == (1, 1)
        with pytest.raises(Forbidden):
            await bob.edit(sent.message.id, "not mine")

        await ann.delete(sent.message.id)
        gone = await next_of(bob, DeleteEvent, message_id=sent.message.id)
        assert gone.by == "ann"
        tombstone = await ann_client.message(sent.message.id)
        assert (tombstone.deleted, tombstone.text) == (True, "")
        reply = await bob_client.message(sent.reply.id)
        assert reply.rating == RatingCounts(up=1, down=1)

    # Over plain HTTP too, and a snapshot carries the same fields.
    async with Client(daphne.http_url, token=tokens["bob"]) as client:
        # An edit while the reply to it is written is refused (busy): wait for the end.
        edited = await client.send(room.slug, "typo hre", wait=True)
        changed = await client.edit(edited.message.id, "typo here")
        assert (changed.text, changed.edited) == ("typo here", True)
        async with client.room(room.slug, after=10**9) as late:
            snapshot = await next_of(late, Snapshot)
            by_id: dict[str, Message] = {m.id: m for m in snapshot.messages}
            assert by_id[sent.message.id].deleted
            assert by_id[edited.message.id].edited
            assert by_id[sent.reply.id].rating == RatingCounts(up=1, down=1)
        removed = await client.delete(edited.message.id)
        assert removed.deleted
        rated = await client.rate(sent.reply.id, 0)
        assert rated.rating == RatingCounts(up=1, down=0)


async def test_the_terminal_chat_edits_and_deletes_your_last_message(daphne, llm, members):
    room, tokens = members
    llm.set_default(Scenario.normal(["Sure."]))
    term = chat("--url", daphne.http_url, room.slug, token=tokens["ann"])
    try:
        await wait(term, "joined Client tests (client-tests)")
        async with (
            Client(daphne.http_url, token=tokens["bob"]) as bob_client,
            bob_client.room(room.slug) as bob,
        ):
            term.send("helo everyone\r")
            first = await next_of(bob, MessageEvent)
            await wait(term, "Assistant: Sure.")
            term.send("/edit hello everyone\r")
            edit = await next_of(bob, EditEvent, message_id=first.message.id)
            assert edit.text == "hello everyone"
            await wait(term, f"(ann edited message {first.message.id}:)")
            term.send("/delete\r")
            await next_of(bob, DeleteEvent, message_id=first.message.id)
            await wait(term, f"(ann's message {first.message.id} was deleted by ann)")
        assert stored(daphne, tokens["ann"], first.message.id)["deleted"] is True
        term.send("/delete\r")  # nothing of hers is left to delete
        await wait(term, "you have sent no message here to delete")
        term.send("/quit\r")
        assert await asyncio.to_thread(term.wait_exit, 20) == 0
    finally:
        term.close()
