"""Cutting a spoken reply off (stop, or speaking over it), and keeping only what was
heard: a real daphne, the real Piper voice, real WebSocket listeners."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from hypothesis import given
from hypothesis import strategies as st

from chat.models import Generation, Message
from tests.support.openai_server import Scenario
from tests.support.rooms import ask, connect, stored
from tests.support.wsclient import RoomClient
from voice.speech import heard_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.model]

TEXT = "First part here. Second part follows now."
# Two pieces: one second of audio each.
MARKS = [[0, 1000, 0, 16], [1000, 2000, 17, 41]]


def test_playback_time_maps_to_whole_words_of_the_text() -> None:
    assert heard_text(TEXT, MARKS, 0) == ""
    assert heard_text(TEXT, MARKS, 999) == "First part"  # "here." is not whole yet
    assert heard_text(TEXT, MARKS, 1000) == "First part here."
    assert heard_text(TEXT, MARKS, 1500) == "First part here. Second part"
    assert heard_text(TEXT, MARKS, 1400) == "First part here. Second"
    assert heard_text(TEXT, MARKS, 10_000) == TEXT


@given(
    text=st.text(alphabet="ab .\n", max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    ms=st.lists(st.integers(0, 10_000), min_size=2, max_size=2),
)
def test_what_was_heard_is_a_prefix_and_grows_with_time(
    text: str, cuts: list[int], ms: list[int]
) -> None:
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    marks = [
        [i * 700, (i + 1) * 700, a, b]
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]
    early, late = sorted(ms)
    first, second = heard_text(text, marks, early), heard_text(text, marks, late)
    assert text.startswith(first)
    assert text.startswith(second)
    assert len(first) <= len(second)


@pytest.fixture
def spoken_room(make_user, make_room):
    from chat.services import room_join

    owner, _ = make_user("owner")
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(owner, "Spoken", voice="streaming")
    room_join(room=room, user=ann)
    room_join(room=room, user=bob)
    return room, ann_token, bob_token


async def ask_spoken(client: RoomClient, text: str) -> tuple[str, dict]:
    """Ask, and return the reply's id and its audio ``start`` (the reply is being spoken)."""
    reply_id = await ask(client, text)
    start = await client.wait_type("audio", state="start", message_id=reply_id, timeout=60)
    return reply_id, start


async def test_a_stop_keeps_what_the_stopper_heard_and_the_next_prompt_uses_it(
    daphne, llm, spoken_room
) -> None:
    room, ann_token, _ = spoken_room
    llm.set_default(Scenario.endless(("More words keep coming along. ",), interval=0.05))
    ann = await connect(daphne, room, ann_token, audio=True)
    try:
        reply_id, start = await ask_spoken(ann, "talk")
        # Ann's page has played 1.2 s of it when she presses stop.
        await ann.send(action="played", stream=start["stream"], ms=1200)
        stop = len(ann.events)
        await ann.send(action="stop", message_id=reply_id)
        assert (await ann.wait_terminal(reply_id))["state"] == "stopped"
        await ann.wait_type("audio", state="cancel", stream=start["stream"], start=stop)
        gen = await sync_to_async(Generation.objects.select_related("message").get)(
            message_id=int(reply_id)
        )
        shown = gen.message.text
        assert gen.heard_ms == 1200
        assert gen.heard_text
        assert shown.startswith(gen.heard_text)
        # Far less than was shown: 1.2 s of speech is a few words.
        assert len(gen.heard_text) < len(shown) / 2
        assert len(gen.heard_text.split()) <= 6

        # The model is told only what was heard.
        llm.set_default(Scenario.normal())
        asked = len(llm.requests)
        await ask(ann, "what did you say?")
        prompt = (await llm.await_request(asked)).body["messages"]
        said = [m["content"] for m in prompt if m["role"] == "assistant"]
        assert said == [gen.heard_text]
    finally:
        await ann.close()


async def test_a_stop_without_playback_reports_keeps_no_heard_text(daphne, llm, spoken_room):
    room, ann_token, _ = spoken_room
    llm.set_default(Scenario.endless(("Words. ",), interval=0.05))
    ann = await connect(daphne, room, ann_token, audio=True)
    try:
        reply_id, _start = await ask_spoken(ann, "talk")
        await ann.send(action="stop", message_id=reply_id)
        await ann.wait_terminal(reply_id)
        gen = await sync_to_async(Generation.objects.get)(message_id=int(reply_id))
        assert gen.heard_text is None
        assert gen.heard_ms is None
    finally:
        await ann.close()


