"""Speaking to a room from the page: push to talk, the transcript, playback reports.

Chromium's fake microphone plays the speech-to-text tests' recording of the bundled Piper
voice (tests/voice/speech_samples.py; ``--use-file-for-fake-audio-capture``), so the page
captures real speech through its AudioWorklet and the real server transcribes it. The
playback reports (``played``) and the button's states are checked against a scripted
WebSocket (Playwright's ``route_web_socket``), which records every frame the page sends and
answers as the protocol says.
Waiting is on what the page shows or counts (``expect``, ``wait_js``), never a sleep.
"""

from __future__ import annotations

import json
import re
import struct
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from chat.services import room_join
from tests.browser.test_room_page import (
    CHROMIUM,
    CHROMIUM_ARGS,
    login,
    open_room,
    shot,
    wait_js,
)
from tests.conftest import IN_CI
from tests.support.openai_server import Scenario
from tests.voice.speech_samples import KEY_WORDS, spoken

pytestmark = [pytest.mark.django_db(transaction=True)]

# Silence around the sentence in the WAV: the fake microphone starts playing the file when
# the page opens it, and the silence after it is how the test knows it has all been heard.
LEAD_SILENCE_S = 0.4
TRAIL_SILENCE_S = 1.5
# 100 ms frames at 16 kHz, s16le mono: what the page must send.
FRAME_BYTES = 3200
# Transcribing a few seconds of speech on a small CI machine, with the reply model warm.
TRANSCRIPT_WAIT_MS = 60_000


# --- fixtures and helpers ------------------------------------------------------------------


def padded_wav(path: Path) -> Path:
    """The committed utterance (tests/voice/speech_samples.py) with silence around it, as a
    16-bit mono WAV at the voice's rate."""
    pcm, rate = spoken()
    lead = b"\0\0" * int(rate * LEAD_SILENCE_S)
    trail = b"\0\0" * int(rate * TRAIL_SILENCE_S)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(lead + pcm + trail)
    return path


@pytest.fixture(scope="module")
def sentence_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return padded_wav(tmp_path_factory.mktemp("speech") / "utterance.wav")


@pytest.fixture
def launch() -> Iterator[Callable[..., Browser]]:
    """``launch(extra_args)`` -> Chromium with a fake microphone; closed after the test.

    Each test gets its own browser: the fake capture file is a launch argument.
    """
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing: CI installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; CI installs it)")
    with pytest.MonkeyPatch.context() as mp:
        # As in test_room_page.py: the ORM in this thread while Playwright's loop is set.
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as p:
            browsers: list[Browser] = []

            def start(extra: list[str]) -> Browser:
                args = [
                    *CHROMIUM_ARGS,
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    "--autoplay-policy=no-user-gesture-required",
                    *extra,
                ]
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
                browsers.append(browser)
                return browser

            yield start
            for browser in browsers:
                browser.close()


def new_context(browser: Browser) -> BrowserContext:
    return browser.new_context(viewport={"width": 1280, "height": 800}, permissions=["microphone"])


def sent_frames(page: Page) -> list[Any]:
    """What the page sends on its room WebSocket: JSON frames as dicts, binary as bytes."""
    frames: list[Any] = []

    def on_socket(ws: Any) -> None:
        def on_frame(payload: str | bytes) -> None:
            frames.append(json.loads(payload) if isinstance(payload, str) else payload)

        ws.on("framesent", on_frame)

    page.on("websocket", on_socket)
    return frames


def speech_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("window.parley.speech.debugState()")
    return state


@pytest.fixture
def speakers(make_user, make_room):
    """ann owns a room that answers when mentioned; bob is a member."""
    ann, _ = make_user("ann")
    bob, _ = make_user("bob")
    room = make_room(ann, "Voice desk", assistant="mention")
    room_join(room=room, user=bob)
    return room


# --- the real thing: speech to the server, a transcript back --------------------------------


