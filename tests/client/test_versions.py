"""parley_client and parley-chat with versions of a reply (docs/protocol.md "Versions of a
reply"), against a real daphne: regenerate, the typed VersionEvent, pick_version, on
each transport; ``/regen`` in the terminal chat."""

from __future__ import annotations

import asyncio

import pytest

from parley_client import Client, Forbidden, MessageEvent, VersionEvent
from parley_client.models import parse_event
from tests.client.test_chat import chat, wait
from tests.client.test_client import TRANSPORTS, next_of
from tests.support.openai_server import Scenario

pytestmark = pytest.mark.django_db(transaction=True)


async def next_version(session, reply_id: str) -> MessageEvent:
    """The next new version of ``reply_id`` the session yields."""
    async with asyncio.timeout(30):
        async for event in session.events():
            if isinstance(event, MessageEvent) and event.message.version_of == reply_id:
                return event
    raise AssertionError("the session ended before the new version")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_regenerate_and_pick_a_version_over_each_transport(daphne, llm, members, transport):
    room, tokens = members
    llm.script(Scenario.normal(["One."]), Scenario.normal(["Two."]))
    async with (
        Client(daphne.http_url, token=tokens["ann"], transport=transport) as client,
        client.room(room.slug) as session,
        Client(daphne.http_url, token=tokens["cat"], transport=transport) as cat_client,
    ):
        sent = await session.send("go @assistant")
        await session.wait_reply(sent.id)
        await session.regenerate(sent)
        made = await next_version(session, sent.id)
        assert made.message.version == 2
        event = await next_of(session, VersionEvent, message_id=sent.id)
        assert (event.current, event.versions, event.by) == (made.message.id, 2, "ann")
        assert (await session.wait_reply(made.message.id)).text == "Two."

        detail = await client.message(sent.id)
        assert (detail.versions, detail.current) == (2, made.message.id)
        assert [(v.version, v.text) for v in detail.version_list] == [(1, "One."), (2, "Two.")]

        await session.pick_version(sent.id)
        picked = await next_of(session, VersionEvent, message_id=sent.id)
        assert (picked.current, picked.by) == (sent.id, "ann")
        # Cat neither asked nor owns the room.
        with pytest.raises(Forbidden):
            await cat_client.regenerate(sent.id)
        with pytest.raises(Forbidden):
            await cat_client.pick_version(made.message.id)


def test_a_version_event_parses_typed_and_a_bad_one_is_malformed():
    event = parse_event(
        {"type": "version", "seq": 9, "message_id": "7", "current": "12", "versions": 2, "by": "a"}
    )
    assert isinstance(event, VersionEvent)
    assert (event.message_id, event.current, event.versions, event.by) == ("7", "12", 2, "a")
    from parley_client.models import MalformedEvent

    with pytest.raises(MalformedEvent):
        parse_event({"type": "version", "seq": 9, "message_id": "7", "versions": 2})


async def test_regen_in_the_terminal_chat(daphne, llm, members):
    room, tokens = members
    llm.script(Scenario.normal(["First ", "take."]), Scenario.normal(["Second ", "take."]))
    term = chat("--url", daphne.http_url, room.slug, token=tokens["ann"])
    try:
        await wait(term, "joined Client tests")
        term.send("tell me @assistant\r")
        await wait(term, "Assistant: First take.")
        term.send("/regen\r")
        await wait(term, "Assistant: Second take.")
        screen = await wait(term, "has 2 versions")
        assert "First take." in screen
        term.send("/quit\r")
        assert await asyncio.to_thread(term.wait_exit) == 0
    finally:
        term.close()
