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
