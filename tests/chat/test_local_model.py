"""The bundled model end to end: what `make run` gives a newcomer with no keys."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from chat.models import Generation
from tests.support.rooms import ask, stored
from tests.support.wsclient import RoomClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.model]


@pytest.fixture
def lobby(make_user, make_room):
    user, token = make_user("newcomer")
    return make_room(user, "Lobby"), token


async def test_bundled_model_streams_a_reply_over_the_websocket(daphne_factory, lobby):
    room, token = lobby
    server = daphne_factory(
        LLM_BACKEND="local",
        LLM_MODEL="gemma-3-270m",
        LLM_LOCAL_MAX_TOKENS="24",
        OPENAI_BASE_URL="",
        OPENAI_API_KEY="",
    )
    client = await RoomClient.connect(server.ws_url, room.slug, token=token)
    try:
        await client.wait_type("hello")
        reply_id = await ask(client, "What is the capital of France?")
        end = await client.wait_terminal(reply_id, timeout=120)
        assert end["state"] == "complete", end
        text = client.text_of(reply_id)
        assert text.strip()
        assert len(client.of_type("delta")) >= 1
        saved = await stored(reply_id)
        assert saved.text == text
        gen = await sync_to_async(Generation.objects.get)(message_id=int(reply_id))
        assert (gen.backend, gen.model) == ("local", "gemma-3-270m")
        assert gen.completion_tokens
        assert gen.completion_tokens <= 24
        assert end["usage"]["prompt_tokens"] > 0
    finally:
        await client.close()


@pytest.fixture
def two_rooms(make_user, make_room):
    ann, token = make_user("ann")
    return make_room(ann, "Counting"), make_room(ann, "Other"), token


async def test_a_reply_waiting_for_the_bundled_model_is_told_its_place(daphne_factory, two_rooms):
    counting, other, token = two_rooms
    server = daphne_factory(
        LLM_BACKEND="local",
        LLM_MODEL="gemma-3-270m",
        LLM_LOCAL_MAX_TOKENS="200",
        LLM_TEMPERATURE="0",
        OPENAI_BASE_URL="",
        OPENAI_API_KEY="",
    )
    busy = await RoomClient.connect(server.ws_url, counting.slug, token=token)
    waiting = await RoomClient.connect(server.ws_url, other.slug, token=token)
    try:
        await busy.wait_type("hello")
        await waiting.wait_type("hello")
        # Greedy, this counts for all of its 200 tokens: the model stays busy.
        long_one = await ask(busy, "count to 1000 with commas: 1, 2, 3, 4, 5, 6, 7")
        await busy.wait_type("delta", timeout=120, message_id=long_one)
        mine = await ask(waiting, "What is the capital of France?")
        # Its room has nothing else to do, but the model is writing the other room's reply.
        place = await waiting.wait_for(
            lambda e: (
                e.get("type") == "queue"
                and any(p["message_id"] == mine and p["model_position"] == 2 for p in e["replies"])
            ),
            timeout=30,
        )
        assert place["replies"][0]["position"] == 1
        await busy.send(action="stop", message_id=long_one)
        await busy.wait_terminal(long_one, timeout=30)
        # The model moves on to it: it is first for the model, then it answers.
        await waiting.wait_for(
            lambda e: (
                e.get("type") == "queue"
                and any(p["message_id"] == mine and p["model_position"] == 1 for p in e["replies"])
            ),
            timeout=30,
        )
        end = await waiting.wait_terminal(mine, timeout=120)
        assert end["state"] == "complete", end
    finally:
        await busy.close()
        await waiting.close()
