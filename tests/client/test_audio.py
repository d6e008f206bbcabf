"""Spoken replies through the client: PCM chunks with their format, and WAV files.

The speech service is the loopback fake of OpenAI's ``/v1/audio/speech`` (outside the
project); daphne, the reply and the audio delivery are real.
"""

from __future__ import annotations

import asyncio
import wave
from typing import Any

import pytest

from parley_client import AudioChunk, AudioEnd, AudioStart, Client, Generation, MessageEvent
from tests.support.openai_server import Scenario
from tests.support.tts_servers import FakeSpeechServer

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 30


@pytest.fixture
def speech():
    server = FakeSpeechServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_spoken_reply_arrives_as_pcm_and_saves_as_wav(
    daphne_factory, llm, members, speech, tmp_path, transport
):
    room, tokens = members
    llm.set_default(Scenario.normal(["Hello there. ", "This is spoken."]))
    server = daphne_factory(
        TTS_BACKEND="openai", OPENAI_TTS_BASE_URL=speech.base_url, OPENAI_TTS_API_KEY="sk"
    )
    async with (
        Client(server.http_url, token=tokens["ann"], transport=transport) as client,
        client.room(room.slug, audio=True) as session,
    ):
        sent = await session.send("speak @assistant", voice="streaming")
        seen: list[Any] = []
        async with asyncio.timeout(TIMEOUT):
            async for event in session.events():
                seen.append(event)
                if isinstance(event, AudioEnd) and event.message_id == sent.id:
                    break
        start = next(e for e in seen if isinstance(e, AudioStart))
        assert (start.message_id, start.format, start.mode) == (sent.id, "pcm_s16le", "streaming")
        assert start.sample_rate == 24000
        chunks = [e for e in seen if isinstance(e, AudioChunk)]
        assert chunks
        assert all(
            (c.stream, c.message_id, c.sample_rate, c.format)
            == (start.stream, sent.id, 24000, "pcm_s16le")
            for c in chunks
        )
        assert [c.index for c in chunks] == list(range(len(chunks)))
        end = next(e for e in seen if isinstance(e, AudioEnd))
        assert end.chunks == len(chunks)
        assert any(isinstance(e, Generation) and e.state == "complete" for e in seen)

        clip = await session.wait_audio(sent)
        assert clip.complete
        path = clip.write_wav(tmp_path / "reply.wav")
        with wave.open(str(path)) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
            assert wav.readframes(wav.getnframes()) == b"".join(c.pcm for c in chunks)
        assert clip.seconds > 0.5


async def test_without_audio_no_audio_events_arrive(daphne_factory, llm, members, speech):
    room, tokens = members
    server = daphne_factory(
        TTS_BACKEND="openai", OPENAI_TTS_BASE_URL=speech.base_url, OPENAI_TTS_API_KEY="sk"
    )
    async with (
        Client(server.http_url, token=tokens["ann"]) as client,
        client.room(room.slug) as quiet,
        client.room(room.slug, audio=True) as listening,
    ):
        sent = await quiet.send("speak @assistant", voice="streaming")
        async with asyncio.timeout(TIMEOUT):
            clip = await listening.wait_audio(sent)
        assert clip.complete
        # A message sent after the audio ended reaches the quiet session after anything
        # the room sent before it: by then, any audio would have arrived too.
        marker = await listening.send("after the audio", ask_ai=False)
        kinds = []
        async with asyncio.timeout(TIMEOUT):
            async for event in quiet.events():
                kinds.append(type(event))
                if isinstance(event, MessageEvent) and event.message.id == marker.message.id:
                    break
        assert Generation in kinds
        assert not {AudioStart, AudioChunk, AudioEnd} & set(kinds)
