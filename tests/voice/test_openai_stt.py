"""Speech to text through an OpenAI-compatible server: a loopback server that speaks
``/v1/audio/transcriptions``, in process and behind a real daphne."""

from __future__ import annotations

import socket

import pytest

from tests.support.stt_server import FakeTranscriptionServer
from tests.support.wsclient import RoomClient
from tests.voice.speech_samples import resample_16k, spoken
from voice.stt import STTError
from voice.stt.openai import OpenAITranscriptionEngine


def engine_for(url: str) -> OpenAITranscriptionEngine:
    return OpenAITranscriptionEngine(
        base_url=url, api_key="sk-test", model="whisper-1", connect_timeout=2, read_timeout=5
    )


async def test_the_utterance_goes_up_as_a_wav_and_the_text_comes_back() -> None:
    pcm = bytes(range(256)) * 40
    async with FakeTranscriptionServer(transcript="  hello there  ") as fake:
        engine = engine_for(fake.base_url)
        try:
            assert await engine.transcribe(pcm, 16000) == "hello there"
        finally:
            await engine.aclose()
    [upload] = fake.uploads
    assert upload.headers["authorization"] == "Bearer sk-test"
    assert upload.fields == {"model": "whisper-1", "response_format": "json"}
    assert (upload.pcm, upload.sample_rate) == (pcm, 16000)


async def test_failures_have_reasons_a_member_can_read() -> None:
    async with FakeTranscriptionServer(status=401) as fake:
        engine = engine_for(fake.base_url)
        with pytest.raises(STTError) as err:
            await engine.transcribe(b"\x01\x00" * 100, 16000)
        assert err.value.code == "upstream_status"
        assert "401" in err.value.reason
        assert "Incorrect API key" in err.value.reason
        fake.status, fake.raw_answer = 200, b"<html>oops</html>"
        with pytest.raises(STTError) as err:
            await engine.transcribe(b"\x01\x00" * 100, 16000)
        assert err.value.code == "malformed"
        await engine.aclose()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = engine_for(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(STTError) as err:
        await engine.transcribe(b"\x01\x00" * 100, 16000)
    assert err.value.code == "refused"
    assert f"127.0.0.1:{port}" in err.value.reason
    await engine.aclose()


@pytest.fixture
def remote_room(make_user, make_room):
    ann, token = make_user("ann")
    return make_room(ann, "Remote", assistant="mention"), token


@pytest.mark.django_db(transaction=True)
async def test_a_room_can_use_a_remote_transcriber(daphne_factory, remote_room) -> None:
    room, token = remote_room
    with FakeTranscriptionServer(transcript="Remote words arrive.") as fake:
        server = daphne_factory(
            STT_BACKEND="openai", OPENAI_STT_BASE_URL=fake.base_url, OPENAI_STT_API_KEY="sk-r"
        )
        ann = await RoomClient.connect(server.ws_url, room.slug, token=token)
        try:
            await ann.wait_type("hello")
            await ann.send(action="speech", state="start", sample_rate=16000, id="s")
            await ann.wait_type("speech", state="listening", id="s")
            pcm = resample_16k(*spoken())
            for at in range(0, len(pcm), 3200):
                await ann.send_raw(pcm[at : at + 3200])
            said = len(ann.events)
            await ann.send(action="speech", state="end", id="e")
            done = await ann.wait_type("speech", state="transcribed", id="e", timeout=30)
            assert done["text"] == "Remote words arrive."
            # The room's message may come before the answer to `end` or after it.
            message = await ann.wait_for(lambda e: e.get("type") == "message", start=said)
            assert message["message"]["input"] == "speech"
        finally:
            await ann.close()
    assert fake.uploads[0].pcm == pcm
