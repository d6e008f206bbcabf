"""Speech to text, for real: the bundled Whisper tiny.en on a recording of the bundled Piper
voice (tests/voice/speech_samples.py), in process and through every transport of a real
daphne."""

from __future__ import annotations

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import InputKind, Message
from tests.support.rooms import stored
from tests.support.wsclient import RoomClient
from tests.voice.speech_samples import KEY_WORDS, resample_16k, spoken, words
from voice.stt.base import to_wav
from voice.stt.whisper import WhisperEngine

pytestmark = pytest.mark.model

FRAME = 3200  # 100 ms at 16 kHz, as the page sends


@pytest.fixture(scope="module")
def whisper() -> WhisperEngine:
    return WhisperEngine()


async def test_the_bundled_model_hears_the_bundled_voice(whisper: WhisperEngine) -> None:
    pcm, rate = spoken()
    text = await whisper.transcribe(pcm, rate)
    assert set(KEY_WORDS) <= words(text), text
    # The same words at the page's rate.
    text16 = await whisper.transcribe(resample_16k(pcm, rate), 16000)
    assert set(KEY_WORDS) <= words(text16), text16


@pytest.fixture
def speech_room(make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Talk", assistant="mention")
    room_join(room=room, user=bob)
    return room, ann_token, bob_token


async def speak(client: RoomClient, pcm: bytes, *, id: str = "u1", **end: object) -> None:
    await client.send(action="speech", state="start", format="pcm_s16le", sample_rate=16000, id=id)
    await client.wait_type("speech", state="listening", id=id)
    for at in range(0, len(pcm), FRAME):
        await client.send_raw(pcm[at : at + FRAME])
    await client.send(action="speech", state="end", id=id, **end)


@pytest.mark.django_db(transaction=True)
async def test_spoken_words_reach_the_room_as_a_message(daphne, speech_room) -> None:
    room, ann_token, bob_token = speech_room
    pcm = resample_16k(*spoken())
    ann = await RoomClient.connect(daphne.ws_url, room.slug, token=ann_token)
    bob = await RoomClient.connect(daphne.ws_url, room.slug, token=bob_token)
    try:
        await ann.wait_type("hello")
        await bob.wait_type("hello")
        await speak(ann, pcm, client_id="spoken-1")
        done = await ann.wait_type("speech", state="transcribed", id="u1", timeout=60)
        assert set(KEY_WORDS) <= words(done["text"])
        seen = await bob.wait_for(
            lambda e: e.get("type") == "message" and e["message"]["id"] == done["message_id"]
        )
        message = seen["message"]
        assert (message["author"], message["input"], message["text"]) == (
            "ann",
            "speech",
            done["text"],
        )
        assert message["client_id"] == "spoken-1"
        saved = await stored(done["message_id"])
        assert saved.input == InputKind.SPEECH
        assert saved.text == done["text"]
        # Typed messages say so.
        await ann.send(action="send", text="typed")
        typed = await bob.wait_for(
            lambda e: e.get("type") == "message" and e["message"]["text"] == "typed"
        )
        assert typed["message"]["input"] == "text"
    finally:
        await ann.close()
        await bob.close()


@pytest.mark.django_db(transaction=True)
async def test_bad_speech_gets_clear_errors_and_the_socket_goes_on(daphne, speech_room) -> None:
    room, ann_token, _ = speech_room
    ann = await RoomClient.connect(daphne.ws_url, room.slug, token=ann_token)
    try:
        await ann.wait_type("hello")
        # Audio with no utterance started.
        await ann.send_raw(b"\x00\x01" * 100)
        err = await ann.wait_type("error", code="bad_request")
        assert "speech start" in err["detail"]
        # Wrong types and values.
        for bad, field in (
            ({"sample_rate": "16000"}, "sample_rate"),
            ({"sample_rate": 100}, "sample_rate"),
            ({"sample_rate": True}, "sample_rate"),
            ({"format": "opus"}, "format"),
        ):
            await ann.send(action="speech", state="start", id=field + str(bad), **bad)
            err = await ann.wait_type("error", id=field + str(bad))
            assert err["code"] == "bad_request"
            assert field in err["detail"]
        await ann.send(action="speech", state="sideways", id="st")
        assert (await ann.wait_type("error", id="st"))["code"] == "bad_request"
        await ann.send(action="speech", state="end", id="none")
        assert "no speech" in (await ann.wait_type("error", id="none"))["detail"]
        # Silence: nothing is sent to the room.
        await speak(ann, bytes(FRAME * 10), id="quiet")
        err = await ann.wait_type("error", id="quiet", timeout=60)
        assert err["code"] == "no_speech"
        # Cancelled: nothing is transcribed or sent.
        await ann.send(action="speech", state="start", sample_rate=16000, id="c")
        await ann.wait_type("speech", state="listening", id="c")
        await ann.send_raw(bytes(FRAME))
        await ann.send(action="speech", state="cancel", id="c2")
        await ann.wait_type("speech", state="cancelled", id="c2")
        await ann.send(action="speech", state="end", id="after-cancel")
        assert (await ann.wait_type("error", id="after-cancel"))["code"] == "bad_request"
        # Pings still answer, and no message was stored.
        await ann.send(action="ping", id="alive")
        await ann.wait_type("pong", id="alive")
        assert not [e for e in ann.events if e.get("type") == "message"]
    finally:
        await ann.close()


@pytest.mark.django_db(transaction=True)
async def test_an_utterance_past_the_limit_is_refused(daphne_factory, speech_room) -> None:
    room, ann_token, _ = speech_room
    server = daphne_factory(PARLEY_SPEECH_MAX_SECONDS="1")
    ann = await RoomClient.connect(server.ws_url, room.slug, token=ann_token)
    try:
        await ann.wait_type("hello")
        await ann.send(action="speech", state="start", sample_rate=16000, id="long")
        await ann.wait_type("speech", state="listening", id="long")
        for _ in range(11):  # 1.1 s
            await ann.send_raw(bytes(FRAME))
        err = await ann.wait_type("error", code="speech_too_long")
        assert err["id"] == "long"
        assert "1 s" in err["detail"]
        # The utterance is dropped: its end is an error, not a transcript.
        await ann.send(action="speech", state="end", id="end")
        assert (await ann.wait_type("error", id="end"))["code"] == "bad_request"
    finally:
        await ann.close()


@pytest.mark.django_db(transaction=True)
async def test_speech_over_http_as_wav_and_raw_pcm(daphne, speech_room) -> None:
    room, ann_token, _ = speech_room
    pcm, rate = spoken()
    url = f"{daphne.http_url}/api/rooms/{room.slug}/speech"
    headers = {"Authorization": f"Bearer {ann_token}"}
    async with httpx.AsyncClient(timeout=60) as http:
        wav = await http.post(
            url, content=to_wav(pcm, rate), headers={**headers, "Content-Type": "audio/wav"}
        )
        assert wav.status_code == 201, wav.text
        message = wav.json()["message"]
        assert message["input"] == "speech"
        assert set(KEY_WORDS) <= words(message["text"])
        assert wav.json()["reply"] is None  # the room answers on @assistant only

        raw = await http.post(
            url + "?ask_ai=1",
            content=resample_16k(pcm, rate),
            headers={**headers, "Content-Type": "audio/L16;rate=16000"},
        )
        assert raw.status_code == 202, raw.text
        assert raw.json()["reply"]["role"] == "assistant"

        for content, kind, code in (
            (b"RIFF....garbage", "audio/wav", "bad_request"),
            (bytes(100), "audio/L16", "bad_request"),  # no rate
            (bytes(100), "text/plain", "bad_request"),
            (bytes(3 * 1024 * 1024), "audio/L16;rate=16000", "speech_too_long"),
            (bytes(16000), "audio/L16;rate=16000", "no_speech"),
        ):
            bad = await http.post(url, content=content, headers={**headers, "Content-Type": kind})
            assert bad.status_code in (400, 413, 422), (kind, bad.text)
            assert bad.json()["code"] == code, (kind, bad.text)
        anonymous = await http.post(url, content=to_wav(pcm, rate))
        assert anonymous.status_code == 401
    inputs = await sync_to_async(
        lambda: list(Message.objects.filter(room=room, role="user").values_list("input", flat=True))
    )()
    assert inputs == ["speech", "speech"]