@pytest.mark.model
def test_a_spoken_message_is_transcribed_and_shown_as_speech(
    daphne, llm, launch, sentence_wav, speakers
):
    room = speakers
    # %noloop: the sentence is heard once, then silence (the default loops the file).
    browser = launch([f"--use-file-for-fake-audio-capture={sentence_wav}%noloop"])
    bob = login(new_context(browser), daphne, "bob")
    open_room(bob, daphne, room.slug)
    ann = login(new_context(browser), daphne, "ann")
    frames = sent_frames(ann)
    open_room(ann, daphne, room.slug)

    talk = ann.locator("#talk")
    expect(talk).to_have_text("Hold to talk")
    talk.hover()
    ann.mouse.down()
    expect(talk).to_have_attribute("data-state", "listening")
    expect(ann.locator("#speech-text")).to_contain_text("Listening")
    # Held until the whole sentence is in: the meter heard speech, then the WAV's silence.
    wait_js(ann, "() => window.parley.speech.debugState().voicedFrames >= 10", timeout=20_000)
    shot(ann, "room-speech-listening")
    assert ann.evaluate(
        "getComputedStyle(document.getElementById('speech-level')).transform"
    ) not in ("none", "matrix(0, 0, 0, 1, 0, 0)")
    wait_js(ann, "() => window.parley.speech.debugState().quietRun >= 8", timeout=20_000)
    ann.mouse.up()

    mine = ann.locator('article.msg--mine[data-input="speech"]')
    expect(mine).to_have_count(1, timeout=TRANSCRIPT_WAIT_MS)
    body = mine.locator(".msg__body")
    for word in KEY_WORDS:
        expect(body).to_contain_text(re.compile(rf"\b{word}\b", re.IGNORECASE))
    expect(mine.locator(".msg__spoken")).to_be_visible()
    expect(talk).to_have_attribute("data-state", "idle")
    expect(ann.locator("#speech")).to_be_hidden()
    shot(ann, "room-speech-transcribed")

    # The room sees it as ann's message, marked as spoken.
    theirs = bob.locator('article.msg--user[data-input="speech"]')
    expect(theirs).to_have_count(1)
    expect(theirs.locator(".msg__author")).to_have_text("ann")
    for word in KEY_WORDS:
        expect(theirs.locator(".msg__body")).to_contain_text(
            re.compile(rf"\b{word}\b", re.IGNORECASE)
        )
    expect(theirs.locator(".msg__spoken")).to_be_visible()
    assert bob.evaluate("[...window.parley.store.messages.values()].at(-1).input") == "speech"

    # On the wire: start, 100 ms frames of s16le, end with the same id.
    starts = [f for f in frames if isinstance(f, dict) and f.get("state") == "start"]
    assert starts == [
        {
            "action": "speech",
            "state": "start",
            "format": "pcm_s16le",
            "sample_rate": 16000,
            "id": starts[0]["id"],
        }
    ]
    ends = [f for f in frames if isinstance(f, dict) and f.get("state") == "end"]
    assert len(ends) == 1
    assert ends[0]["id"] == starts[0]["id"]
    assert ends[0]["voice"] == "off"
    first, last = frames.index(starts[0]), frames.index(ends[0])
    audio = [f for f in frames[first:last] if isinstance(f, bytes)]
    assert all(len(f) == FRAME_BYTES for f in audio[:-1])
    assert 0 < len(audio[-1]) <= FRAME_BYTES
    assert len(audio[-1]) % 2 == 0
    heard_s = sum(len(f) for f in audio) / 2 / 16000
    assert heard_s > 2.0  # the sentence and its silences, not a click
    assert speech_state(ann)["framesSent"] == len(audio)


# --- against a scripted server: played reports, barge-in, the button's states --------------


