"""The official ``openai`` SDK, unmodified, against a real daphne: Chat Completions and
Responses into a Parley room (docs/protocol.md "OpenAI-compatible API")."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest
from asgiref.sync import sync_to_async
from openai import DefaultAsyncHttpxClient

from tests.openai_api.conftest import sdk
from tests.support.openai_server import Scenario
from tests.support.rooms import connect, stored

pytestmark = pytest.mark.django_db(transaction=True)

PIECES = ("Channels ", "carry ", "events ", "between ", "processes.")


async def test_models_list_each_room_assistant(team, ann_sdk, make_user, make_room):
    slug = team["room"].slug
    other, _ = await sync_to_async(make_user)("carol")
    # not ann's: not her model
    await sync_to_async(make_room)(other, "Carol's", visibility="private")
    found = [m.id async for m in ann_sdk.models.list()]
    assert f"parley/{slug}" in found
    assert f"parley/{slug}/assistant" in found
    assert f"parley/{slug}/coder" in found
    assert not [m for m in found if "carol" in m]
    one = await ann_sdk.models.retrieve(f"parley/{slug}/coder")
    assert (one.id, one.owned_by) == (f"parley/{slug}/coder", "ann")


async def test_streamed_completion_is_the_stored_reply_a_member_sees_live(team, ann_sdk, llm):
    llm.set_default(Scenario.slow(PIECES, delay=0.02))
    room = team["room"]
    bob = await connect(team["server"], room, team["bob"])
    try:
        stream = await ann_sdk.chat.completions.create(
            model=f"parley/{room.slug}",
            messages=[
                {"role": "system", "content": "ignored: the assistant's prompt is the room's"},
                {"role": "user", "content": "What do channels carry?"},
            ],
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reply_id = chunks[0].id.removeprefix("chatcmpl-")
        assert chunks[0].object == "chat.completion.chunk"
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert text == "".join(PIECES)
        assert (await stored(reply_id)).text == text
        # bob, in the room over a WebSocket, saw the question and the same reply live.
        question = await bob.wait_for(
            lambda e: e.get("type") == "message" and e["message"]["author"] == "ann"
        )
        assert question["message"]["text"] == "What do channels carry?"
        await bob.wait_terminal(reply_id)
        assert bob.text_of(reply_id) == text
        # Only the last user message was posted: the system message was not.
        assert [m for m in bob.of_type("message") if "ignored" in m["message"]["text"]] == []
    finally:
        await bob.close()


async def test_completion_not_streamed_and_sampling_reaches_the_model(team, ann_sdk, llm):
    llm.set_default(Scenario.normal(PIECES))
    start = len(llm.requests)
    done = await ann_sdk.chat.completions.create(
        model=f"parley/{team['room'].slug}/coder",
        messages=[{"role": "user", "content": "@nobody review this"}],
        temperature=0.3,
        max_tokens=40,
        stop=["END"],
    )
    assert done.object == "chat.completion"
    assert done.choices[0].message.content == "".join(PIECES)
    assert done.choices[0].finish_reason == "stop"
    reply = await stored(done.id.removeprefix("chatcmpl-"))
    assert reply.text == "".join(PIECES)
    # @coder answered (the model named it), not the room's always-answering @assistant.
    assert (await asyncio.to_thread(lambda: reply.generation.handle)) == "coder"
    sent = llm.request(start).body
    assert (sent["temperature"], sent["max_tokens"], sent["stop"]) == (0.3, 40, ["END"])
    assert done.usage is not None
    assert done.usage.prompt_tokens == 12


async def test_include_usage_ends_the_stream_with_the_usage(team, ann_sdk, llm):
    llm.set_default(Scenario.normal(PIECES, completion_tokens=5))
    stream = await ann_sdk.chat.completions.create(
        model=f"parley/{team['room'].slug}",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (12, 5)
    assert last.usage.total_tokens == 17
    assert all(c.usage is None for c in chunks[:-1])


async def test_closing_the_stream_does_not_stop_the_reply(team, ann_sdk, llm):
    llm.set_default(Scenario.stepped(PIECES))
    room = team["room"]
    bob = await connect(team["server"], room, team["bob"])
    try:
        start = len(llm.requests)
        stream = await ann_sdk.chat.completions.create(
            model=f"parley/{room.slug}", messages=[{"role": "user", "content": "go"}], stream=True
        )
        await asyncio.to_thread(llm.wait_request, start)
        llm.step()
        first = await anext(aiter(stream))
        reply_id = first.id.removeprefix("chatcmpl-")
        await stream.close()  # the client goes away mid-reply
        for _ in PIECES[1:]:
            llm.step()
        done = await bob.wait_terminal(reply_id)
        assert done["state"] == "complete"
        assert bob.text_of(reply_id) == "".join(PIECES)
        assert (await stored(reply_id)).text == "".join(PIECES)
    finally:
        await bob.close()


async def _step_deltas(stream, llm, count: int) -> list:
    """Let the model write ``count`` pieces, one at a time, each read as its delta before
    the next is written (so the room cannot merge two into one delta)."""
    got = []
    events = aiter(stream)
    for _ in range(count):
        llm.step()
        while True:
            got.append(await anext(events))
            if got[-1].type == "response.output_text.delta":
                break
    return got


async def test_background_response_resumed_after_a_cut_equals_an_uncut_one(team, ann_sdk, llm):
    llm.set_default(Scenario.stepped(PIECES))
    start = len(llm.requests)
    created = await ann_sdk.responses.create(
        model=f"parley/{team['room'].slug}", input="tell me", background=True, stream=True
    )
    await asyncio.to_thread(llm.wait_request, start)
    before = await _step_deltas(created, llm, 2)
    await created.close()  # the connection is cut after two deltas
    response_id = before[0].response.id
    assert before[0].type == "response.created"
    last = before[-1].sequence_number
    for _ in PIECES[2:]:
        llm.step()
    resumed = await ann_sdk.responses.retrieve(response_id, stream=True, starting_after=last)
    after = [event async for event in resumed]
    assert after[-1].type == "response.completed"
    assert all(e.sequence_number > last for e in after)
    deltas = [e.delta for e in before + after if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "".join(PIECES)
    # The same stream uncut (read from the start now it has ended) says the same.
    whole = await ann_sdk.responses.retrieve(response_id, stream=True)
    uncut = [event async for event in whole]
    text = "".join(e.delta for e in uncut if e.type == "response.output_text.delta")
    assert text == "".join(deltas)
    assert uncut[-1].type == after[-1].type == "response.completed"
    assert uncut[-1].response.output_text == after[-1].response.output_text == text
    # And the response as stored.
    got = await ann_sdk.responses.retrieve(response_id)
    assert (got.status, got.output_text) == ("completed", text)
    assert (await stored(response_id.removeprefix("resp_"))).text == text


async def test_background_returns_at_once_and_a_stream_opened_mid_reply_misses_nothing(
    team, ann_sdk, llm
):
    llm.set_default(Scenario.stepped(PIECES))
    start = len(llm.requests)
    created = await ann_sdk.responses.create(
        model=f"parley/{team['room'].slug}", input="go on", background=True
    )
    assert created.status in ("queued", "in_progress")
    assert created.background is True
    await asyncio.to_thread(llm.wait_request, start)
    llm.step()
    llm.step()
    reply_id = created.id.removeprefix("resp_")
    # Mid-reply: the text so far in one piece, then the rest as it comes.
    await _wait_text(reply_id, "".join(PIECES[:2]))
    stream = await ann_sdk.responses.retrieve(created.id, stream=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.type == "response.output_text.delta" and len(events) == 4:
            for _ in PIECES[2:]:
                llm.step()
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(PIECES)
    assert events[-1].type == "response.completed"


async def _wait_text(message_id: str, text: str) -> None:
    """Wait until the room has delivered ``text`` of the reply (its live copy)."""
    from chat import events

    room_id = (await stored(message_id)).room_id
    deadline = time.monotonic() + 10
    while True:
        _, now = await events.room_message_at(room_id=room_id, message_id=message_id)
        if now is not None and now["text"] == text:
            return
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.02)  # polls the room's state: there is no event to wait on here


async def test_cancel_stops_the_reply_and_closes_the_upstream(team, llm):
    llm.set_default(Scenario.endless(("tick ",), interval=0.01))
    room = team["room"]
    # The clock starts as the request goes on the wire, as the WebSocket stop's does when
    # its frame is sent: the SDK's own work before that is the client's.
    sent_at: list[float] = []

    async def on_request(request: Any) -> None:
        sent_at.append(time.monotonic())

    http = DefaultAsyncHttpxClient(event_hooks={"request": [on_request]})
    ann_sdk = sdk(team["server"], team["ann"], http_client=http)
    bob = await connect(team["server"], room, team["bob"])
    try:
        start = len(llm.requests)
        created = await ann_sdk.responses.create(
            model=f"parley/{room.slug}", input="tick forever", background=True
        )
        reply_id = created.id.removeprefix("resp_")
        await bob.wait_for(lambda e: e.get("type") == "delta" and len(bob.text_of(reply_id)) > 20)
        cancelled = await ann_sdk.responses.cancel(created.id)
        record = await asyncio.to_thread(llm.wait_disconnect, start, 5)
        assert record.closed_by == "client"
        assert record.disconnected_at is not None
        # The bound of the contract's stop (tests/chat/test_streaming.py).
        assert record.disconnected_at - sent_at[-1] < 0.1
        assert cancelled.status == "cancelled"
        stopped = await bob.wait_terminal(reply_id)
        assert (stopped["state"], stopped["by"]) == ("stopped", "ann")
        assert (await stored(reply_id)).text == bob.text_of(reply_id) == cancelled.output_text
        # Cancelling it again: it is not running any more.
        with pytest.raises(openai.ConflictError):
            await ann_sdk.responses.cancel(created.id)
    finally:
        await bob.close()
        await ann_sdk.close()


async def test_error_statuses_through_the_sdk_exception_types(
    team, ann_sdk, make_user, make_room, daphne_factory
):
    slug = team["room"].slug
    async with sdk(team["server"], "not-a-token") as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.models.list()
        assert refused.value.code == "invalid_api_key"
    carol, _ = await sync_to_async(make_user)("carol")
    hidden = await sync_to_async(make_room)(carol, "Hidden", visibility="private")
    for model in (f"parley/{hidden.slug}", f"parley/{slug}/nobody", "gpt-4o", "parley/"):
        with pytest.raises(openai.NotFoundError) as missing:
            await ann_sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
        assert missing.value.code == "model_not_found"
        assert missing.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        await ann_sdk.models.retrieve(f"parley/{hidden.slug}")
    user: Any = {"role": "user", "content": "hi"}
    bad: list[tuple[dict[str, Any], str | None]] = [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"temperature": 7}, "temperature"),
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "nul \x00 here"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x" * 9000}]}, None),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ]
            },
            "messages[0].content",
        ),
    ]
    for extra, param in bad:
        body = {"model": f"parley/{slug}", "messages": [user], **extra}
        with pytest.raises(openai.BadRequestError) as refused_body:
            await ann_sdk.chat.completions.create(**body)
        assert refused_body.value.status_code == 400
        if param is not None:
            assert refused_body.value.param == param, refused_body.value.body
    with pytest.raises(openai.BadRequestError):
        await ann_sdk.responses.create(model=f"parley/{slug}", input="hi", instructions="be terse")
    # The send's rate limit: the same as any send's, with its Retry-After.
    limited = await sync_to_async(daphne_factory)(
        PARLEY_SEND_BURST="1", PARLEY_SEND_PER_SECOND="0.01"
    )
    async with sdk(limited, team["ann"]) as client:
        await client.chat.completions.create(model=f"parley/{slug}", messages=[user])
        with pytest.raises(openai.RateLimitError) as slow_down:
            await client.chat.completions.create(model=f"parley/{slug}", messages=[user])
        assert int(slow_down.value.response.headers["Retry-After"]) >= 1
        assert slow_down.value.code == "rate_limit_exceeded"


async def test_pause_and_resume_extension(team, ann_sdk, llm):
    llm.set_default(Scenario.endless(("tick ",), interval=0.01))
    room = team["room"]
    bob = await connect(team["server"], room, team["bob"])
    try:
        created = await ann_sdk.responses.create(
            model=f"parley/{room.slug}", input="tick", background=True
        )
        reply_id = created.id.removeprefix("resp_")
        await bob.wait_type("delta", message_id=reply_id)
        paused = await ann_sdk.post(
            f"/responses/{created.id}/pause", cast_to=openai.types.responses.Response
        )
        assert paused.status == "in_progress"
        await bob.wait_type("generation", message_id=reply_id, state="paused", by="ann")
        got = await ann_sdk.responses.retrieve(created.id)
        assert got.model_extra["parley_status"] == "paused"
        await ann_sdk.post(
            f"/responses/{created.id}/resume", cast_to=openai.types.responses.Response
        )
        await bob.wait_type("generation", message_id=reply_id, state="streaming", by="ann")
        await ann_sdk.responses.cancel(created.id)
        await bob.wait_terminal(reply_id)
    finally:
        await bob.close()