async def test_speaking_over_a_spoken_reply_stops_it_for_every_listener(
    daphne, llm, spoken_room
) -> None:
    room, ann_token, bob_token = spoken_room
    llm.set_default(Scenario.endless(("More words keep coming along. ",), interval=0.05))
    ann = await connect(daphne, room, ann_token, audio=True)
    bob = await connect(daphne, room, bob_token, audio=True)
    try:
        reply_id, start = await ask_spoken(ann, "talk")
        # Bob is a member but neither asker nor owner: his speaking does not stop it.
        await bob.send(action="played", stream=start["stream"], ms=300)
        await bob.send(action="speech", state="start", sample_rate=16000, id="b")
        await bob.wait_type("speech", state="listening", id="b")
        await bob.send(action="speech", state="cancel")
        await bob.wait_type("speech", state="cancelled")
        await bob.send(action="ping", id="p")
        await bob.wait_type("pong", id="p")
        assert not bob.of_type("generation") or all(
            e["state"] not in ("stopped",) for e in bob.of_type("generation")
        )
        # Ann, the asker, starts talking: the reply stops, audio cancels at every listener.
        await ann.send(action="played", stream=start["stream"], ms=800)
        barge_in = len(bob.events)
        await ann.send(action="speech", state="start", sample_rate=16000, id="a")
        stopped = await bob.wait_terminal(reply_id)
        assert (stopped["state"], stopped["by"]) == ("stopped", "ann")
        await bob.wait_type("audio", state="cancel", stream=start["stream"], start=barge_in)
        await ann.wait_type("audio", state="cancel", stream=start["stream"])
        await ann.send(action="speech", state="cancel")
        gen = await sync_to_async(Generation.objects.get)(message_id=int(reply_id))
        assert gen.heard_ms == 800
        assert gen.heard_text is not None
    finally:
        await ann.close()
        await bob.close()


async def test_speaking_over_a_finished_reply_still_playing_cancels_its_audio(
    daphne, llm, spoken_room
) -> None:
    room, ann_token, bob_token = spoken_room
    llm.set_default(Scenario.normal(["One short sentence. ", "And another one after it."]))
    ann = await connect(daphne, room, ann_token, audio=True)
    bob = await connect(daphne, room, bob_token, audio=True)
    try:
        asked = len(ann.events)
        reply_id, start = await ask_spoken(ann, "talk")
        # The text ends at once, before its audio starts or after: looked for since the ask.
        assert (await ann.wait_terminal(reply_id, start=asked))["state"] == "complete"
        # All of it has been sent (up to VOICE_AUDIO_LEAD ahead): listeners still play it.
        await ann.wait_type("audio", state="end", stream=start["stream"], timeout=60, start=asked)
        await bob.wait_type("audio", state="end", stream=start["stream"], timeout=60)

        await ann.send(action="played", stream=start["stream"], ms=900)
        await ann.send(action="speech", state="start", sample_rate=16000, id="a")
        await bob.wait_type("audio", state="cancel", stream=start["stream"])
        await ann.send(action="speech", state="cancel")
        await ann.wait_type("speech", state="cancelled")
        gen = await sync_to_async(Generation.objects.get)(message_id=int(reply_id))
        message = await stored(reply_id)
        assert message.status == "complete"  # the text had ended; only the audio is cut
        assert gen.heard_ms == 900
        assert gen.heard_text is not None
        assert message.text.startswith(gen.heard_text)
        assert len(gen.heard_text) < len(message.text)
    finally:
        await ann.close()
        await bob.close()


@pytest.mark.parametrize("heard_only", [True, False])
def test_the_prompt_has_what_was_heard_unless_the_room_says_otherwise(
    make_user, make_room, heard_only
) -> None:
    from chat.models import Role, Status
    from chat.replies.db import prompt_for

    ann, _ = make_user("ann")
    room = make_room(ann, "Heard", prompt_heard_text=heard_only)
    asked = Message.objects.create(room=room, role=Role.USER, author=ann, text="tell me")
    cut = Message.objects.create(
        room=room, role=Role.ASSISTANT, text=TEXT, status=Status.STOPPED, reply_to=asked
    )
    Generation.objects.create(
        message=cut, backend="openai", queued_at=cut.created, heard_text="First part", heard_ms=600
    )
    unheard = Message.objects.create(
        room=room, role=Role.ASSISTANT, text="Never heard at all.", status=Status.STOPPED
    )
    Generation.objects.create(
        message=unheard, backend="openai", queued_at=unheard.created, heard_text="", heard_ms=0
    )
    Message.objects.create(room=room, role=Role.USER, author=ann, text="and then?")
    reply = Message.objects.create(room=room, role=Role.ASSISTANT, status=Status.QUEUED)
    said = [m.content for m in prompt_for(reply.pk) if m.role == "assistant"]
    assert said == (["First part"] if heard_only else [TEXT, "Never heard at all."])