class ScriptedRoom:
    """A room WebSocket played by the test: hello, pongs, speech answers, a frame log."""

    def __init__(self, page: Page, room: Any, me: str) -> None:
        self.frames: list[Any] = []  # (monotonic time, frame)
        self.route: WebSocketRoute | None = None
        self.seq = 0
        self.speech_reply: Callable[[dict[str, Any]], None] | None = None
        self.room = room
        self.me = me
        page.route_web_socket(re.compile(r"/ws/rooms/"), self.serve)

    def serve(self, ws: WebSocketRoute) -> None:
        self.route = ws

        def on_message(message: str | bytes) -> None:
            if isinstance(message, bytes):
                self.frames.append(message)
                return
            frame = json.loads(message)
            self.frames.append(frame)
            if frame.get("action") == "ping":
                ws.send(json.dumps({"type": "pong", "id": frame.get("id")}))
            elif frame.get("action") == "speech":
                self.on_speech(frame)

        ws.on_message(on_message)
        r = self.room
        hello = {
            "type": "hello",
            "room": {
                "slug": r.slug,
                "name": r.name,
                "owner": self.me,
                "visibility": "public",
                "assistant": "mention",
                "voice": "off",
                "head": 0,
            },
            "you": self.me,
            "head": 0,
            "online": [self.me],
        }
        ws.send(json.dumps(hello))

    def on_speech(self, frame: dict[str, Any]) -> None:
        if frame["state"] == "start":
            self.send({"type": "speech", "state": "listening", "id": frame["id"]})
        elif frame["state"] == "cancel":
            self.send({"type": "speech", "state": "cancelled"})
        elif frame["state"] == "end" and self.speech_reply:
            self.speech_reply(frame)

    def send(self, event: dict[str, Any]) -> None:
        assert self.route
        self.route.send(json.dumps(event))

    def durable(self, event: dict[str, Any]) -> None:
        self.seq += 1
        self.send({**event, "seq": self.seq})

    def message(self, message_id: str, role: str, text: str, **extra: Any) -> None:
        message = {
            "id": message_id,
            "room": self.room.slug,
            "role": role,
            "author": "assistant" if role == "assistant" else self.me,
            "text": text,
            "status": "streaming" if role == "assistant" else "complete",
            "reply_to": None,
            "client_id": None,
            "created": "2030-01-01T10:00:00Z",
            **extra,
        }
        self.durable({"type": "message", "message": message})

    def audio(self, stream: int, message_id: str, seconds: float, rate: int = 16000) -> None:
        """A whole stream: start, one-second chunks of a tone, end."""
        self.send(
            {
                "type": "audio",
                "state": "start",
                "stream": stream,
                "message_id": message_id,
                "format": "pcm_s16le",
                "sample_rate": rate,
                "channels": 1,
                "mode": "streaming",
            }
        )
        assert self.route
        for index in range(int(seconds)):
            pcm = b"".join(struct.pack("<h", (i * 220) % 20000 - 10000) for i in range(rate))
            self.route.send(struct.pack(">II", stream, index) + pcm)
        self.send({"type": "audio", "state": "end", "stream": stream, "chunks": int(seconds)})

    def json_frames(self, **match: Any) -> list[dict[str, Any]]:
        return [
            f
            for f in self.frames
            if isinstance(f, dict) and all(f.get(k) == v for k, v in match.items())
        ]

    def played(self, stream: int) -> list[int]:
        return [f["ms"] for f in self.json_frames(action="played", stream=stream)]


