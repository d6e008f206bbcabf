"""The client's core promise, end to end against a real daphne: a drop in the middle of a
streamed reply is invisible in ``events()``. Every durable event arrives exactly once, in
order, and the resumed stream is identical to an uninterrupted one.

The drops are real: a loopback TCP proxy between the client and daphne resets every
connection (``cut``), or stops listening for a while (``stop`` / ``start``).
"""

from __future__ import annotations

import asyncio

import pytest

from parley_client import (
    Client,
    Delta,
    Generation,
    Hello,
    Presence,
    Reconnecting,
    RoomSession,
    Unauthorized,
    Unreachable,
)
from tests.client.conftest import FAST
from tests.support.openai_server import Scenario

pytestmark = pytest.mark.django_db(transaction=True)

PIECES = [f"piece{i} " for i in range(40)]
TIMEOUT = 30


async def collect_reply(room: RoomSession, reply_id: str, on_delta=None) -> list:
    """Every event of ``room`` until ``reply_id`` is terminal; ``on_delta(n)`` after each."""
    seen: list = []
    deltas = 0
    async with asyncio.timeout(TIMEOUT):
        async for event in room.events():
            seen.append(event)
            if isinstance(event, Delta) and event.message_id == reply_id:
                deltas += 1
                if on_delta is not None:
                    await on_delta(deltas)
            if isinstance(event, Generation) and event.message_id == reply_id and event.is_terminal:
                return seen
    raise AssertionError("the session ended before the reply did")


def durable(events: list) -> list[tuple[int, dict]]:
    return [(e.seq, e.raw) for e in events if getattr(e, "seq", None) is not None]


def text_of(events: list, reply_id: str) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta) and e.message_id == reply_id)


@pytest.mark.parametrize("mode", ["websocket", "sse", "auto"])
async def test_a_cut_mid_reply_resumes_identical_to_an_uninterrupted_stream(
    daphne, llm, members, proxy, ws_blocking_proxy, mode
):
    room, tokens = members
    llm.set_default(Scenario.slow(PIECES, delay=0.03))
    # "auto" goes through a proxy that refuses WebSockets, so it must fall back to SSE.
    through = ws_blocking_proxy if mode == "auto" else proxy
    async with (
        Client(daphne.http_url, token=tokens["bob"]) as direct_client,
        Client(through.url, token=tokens["ann"], transport=mode, backoff=FAST) as client,
        direct_client.room(room.slug) as direct,
        client.room(room.slug) as session,
    ):
        if mode == "auto":
            assert (session.transport, session.fell_back) == ("sse", True)
            assert ws_blocking_proxy.refused_upgrades == 1
        else:
            assert session.transport == mode
        sent = await session.send("tell me a story @assistant")
        assert sent.reply is not None
        assert sent.message.text == "tell me a story @assistant"
        assert sent.reply.reply_to == sent.message.id

        async def cut_after_five(n: int) -> None:
            if n == 5:
                await through.cut()

        resumed = await collect_reply(session, sent.id, on_delta=cut_after_five)
        reference = await collect_reply(direct, sent.id)

        # The cut happened in the middle of the reply, and the session came back.
        kinds = [type(e) for e in resumed]
        drop = kinds.index(Reconnecting)
        assert Delta in kinds[:drop]
        assert Delta in kinds[drop:]
        assert isinstance(resumed[drop + 1], Hello)
        assert session.connects == 2
        # Identical durable events, each once, in order, to the uninterrupted member's.
        assert durable(resumed) == durable(reference)
        seqs = [seq for seq, _ in durable(resumed)]
        assert seqs == sorted(set(seqs))
        assert text_of(resumed, sent.id) == "".join(PIECES)
        final = await session.wait_reply(sent)
        assert (final.status, final.text) == ("complete", "".join(PIECES))


async def test_a_server_away_for_a_while_is_retried_with_backoff(daphne, llm, members, proxy):
    room, tokens = members
    llm.set_default(Scenario.slow(PIECES, delay=0.03))
    async with (
        Client(daphne.http_url, token=tokens["bob"]) as direct_client,
        Client(proxy.url, token=tokens["ann"], backoff=FAST) as client,
        direct_client.room(room.slug) as direct,
        client.room(room.slug) as session,
    ):
        sent = await session.send("go on @assistant")
        seen: list = []
        async with asyncio.timeout(TIMEOUT):
            async for event in session.events():
                seen.append(event)
                if isinstance(event, Delta) and sum(isinstance(e, Delta) for e in seen) == 3:
                    await proxy.stop()
                if isinstance(event, Reconnecting) and event.attempt == 3:
                    # Two attempts found nobody listening; the server comes back.
                    await proxy.start()
                if isinstance(event, Generation) and event.is_terminal:
                    break
        reconnecting = [e for e in seen if isinstance(e, Reconnecting)]
        assert [e.attempt for e in reconnecting] == [1, 2, 3]
        assert isinstance(reconnecting[1].reason, Unreachable)
        assert all(e.after == reconnecting[0].after for e in reconnecting)
        reference = await collect_reply(direct, sent.id)
        assert durable(seen) == durable(reference)
        assert text_of(seen, sent.id) == "".join(PIECES)


async def test_a_token_revoked_while_away_ends_the_session_with_unauthorized(
    daphne, members, proxy
):
    """Reconnecting cannot help once the token is revoked: events() raises, once."""
    from asgiref.sync import sync_to_async

    from accounts.models import ApiToken, hash_token
    from accounts.services import api_token_revoke

    room, tokens = members
    async with (
        Client(proxy.url, token=tokens["ann"], backoff=FAST) as client,
        client.room(room.slug) as session,
    ):
        token = await sync_to_async(ApiToken.objects.get)(key_hash=hash_token(tokens["ann"]))
        await sync_to_async(api_token_revoke)(token=token)
        await proxy.cut()
        seen: list = []

        async def read_all() -> None:
            async with asyncio.timeout(TIMEOUT):
                async for event in session.events():
                    seen.append(event)

        with pytest.raises(Unauthorized) as info:
            await read_all()
        assert info.value.close_code == 4401
        assert [type(e) for e in seen if not isinstance(e, Presence)] == [Hello, Reconnecting]
        assert not session.connected
        with pytest.raises(Unauthorized):
            await session.send("anyone there?")


async def test_a_server_failing_every_connection_is_retried_ever_more_slowly(
    daphne, members, proxy
):
    """Connections that die right after hello, with nothing delivered, do not reset the
    backoff: a crash loop is retried more and more slowly, not at the first delay forever."""
    room, tokens = members
    async with (
        Client(proxy.url, token=tokens["ann"], backoff=FAST) as client,
        client.room(room.slug) as session,
    ):
        proxy.cut_after = b'"type":"hello"'
        await proxy.cut()
        delays: list[float] = []
        async with asyncio.timeout(TIMEOUT):
            async for event in session.events():
                if isinstance(event, Reconnecting):
                    delays.append(event.delay)
                    if len(delays) == 6:
                        break
        # FAST starts at 0.02 s doubling (each delay drawn from half to all of it) and caps
        # at 0.2 s; the first connection delivered nothing durable either, so it counts.
        assert delays[0] <= 0.04
        assert all(d >= 0.1 for d in delays[4:])
        assert session.connects >= 5
