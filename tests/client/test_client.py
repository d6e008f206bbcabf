"""The client library against a real daphne: HTTP calls, controls, errors, snapshots.

Each error is the typed exception a program would catch, carrying the contract's code,
and reads as a sentence.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley_client import (
    Client,
    Delta,
    Forbidden,
    Generation,
    Hello,
    MessageEvent,
    NotFound,
    NotGenerating,
    NotMember,
    RateLimited,
    Reconnecting,
    SlowReader,
    Snapshot,
    TooLong,
    Unauthorized,
    Unreachable,
)
from tests.client.conftest import FAST
from tests.support.daphne import free_port
from tests.support.openai_server import Scenario

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 30
TRANSPORTS = ["websocket", "sse"]


async def next_of(session, kind, timeout: float = TIMEOUT, **fields):
    async with asyncio.timeout(timeout):
        async for event in session.events():
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
                return event
    raise AssertionError(f"the session ended before a {kind.__name__}")


async def test_rooms_and_plain_http_with_wait(daphne, llm, members):
    room, tokens = members
    llm.set_default(Scenario.normal(["Four", "."]))
    async with Client(daphne.http_url, token=tokens["ann"]) as client:
        rooms = await client.rooms()
        assert room.slug in [r.slug for r in rooms]
        mine = next(r for r in rooms if r.slug == room.slug)
        assert (mine.owner, mine.assistant) == ("ann", "always")
        sent = await client.send(room.slug, "What is 2+2?", wait=True)
        assert sent.reply is not None
        assert (sent.reply.status, sent.reply.text) == ("complete", "Four.")
        assert sent.message.author == "ann"
        page = await client.messages(room.slug)
        assert [m.id for m in page.messages] == [sent.message.id, sent.reply.id]
        assert page.head > 0
        created = await client.create_room("Side room", visibility="private")
        assert created.visibility == "private"
        assert (await client.get_room(created.slug)).name == "Side room"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pause_resume_stop_over_each_transport(daphne, llm, members, transport):
    room, tokens = members
    llm.set_default(Scenario.endless(("tick ",), interval=0.01))
    async with (
        Client(daphne.http_url, token=tokens["ann"], transport=transport) as client,
        client.room(room.slug) as session,
    ):
        sent = await session.send("count @assistant")
        await next_of(session, Delta, message_id=sent.id)
        await session.pause(sent)
        paused = await next_of(session, Generation, message_id=sent.id)
        assert (paused.state, paused.by) == ("paused", "ann")
        await session.pause(sent)  # idempotent: no error
        await session.resume(sent)
        resumed = await next_of(session, Generation, message_id=sent.id)
        assert resumed.state == "streaming"
        await next_of(session, Delta, message_id=sent.id)
        await session.stop(sent)
        stopped = await next_of(session, Generation, message_id=sent.id, state="stopped")
        assert stopped.metrics is not None
        final = await session.wait_reply(sent.id)
        assert final.status == "stopped"
        assert final.text == session.reply_text(sent.id)
        assert final.text.startswith("tick ")
        with pytest.raises(NotGenerating) as info:
            await session.stop(sent)
        assert info.value.code == "not_generating"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_bystander_cannot_stop_a_reply(daphne, llm, members, transport):
    room, tokens = members
    cat_token = tokens["cat"]
    llm.set_default(Scenario.endless(("tick ",), interval=0.01))
    async with (
        Client(daphne.http_url, token=tokens["bob"]) as bob_client,
        Client(daphne.http_url, token=cat_token, transport=transport) as cat_client,
        bob_client.room(room.slug) as bob,
        cat_client.room(room.slug) as cat_session,
    ):
        sent = await bob.send("go @assistant")
        with pytest.raises(Forbidden) as info:
            await cat_session.stop(sent)
        assert not isinstance(info.value, NotMember)
        assert "asker" in str(info.value)
        await bob.stop(sent)
        assert (await bob.wait_reply(sent)).status == "stopped"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connection_errors_are_typed(daphne, members, dora_rooms, transport):
    room, tokens = members
    private, public = dora_rooms
    async with Client(daphne.http_url, token="pk_wrong", transport=transport) as client:
        with pytest.raises(Unauthorized) as info:
            await client.room(room.slug).open()
        assert "token" in str(info.value)
        with pytest.raises(Unauthorized):
            await client.rooms()
    async with Client(daphne.http_url, token=tokens["ann"], transport=transport) as client:
        with pytest.raises(NotFound) as not_found:
            await client.room(private.slug).open()
        with pytest.raises(NotMember) as not_member:
            await client.room(public.slug).open()
        if transport == "websocket":
            assert (not_found.value.close_code, not_member.value.close_code) == (4404, 4403)
        else:
            assert (not_found.value.status, not_member.value.status) == (404, 403)
        with pytest.raises(NotMember):
            await client.send(public.slug, "hi")
        await client.join(public.slug)
        async with client.room(public.slug) as session:
            assert session.room.slug == public.slug
    nobody = f"http://127.0.0.1:{free_port()}"
    async with Client(nobody, token=tokens["ann"], transport=transport) as client:
        with pytest.raises(Unreachable) as unreachable:
            await client.room(room.slug).open()
        assert "cannot reach" in str(unreachable.value)
        with pytest.raises(Unreachable):
            await client.rooms()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_rate_limit_and_too_long(daphne_factory, members, transport):
    room, tokens = members
    server = daphne_factory(PARLEY_SEND_BURST="1", PARLEY_SEND_PER_SECOND="0.01")
    async with (
        Client(server.http_url, token=tokens["bob"], transport=transport) as client,
        client.room(room.slug) as session,
    ):
        with pytest.raises(TooLong):
            await session.send("x" * 8001)
        await session.send("first, no reply needed", ask_ai=False)
        with pytest.raises(RateLimited) as info:
            await session.send("second")
        assert info.value.retry_after > 1
        assert "retry in" in str(info.value)


async def test_a_resume_point_the_server_never_issued_brings_a_snapshot(daphne, llm, members):
    room, tokens = members
    async with Client(daphne.http_url, token=tokens["ann"]) as client:
        sent = await client.send(room.slug, "before @assistant", wait=True)
        assert sent.reply is not None
        async with client.room(room.slug, after=10**9) as session:
            snapshot = await next_of(session, Snapshot)
        assert [m.id for m in snapshot.messages][-2:] == [sent.message.id, sent.id]
        assert snapshot.messages[-1].text == sent.reply.text
        assert session.last_seq == snapshot.seq


async def test_replay_after_a_seq(daphne, llm, members):
    room, tokens = members
    async with Client(daphne.http_url, token=tokens["ann"]) as client:
        start = (await client.get_room(room.slug)).head
        sent = await client.send(room.slug, "remember this @assistant", wait=True)
        async with client.room(room.slug, after=start) as session:
            first = await next_of(session, MessageEvent)
            assert first.message.id == sent.message.id
            assert first.seq == start + 1
            end = await next_of(session, Generation, message_id=sent.id, state="complete")
        assert end.metrics is not None
        assert end.metrics.tokens == 4


async def test_a_slow_reader_is_cut_off_and_resumes_by_itself(daphne_factory, llm, members):
    """A session whose caller stops reading is cut by the server (4408) and, once read
    again, resumes with nothing lost."""
    room, tokens = members
    server = daphne_factory(PARLEY_WS_MAX_BUFFER=str(64 * 1024))
    # 6 MB of text, more than the kernel's socket buffers between us hold (up to 4 MB of
    # send buffer on loopback), in small deltas: a piece every 4 ms keeps each delta near
    # 30 KB. (Today one event over daphne's 1 MiB frame limit fails the connection with
    # 1011 on every delivery, so the test keeps clear of that server issue.)
    pieces = [f"{i:04d}" + "x" * 4000 for i in range(1500)]
    llm.set_default(Scenario.slow(pieces, delay=0.004))
    async with (
        Client(server.http_url, token=tokens["ann"], backoff=FAST) as client,
        client.room(room.slug, buffer=1) as session,
    ):
        # The session's caller reads nothing while the whole reply is written.
        sent = await client.send(room.slug, "a lot @assistant", wait=True)
        assert sent.reply is not None
        events: list[Any] = []
        # Dozens of cut-and-resume rounds (the replay overflows the small buffer too).
        async with asyncio.timeout(3 * TIMEOUT):
            async for event in session.events():
                events.append(event)
                if isinstance(event, Generation) and event.is_terminal:
                    break
        reasons = [e.reason for e in events if isinstance(e, Reconnecting)]
        assert reasons
        assert isinstance(reasons[0], SlowReader)
        assert reasons[0].close_code == 4408
        assert sum(isinstance(e, Hello) for e in events) == len(reasons) + 1
        text = "".join(e.text for e in events if isinstance(e, Delta) and e.message_id == sent.id)
        assert text == "".join(pieces) == sent.reply.text
        seqs = [e.seq for e in events if getattr(e, "seq", None) is not None]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