def wait_for(predicate: Callable[[], Any], page: Page, timeout_ms: float = 15_000) -> Any:
    """Wait (driving the page's event loop) until ``predicate()``, a check of frames the
    scripted server has recorded, is truthy."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never true within {timeout_ms} ms")
        page.wait_for_timeout(50)


def test_played_reports_while_a_reply_plays_and_before_stop_and_barge_in(daphne, launch, speakers):
    room = speakers
    browser = launch([])  # Chromium's own fake microphone: a beep
    ann = login(new_context(browser), daphne, "ann")
    server = ScriptedRoom(ann, room, "ann")
    open_room(ann, daphne, room.slug)
    ann.get_by_role("button", name="Speaker off").click()
    wait_js(ann, "window.parley.player.debugState().context === 'running'")

    # A voiced reply plays: reports come at least every 250 ms, with what was heard so far.
    server.message("77", "assistant", "It is sunny.")
    server.audio(5, "77", seconds=3)
    wait_for(lambda: len(server.played(5)) >= 4, ann)
    reports = server.played(5)
    assert reports == sorted(reports)
    assert len(set(reports)) == len(reports)
    assert 0 < reports[0] < 1000
    assert reports[-1] <= 3000
    # Measured on the audio clock, so CPU load cannot fake it: the steps are report-sized.
    assert max(b - a for a, b in zip(reports, reports[1:], strict=False)) <= 600
    # It ends by itself: one last report with all three seconds, then nothing more.
    wait_for(lambda: server.played(5) and server.played(5)[-1] == 3000, ann, 10_000)
    wait_js(ann, "window.parley.player.debugState().streams === 0")
    count = len(server.played(5))

    # Stop: a fresh report first, then the stop, and the audio stops here at once.
    server.message("78", "assistant", "Then rain.")
    server.audio(6, "78", seconds=3)
    wait_for(lambda: len(server.played(6)) >= 2, ann)
    ann.locator('article[data-id="78"]').get_by_role("button", name="Stop").click()
    stop = wait_for(lambda: server.json_frames(action="stop", message_id="78"), ann)[0]
    before = server.frames[server.frames.index(stop) - 1]
    assert before["action"] == "played"
    assert before["stream"] == 6
    assert 0 < before["ms"] < 3000
    wait_js(ann, "window.parley.player.debugState().streams === 0")
    assert server.played(5)[count:] == []

    # Barge-in: talking while a reply plays reports it, stops it, then starts speech.
    server.message("79", "assistant", "And wind.")
    server.audio(7, "79", seconds=3)
    wait_for(lambda: len(server.played(7)) >= 2, ann)
    talk = ann.locator("#talk")
    talk.hover()
    ann.mouse.down()
    start = wait_for(lambda: server.json_frames(action="speech", state="start"), ann)[0]
    before = server.frames[server.frames.index(start) - 1]
    assert before["action"] == "played"
    assert before["stream"] == 7
    assert 0 < before["ms"] < 3000
    assert ann.evaluate("window.parley.player.debugState().streams") == 0
    expect(talk).to_have_attribute("data-state", "listening")
    wait_for(lambda: len([f for f in server.frames if isinstance(f, bytes)]) >= 4, ann)
    reported = len(server.played(7))
    ann.mouse.up()
    end = wait_for(lambda: server.json_frames(action="speech", state="end"), ann)[0]
    assert end["id"] == start["id"]
    assert len(server.played(7)) == reported  # no reports after the stream was stopped
    audio = [f for f in server.frames if isinstance(f, bytes)]
    assert all(len(f) == FRAME_BYTES for f in audio[:-1])


def test_push_to_talk_states_toggle_cancel_and_errors(daphne, launch, speakers):
    room = speakers
    browser = launch([])
    ann = login(new_context(browser), daphne, "ann")
    server = ScriptedRoom(ann, room, "ann")
    open_room(ann, daphne, room.slug)
    talk = ann.locator("#talk")
    status = ann.locator("#speech-text")
    expect(ann.get_by_role("button", name="Hold to talk")).to_be_enabled()

    # Held: listening while held, transcribing after, then the transcript as a message.
    def transcribe(frame: dict[str, Any]) -> None:
        server.message("90", "user", "Is it going to rain?", input="speech")
        server.send(
            {
                "type": "speech",
                "state": "transcribed",
                "id": frame["id"],
                "text": "Is it going to rain?",
                "message_id": "90",
            }
        )

    held: list[dict[str, Any]] = []
    server.speech_reply = held.append  # answered by hand below, to see "Transcribing..."
    talk.hover()
    ann.mouse.down()
    expect(talk).to_have_attribute("data-state", "listening")
    expect(talk).to_have_attribute("aria-pressed", "true")
    expect(status).to_have_text("Listening. Release to send, Esc to cancel.")
    wait_for(lambda: len([f for f in server.frames if isinstance(f, bytes)]) >= 4, ann)
    shot(ann, "room-speech-holding")
    ann.mouse.up()
    expect(status).to_have_text("Transcribing...")
    expect(talk).to_be_disabled()
    wait_for(lambda: held, ann)
    transcribe(held[0])
    spoken = ann.locator('article[data-id="90"]')
    expect(spoken).to_have_attribute("data-input", "speech")
    expect(spoken.locator(".msg__spoken")).to_be_visible()
    expect(spoken.locator(".msg__body")).to_have_text("Is it going to rain?")
    expect(ann.locator("#speech")).to_be_hidden()
    expect(talk).to_have_attribute("data-state", "idle")
    # A typed message has no mark.
    server.message("91", "user", "typed", input="text")
    expect(ann.locator('article[data-id="91"]')).to_be_visible()
    expect(ann.locator('article[data-id="91"] .msg__spoken')).to_have_count(0)

    # Clicked: a short press toggles on; the next press sends.
    server.speech_reply = transcribe
    talk.click()
    expect(talk).to_have_attribute("data-state", "listening")
    expect(talk).to_have_attribute("data-mode", "toggle")
    expect(status).to_have_text("Listening. Press again to send, Esc to cancel.")
    before = len(server.json_frames(action="speech", state="end"))
    wait_for(lambda: len([f for f in server.frames if isinstance(f, bytes)]) >= 8, ann)
    talk.click()
    wait_for(lambda: len(server.json_frames(action="speech", state="end")) > before, ann)
    expect(talk).to_have_attribute("data-state", "idle")

    # Escape cancels: `cancel` goes out, nothing is posted, the microphone closes.
    talk.click()
    expect(talk).to_have_attribute("data-state", "listening")
    ann.keyboard.press("Escape")
    wait_for(lambda: server.json_frames(action="speech", state="cancel"), ann)
    expect(talk).to_have_attribute("data-state", "idle")
    expect(ann.locator("#speech")).to_be_hidden()
    ends = len(server.json_frames(action="speech", state="end"))

    # Space held on the focused button talks, as the mouse does.
    talk.focus()
    ann.keyboard.down(" ")
    expect(talk).to_have_attribute("data-state", "listening")
    frames_now = len([f for f in server.frames if isinstance(f, bytes)])
    wait_for(lambda: len([f for f in server.frames if isinstance(f, bytes)]) >= frames_now + 4, ann)

    # Nothing recognised: the server's error is shown on the status line.
    def nothing(frame: dict[str, Any]) -> None:
        server.send(
            {"type": "error", "code": "no_speech", "detail": "no speech", "id": frame["id"]}
        )

    server.speech_reply = nothing
    ann.keyboard.up(" ")
    wait_for(lambda: len(server.json_frames(action="speech", state="end")) > ends, ann)
    expect(ann.locator("#speech")).to_have_attribute("data-state", "error")
    expect(status).to_have_text("Nothing was heard. Hold the button while you speak.")
    expect(ann.locator("#errors")).to_have_text("")  # shown once, by the button

    # Too long: the server cuts it off while it is still being recorded.
    talk.click()
    expect(talk).to_have_attribute("data-state", "listening")
    start = server.json_frames(action="speech", state="start")[-1]
    server.send(
        {
            "type": "error",
            "code": "speech_too_long",
            "detail": "A voice message can be at most 60 seconds.",
            "id": start["id"],
        }
    )
    expect(status).to_have_text("A voice message can be at most 60 seconds.")
    expect(talk).to_have_attribute("aria-pressed", "false")
    shot(ann, "room-speech-error")


def test_a_blocked_microphone_says_so_and_cancels(daphne, launch, speakers):
    browser = launch([])
    ann = login(new_context(browser), daphne, "ann")
    server = ScriptedRoom(ann, speakers, "ann")
    open_room(ann, daphne, speakers.slug)
    # What the browser answers when the member refused the microphone.
    ann.evaluate(
        """() => {
            navigator.mediaDevices.getUserMedia = () =>
                Promise.reject(new DOMException("denied", "NotAllowedError"));
        }"""
    )
    ann.locator("#talk").click()
    expect(ann.locator("#speech-text")).to_have_text(
        "The microphone is blocked: allow it in the browser's site settings."
    )
    start = server.json_frames(action="speech", state="start")
    assert len(start) == 1
    wait_for(lambda: server.json_frames(action="speech", state="cancel"), ann)
    expect(ann.locator("#talk")).to_have_attribute("aria-pressed", "false")


# --- the real server: what this listener heard is kept when the reply is cut off -----------


@pytest.mark.parametrize("how", ["stop", "talk"])
def test_cutting_off_a_spoken_reply_keeps_what_this_listener_heard(
    daphne, llm, launch, make_user, make_room, how
):
    from chat.models import Generation, Status

    ann, _ = make_user("ann")
    room = make_room(ann, "Forecast")  # the assistant answers every message
    # Sentence after sentence, for as long as nobody stops it: there is always audio.
    llm.set_default(Scenario.endless(("It will rain in Paris today. ",), interval=0.3))
    browser = launch([])  # Chromium's own fake microphone, for barge-in
    page = login(new_context(browser), daphne, "ann")
    frames = sent_frames(page)
    open_room(page, daphne, room.slug)
    page.get_by_label("Voice mode for your messages").select_option("streaming")
    page.get_by_role("button", name="Speaker off").click()
    wait_js(page, "window.parley.player.debugState().context === 'running'")
    box = page.get_by_label("Message", exact=True)
    box.fill("What is the weather?")
    box.press("Enter")
    reply = page.locator("article.msg--assistant[data-id]")
    expect(reply).to_have_attribute("data-status", "streaming")
    rid = reply.get_attribute("data-id")
    assert rid
    stream = int(rid) & 0xFFFFFFFF

    def played() -> list[dict[str, Any]]:
        return [
            f
            for f in frames
            if isinstance(f, dict) and f.get("action") == "played" and f["stream"] == stream
        ]

    # Played for a while: reports go out as the audio plays.
    wait_for(lambda: any(f["ms"] >= 1000 for f in played()), page, 30_000)
    if how == "stop":
        reply.get_by_role("button", name="Stop").click()
        cut = wait_for(
            lambda: [f for f in frames if isinstance(f, dict) and f.get("action") == "stop"], page
        )[0]
    else:
        page.locator("#talk").hover()
        page.mouse.down()
        cut = wait_for(
            lambda: [f for f in frames if isinstance(f, dict) and f.get("state") == "start"], page
        )[0]
    last = frames[frames.index(cut) - 1]
    assert last["action"] == "played"
    assert last["stream"] == stream
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.locator(".msg__note")).to_have_text("Stopped by ann")
    assert page.evaluate("window.parley.player.debugState().streams") == 0
    if how == "talk":
        expect(page.locator("#talk")).to_have_attribute("data-state", "listening")
        page.keyboard.press("Escape")
        expect(page.locator("#talk")).to_have_attribute("data-state", "idle")

    # The server kept how far this listener got, and the text up to there.
    def generation() -> Generation | None:
        g = Generation.objects.filter(message_id=int(rid)).first()
        return g if g is not None and g.heard_ms is not None else None

    kept = wait_for(generation, page)
    assert kept.heard_ms == last["ms"]
    assert kept.message.status == Status.STOPPED
    assert kept.heard_text
    assert kept.message.text.startswith(kept.heard_text)
    assert len(kept.heard_text) < len(kept.message.text)
    assert not page.locator("#errors .alert").count()
