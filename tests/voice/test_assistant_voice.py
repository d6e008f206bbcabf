"""Where a room speaks, each assistant's reply is spoken with its own voice (Assistant.voice),
over a real daphne and a loopback speech server that records what it was asked."""

from __future__ import annotations

import pytest

from chat.models import Assistant, RoomAssistant
from tests.support.openai_server import Scenario
from tests.support.rooms import ask, connect
from tests.support.tts.openai import FakeSpeechServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def speech():
    server = FakeSpeechServer().start()
    yield server
    server.stop()


@pytest.fixture
def spoken_room(make_user, make_room):
    """A room that speaks, with its `assistant` and a poet that has a voice of its own."""
    ann, token = make_user("ann")
    room = make_room(ann, "Spoken", voice="normal")
    poet = Assistant.objects.create(room=room, handle="poet", name="Poet", voice="nova")
    RoomAssistant.objects.create(room=room, assistant=poet, handle="poet")
    return room, token


async def test_each_assistant_speaks_with_its_own_voice(daphne_factory, llm, speech, spoken_room):
    room, token = spoken_room
    llm.set_default(Scenario.normal(["Said ", "aloud."]))
    server = daphne_factory(
        TTS_BACKEND="openai", OPENAI_TTS_BASE_URL=speech.base_url, OPENAI_TTS_API_KEY="sk"
    )
    client = await connect(server, room, token, audio=True)
    try:
        for handle in ("poet", "assistant"):
            reply = await ask(client, f"@{handle} say it")
            await client.wait_type("audio", state="end", stream=int(reply), timeout=20)
        # The poet has a voice of its own; the room's `assistant` speaks with the server's.
        assert [r.body["voice"] for r in speech.requests] == ["nova", "alloy"]
    finally:
        await client.close()