async def test_a_stop_over_http_can_say_what_was_heard(daphne, llm, spoken_room) -> None:
    import httpx

    room, ann_token, _ = spoken_room
    llm.set_default(Scenario.endless(("More words keep coming along. ",), interval=0.05))
    ann = await connect(daphne, room, ann_token, audio=True)
    try:
        reply_id, start = await ask_spoken(ann, "talk")
        url = f"{daphne.http_url}/api/messages/{reply_id}/stop"
        headers = {"Authorization": f"Bearer {ann_token}"}
        async with httpx.AsyncClient(timeout=30) as http:
            for bad in ("12", -1, True, 1 << 40):
                r = await http.post(url, json={"heard_ms": bad}, headers=headers)
                assert r.status_code == 400, r.text
                assert "heard_ms" in r.json()["detail"]
            r = await http.post(url, json={"heard_ms": 1500}, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["message"]["status"] == "stopped"
        await ann.wait_type("audio", state="cancel", stream=start["stream"])
        gen = await sync_to_async(Generation.objects.select_related("message").get)(
            message_id=int(reply_id)
        )
        assert gen.heard_ms == 1500
        assert gen.heard_text
        assert gen.message.text.startswith(gen.heard_text)
    finally:
        await ann.close()


@pytest.mark.redis
async def test_a_member_on_another_process_cuts_off_the_reply_where_it_runs(
    daphne_factory, redis_url, llm, spoken_room
) -> None:
    """The reply runs where it was asked (A); its asker listens through B. Speaking on B
    stops it on A, a live reply and then one whose text has ended but whose audio A is
    still sending: every listener gets the cancel, and what she heard is kept."""
    room, ann_token, bob_token = spoken_room
    a = daphne_factory(REDIS_URL=redis_url)
    b = daphne_factory(REDIS_URL=redis_url)
    asker = await connect(a, room, ann_token, audio=True)
    ann = await connect(b, room, ann_token, audio=True)
    bob = await connect(b, room, bob_token, audio=True)
    try:
        llm.set_default(Scenario.endless(("More words keep coming along. ",), interval=0.05))
        reply_id, start = await ask_spoken(asker, "talk")
        await bob.wait_type("audio", state="start", stream=start["stream"], timeout=60)
        await ann.send(action="played", stream=start["stream"], ms=900)
        barge_in = len(bob.events)
        await ann.send(action="speech", state="start", sample_rate=16000, id="a")
        stopped = await bob.wait_terminal(reply_id)
        assert (stopped["state"], stopped["by"]) == ("stopped", "ann")
        await bob.wait_type("audio", state="cancel", stream=start["stream"], start=barge_in)
        await ann.send(action="speech", state="cancel")
        gen = await sync_to_async(Generation.objects.get)(message_id=int(reply_id))
        assert gen.heard_ms == 900
        assert gen.heard_text is not None

        # Complete, with seconds of audio still to go out from A at the pace it plays.
        llm.set_default(Scenario.normal(["A first sentence here. "] * 6))
        asked = len(bob.events)
        reply_id, start = await ask_spoken(asker, "again")
        assert (await bob.wait_terminal(reply_id, timeout=60))["state"] == "complete"
        # Its audio has reached bob too (before the text's end or after it).
        await bob.wait_for(
            lambda e: e.get("type") == "audio" and e["stream"] == start["stream"], start=asked
        )
        await ann.send(action="played", stream=start["stream"], ms=1200)
        await ann.send(action="speech", state="start", sample_rate=16000, id="b")
        await bob.wait_type("audio", state="cancel", stream=start["stream"], timeout=30)
        await ann.send(action="ping", id="after")
        await ann.wait_type("pong", id="after")
        # A cancelled its speech: no `end` follows the cancel.
        assert not [
            e
            for e in bob.events
            if e.get("type") == "audio"
            and e.get("state") == "end"
            and e["stream"] == start["stream"]
        ]
        gen = await sync_to_async(Generation.objects.select_related("message").get)(
            message_id=int(reply_id)
        )
        assert gen.heard_ms == 1200
        assert gen.heard_text
        assert gen.message.status == "complete"
        assert len(gen.heard_text) < len(gen.message.text)
    finally:
        for client in (asker, ann, bob):
            await client.close()
