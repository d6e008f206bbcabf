"""Replies spoken as they stream, over a real daphne with the real Piper voice."""

from __future__ import annotations

import array
import asyncio
import io
import math
import struct
import wave

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import Generation
from tests.support.openai_server import Scenario
from tests.support.rooms import ask, connect
from tests.support.sse import open_sse

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.model]

SENTENCES = [
    "Hello there, friend. ",
    "This is the second sentence. ",
    "And here is a third one, slowly. ",
    "Finally the end.",
]


def rms(pcm: bytes) -> float:
    samples = array.array("h", pcm)
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


@pytest.fixture
def voice_room(make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Spoken", voice="streaming")
    room_join(room=room, user=bob)
    return room, ann_token, bob_token


async def test_streaming_mode_speaks_before_the_text_is_complete(daphne, llm, voice_room):
    room, ann_token, bob_token = voice_room
    # Words trickle in: the first sentence completes long before the last.
    words = [w + " " for s in SENTENCES for w in s.split()]
    llm.set_default(Scenario.slow(words, delay=0.15))
    ann = await connect(daphne, room, ann_token, audio=True)
    bob = await connect(daphne, room, bob_token)
    try:
        reply_id = await ask(ann, "talk to me")
        start = await ann.wait_type("audio", state="start", timeout=60)
        assert start["message_id"] == reply_id
        assert (start["format"], start["channels"], start["mode"]) == ("pcm_s16le", 1, "streaming")
        assert start["sample_rate"] == 22050
        end_of_text = await ann.wait_terminal(reply_id, timeout=60)
        # The first audio came before the reply's text was complete.
        assert ann.events.index(start) < ann.events.index(end_of_text)
        end = await ann.wait_type("audio", state="end", timeout=60)
        assert end["stream"] == start["stream"]
        frames = list(ann.binary)
        assert len(frames) == end["chunks"] > 1
        headers = [struct.unpack(">II", f[:8]) for f in frames]
        assert headers == [(start["stream"], i) for i in range(len(frames))]
        pcm = b"".join(f[8:] for f in frames)
        assert rms(pcm) > 300  # real speech, not silence
        # Several seconds of speech for four sentences.
        assert len(pcm) / 2 / 22050 > 3
        # Bob did not opt in: no audio reached him.
        await bob.wait_terminal(reply_id)
        assert not bob.binary
        assert not bob.of_type("audio")
        gen = await sync_to_async(Generation.objects.get)(message_id=int(reply_id))
        assert gen.voice == "streaming"
        assert gen.first_audio_at is not None
        assert (gen.audio_seconds or 0) > 3
        assert (gen.synthesis_seconds or 0) > 0
    finally:
        await ann.close()
        await bob.close()


async def test_stop_cancels_audio_and_nothing_follows(daphne, llm, voice_room):
    room, ann_token, _ = voice_room
    llm.set_default(Scenario.endless(("More words keep coming. ",), interval=0.05))
    ann = await connect(daphne, room, ann_token, audio=True)
    try:
        reply_id = await ask(ann, "go on", voice="realtime")
        start = await ann.wait_type("audio", state="start", timeout=60)
        assert start["mode"] == "realtime"
        await ann.send(action="stop", message_id=reply_id)
        cancel = await ann.wait_type("audio", state="cancel", timeout=30)
        assert cancel["stream"] == start["stream"]
        frames_at_cancel = len(ann.binary)
        stopped = await ann.wait_terminal(reply_id)
        assert stopped["state"] == "stopped"
        assert ann.events.index(cancel) < ann.events.index(stopped)
        await ann.send(action="ping", id="after")
        await ann.wait_type("pong", id="after")
        assert len(ann.binary) == frames_at_cancel
        assert not ann.of_type("audio")[-1]["state"] == "end"
    finally:
        await ann.close()


async def test_whole_reply_as_wav_and_audio_over_sse(daphne, llm, voice_room):
    room, ann_token, _ = voice_room
    llm.set_default(Scenario.normal(["A short answer."]))
    async with httpx.AsyncClient(
        base_url=daphne.http_url, timeout=60, headers={"Authorization": f"Bearer {ann_token}"}
    ) as http:
        sse = await open_sse(http, f"/api/rooms/{room.slug}/events?audio=1")
        await sse.wait_for(lambda e: e["type"] == "hello")
        r = await http.post(
            f"/api/rooms/{room.slug}/messages",
            json={"text": "answer", "voice": "normal", "wait": True},
        )
        assert r.status_code == 200
        reply_id = r.json()["reply"]["id"]
        chunk = await sse.wait_for(
            lambda e: e["type"] == "audio" and e["state"] == "chunk", timeout=60
        )
        assert chunk["index"] == 0
        start = next(e for e in sse.events if e["type"] == "audio" and e["state"] == "start")
        assert start["mode"] == "normal"
        assert chunk["stream"] == start["stream"]
        await sse.close()
        wav = await http.get(f"/api/messages/{reply_id}/audio")
        assert wav.status_code == 200
        assert wav.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(wav.content)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
            frames = w.readframes(w.getnframes())
        assert rms(frames) > 300
        again = await http.get(f"/api/messages/{reply_id}/audio")
        assert again.content == wav.content  # cached
        question_id = r.json()["message"]["id"]
        r = await http.get(f"/api/messages/{question_id}/audio")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")


async def test_realtime_mode_feeds_volcano_text_as_it_arrives(daphne_factory, llm, voice_room):
    from tests.support.tts_servers import FINISH_SESSION, TASK_REQUEST, FakeVolcanoServer

    room, ann_token, _ = voice_room
    words = [w + " " for w in "One short line. Then another line, and the end.".split()]
    llm.set_default(Scenario.slow(words, delay=0.1))
    with FakeVolcanoServer() as volcano:
        server = daphne_factory(
            TTS_BACKEND="volcano",
            VOLCANO_TTS_URL=volcano.url,
            VOLCANO_APP_KEY="test-app",
            VOLCANO_ACCESS_KEY="test-access",
            VOLCANO_SAMPLE_RATE="24000",
        )
        ann = await connect(server, room, ann_token, audio=True)
        try:
            await ann.send(action="send", text="talk", voice="realtime")
            start = await ann.wait_type("audio", state="start", timeout=30)
            assert (start["mode"], start["sample_rate"]) == ("realtime", 24000)
            reply_id = start["message_id"]
            spoken = ann.cursor
            await ann.wait_terminal(reply_id)
            # The audio may end before the reply's text or after it.
            end = await ann.wait_type("audio", state="end", timeout=30, start=spoken)
            assert end["chunks"] == len(ann.binary) > 0
            # The engine got the text in several pieces as it streamed, before the finish.
            await asyncio.to_thread(volcano.wait_frames, FINISH_SESSION, 1, 10)
            texts = [f.text or "" for f in volcano.frames_of(TASK_REQUEST)]
            assert len(texts) > 1
            assert "".join(texts).split() == "".join(words).split()
            assert not volcano.protocol_errors
        finally:
            await ann.close()


async def test_audio_goes_out_at_the_pace_it_plays(daphne, llm, voice_room):
    """Piper makes speech several times faster than it plays; listeners get it no more
    than VOICE_AUDIO_LEAD (1.5 s) ahead of real time, not in one burst."""
    room, ann_token, _ = voice_room
    llm.set_default(Scenario.normal(SENTENCES))
    ann = await connect(daphne, room, ann_token, audio=True)
    try:
        await ann.send(action="send", text="read it all", voice="normal")
        start = await ann.wait_type("audio", state="start", timeout=60)
        end = await ann.wait_type("audio", state="end", stream=start["stream"], timeout=60)
        seconds = sum(len(f) - 8 for f in ann.binary) / 2 / start["sample_rate"]
        assert end["chunks"] == len(ann.binary)
        assert seconds > 4  # four sentences
        spread = ann.binary_times[-1] - ann.binary_times[0]
        # The last chunk went out at most the lead (and one chunk) before it plays.
        assert spread >= seconds - 1.5 - 0.25 - 0.2
    finally:
        await ann.close()
