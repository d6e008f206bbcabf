"""Voice conversation figures (issue 13's targets), against a real daphne on loopback.

    .venv/bin/python -m bench.voice [--repeat 5] [--listeners 50] [--quick] [--out FILE]

- **Speech to text**: a 5 s utterance (spoken by the bundled Piper voice, at the page's
  16 kHz) sent over the room WebSocket; the time from sending ``speech end`` to the
  ``transcribed`` frame, with the bundled Whisper tiny.en on this machine's 2 cores.
  Target: within 1.5 s.
- **First audio, streaming mode, Piper**: a reply streams from the loopback model at 20
  words a second; the time from the delta that completes the first sentence reaching a
  listener to that listener's first audio frame. Target: 300 ms.
- **Barge-in**: ``--listeners`` members listen to a spoken reply; the asker starts
  ``speech``; the time from sending ``speech start`` to each listener's audio ``cancel``.
  Target: p99 within 100 ms. Measured again with the audio unpaced (``VOICE_AUDIO_LEAD=0``,
  sent as fast as Piper makes it, as before pacing), for the ratio.

The server, the model fake and the clients share the machine's 2 cores: compare within
one run. JSON out (stdout, and ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"stt_5s_ms": 1500.0, "first_audio_ms": 300.0, "barge_in_p99_ms": 100.0}
FRAME = 3200  # 100 ms of 16 kHz PCM, as the page sends
UTTERANCE = (
    "Could you tell me what the weather will be like in Paris tomorrow morning, "
    "and whether I should bring an umbrella?"
)
FIRST_SENTENCE = "Hello there this is the first sentence."
MORE = "Then the reply goes on with more words for the listeners to hear. " * 4


def _setup(db_path: Path, listeners: int) -> tuple[str, str, list[str]]:
    os.environ["DATABASE_URL"] = f"sqlite:///{db_path}"
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from accounts.services import api_token_create
    from chat.services import room_create, room_join

    call_command("migrate", verbosity=0)
    # daphne refuses to start without the static manifest (core/checks.py).
    call_command("collectstatic", "--noinput", verbosity=0)
    users = get_user_model().objects
    asker = users.create_user(username="asker", password="voice-bench-123")
    room = room_create(owner=asker, name="Spoken bench", voice="streaming", assistant="mention")
    tokens = []
    for i in range(listeners):
        user = users.create_user(username=f"listener{i}", password="voice-bench-123")
        room_join(room=room, user=user)
        tokens.append(api_token_create(user=user)[1])
    return room.slug, api_token_create(user=asker)[1], tokens


def _five_seconds_at_16k() -> bytes:
    from tests.voice.speech_samples import resample_16k, spoken

    pcm = resample_16k(*spoken(UTTERANCE))
    want = 5 * 16000 * 2
    return (pcm + bytes(want))[:want] if len(pcm) < want else pcm[:want]


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 1)

    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": q(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def _listen(ws_url: str, slug: str, token: str) -> Any:
    from tests.support.wsclient import RoomClient

    client = await RoomClient.connect(ws_url, slug, token=token)
    await client.wait_type("hello")
    await client.send(action="audio", enabled=True)
    await client.send(action="ping", id="on")
    await client.wait_type("pong", id="on")
    return client


async def stt(ws_url: str, slug: str, token: str, repeat: int) -> dict[str, Any]:
    from tests.support.wsclient import RoomClient

    pcm = _five_seconds_at_16k()
    client = await RoomClient.connect(ws_url, slug, token=token)
    await client.wait_type("hello")
    gaps: list[float] = []
    texts: list[str] = []
    try:
        for i in range(repeat + 1):  # the first one warms the model
            await client.send(action="speech", state="start", sample_rate=16000, id=f"s{i}")
            await client.wait_type("speech", state="listening", id=f"s{i}")
            for at in range(0, len(pcm), FRAME):
                await client.send_raw(pcm[at : at + FRAME])
            await client.send(action="speech", state="end", id=f"e{i}", ask_ai=False)
            sent = time.monotonic()
            done = await client.wait_type("speech", state="transcribed", id=f"e{i}", timeout=60)
            if i:
                gaps.append(time.monotonic() - sent)
            texts.append(done["text"])
    finally:
        await client.close()
    return {"utterance_s": 5.0, **_ms(gaps), "transcript": texts[-1]}


async def first_audio(ws_url: str, slug: str, token: str, fake: Any, repeat: int) -> dict:
    from tests.support.openai_server import Scenario

    words = [w + " " for w in (FIRST_SENTENCE + " " + MORE).split()]
    fake.set_default(Scenario.slow(words, delay=0.05))
    client = await _listen(ws_url, slug, token)
    gaps: list[float] = []
    try:
        for i in range(repeat):
            mark = len(client.events)
            await client.send(action="send", text=f"talk {i}", ask_ai=True)
            reply = await client.wait_for(
                lambda e: e.get("type") == "message" and e["message"]["role"] == "assistant",
                start=mark,
            )
            reply_id = reply["message"]["id"]
            frames_before = len(client.binary)
            await client.wait_terminal(reply_id, timeout=60)
            stream = int(reply_id) & 0xFFFFFFFF
            await client.wait_type("audio", state="end", stream=stream, timeout=60)
            # When the delta that completed the first sentence arrived (the segmenter cuts
            # once the space after its full stop is in), and when the first audio did.
            text, done_at = "", None
            for event, at in zip(client.events[mark:], client.event_times[mark:], strict=True):
                if event.get("type") == "delta" and event.get("message_id") == reply_id:
                    text += event["text"]
                    if FIRST_SENTENCE + " " in text:
                        done_at = at
                        break
            assert done_at is not None, text
            gaps.append(client.binary_times[frames_before] - done_at)
    finally:
        await client.close()
    return {"mode": "streaming", "engine": "piper", **_ms(gaps)}


class _Listener:
    """A member listening through bench.loadgen's bare client (the ``websockets`` library
    would cost the load generator several times more per audio frame, and with 50 members
    taking a reply's audio the clients, not the server, would be measured)."""

    def __init__(self) -> None:
        self.cancels: dict[int, float] = {}
        self.pongs = 0
        self.hello = asyncio.Event()
        self.ponged = asyncio.Event()

    def on_text(self, _client: Any, payload: bytes) -> None:
        if b'"cancel"' in payload:
            event = json.loads(payload)
            if event.get("type") == "audio" and event.get("state") == "cancel":
                self.cancels.setdefault(event["stream"], time.monotonic())
        elif b'"pong"' in payload:
            self.ponged.set()
        elif b'"hello"' in payload:
            self.hello.set()


async def _bare_listener(http_url: str, slug: str, token: str) -> tuple[Any, _Listener]:
    from bench.loadgen import ws_connect

    listener = _Listener()
    client = await ws_connect(
        http_url,
        f"/ws/rooms/{slug}/",
        {"Authorization": f"Bearer {token}"},
        on_text=listener.on_text,
    )
    await asyncio.wait_for(listener.hello.wait(), 30)
    client.send(json.dumps({"action": "audio", "enabled": True}).encode())
    client.send(json.dumps({"action": "ping", "id": "on"}).encode())
    await asyncio.wait_for(listener.ponged.wait(), 30)
    return client, listener


async def barge_in(
    server: Any, slug: str, asker_token: str, tokens: list[str], fake: Any, repeat: int
) -> dict[str, Any]:
    from tests.support.openai_server import Scenario

    fake.set_default(Scenario.endless(("More words keep coming along for everyone. ",), 0.05))
    asker = await _listen(server.ws_url, slug, asker_token)
    listeners = [await _bare_listener(server.http_url, slug, t) for t in tokens]
    gaps: list[float] = []
    own: list[float] = []
    try:
        for i in range(repeat):
            mark = len(asker.events)
            await asker.send(action="send", text=f"go on {i}", ask_ai=True)
            reply = await asker.wait_for(
                lambda e: e.get("type") == "message" and e["message"]["role"] == "assistant",
                start=mark,
            )
            reply_id = reply["message"]["id"]
            start = await asker.wait_type("audio", state="start", message_id=reply_id, timeout=60)
            stream = start["stream"]
            await asker.send(action="played", stream=stream, ms=400)
            sent = time.monotonic()
            await asker.send(action="speech", state="start", sample_rate=16000, id=f"b{i}")
            await asker.wait_type("audio", state="cancel", stream=stream, timeout=30)
            own.append(asker.event_times[-1] - sent)
            await asker.wait_terminal(reply_id)
            for client, listener in listeners:
                while stream not in listener.cancels:
                    client.changed.clear()
                    await asyncio.wait_for(client.changed.wait(), 30)
                gaps.append(listener.cancels[stream] - sent)
            await asker.send(action="speech", state="cancel")
    finally:
        await asker.close()
        for client, _ in listeners:
            client.transport.close()
    return {"listeners": len(listeners), **_ms(gaps), "asker": _ms(own)}


async def _run(
    args: argparse.Namespace, db: Path, slug: str, asker: str, tokens: list[str]
) -> dict[str, Any]:
    from bench.run import server_env
    from tests.support.daphne import DaphneServer
    from tests.support.openai_server import FakeOpenAIServer

    fake = FakeOpenAIServer().start()
    env = server_env(db, fake.base_url, TTS_BACKEND="piper", VOICE_PRELOAD="1", STT_PRELOAD="1")
    server = DaphneServer(env).start()
    try:
        result = {
            "stt": await stt(server.ws_url, slug, asker, args.repeat),
            "first_audio": await first_audio(server.ws_url, slug, asker, fake, args.repeat),
            "barge_in": await barge_in(server, slug, asker, tokens, fake, args.repeat),
        }
    finally:
        server.stop()
    # The same barge-in with the audio sent as fast as it is made (VOICE_AUDIO_LEAD=0),
    # as before pacing: what the pacing is worth, in this run.
    server = DaphneServer({**env, "VOICE_AUDIO_LEAD": "0"}).start()
    try:
        result["barge_in_unpaced"] = await barge_in(server, slug, asker, tokens, fake, args.repeat)
    finally:
        server.stop()
        fake.stop()
    result["targets"] = {
        "stt_5s_ms": {"target": TARGETS["stt_5s_ms"], "max_ms": result["stt"]["max_ms"]},
        "first_audio_ms": {
            "target": TARGETS["first_audio_ms"],
            "median_ms": result["first_audio"]["median_ms"],
        },
        "barge_in_p99_ms": {
            "target": TARGETS["barge_in_p99_ms"],
            "p99_ms": result["barge_in"]["p99_ms"],
        },
    }
    for row in result["targets"].values():
        measured = next(v for k, v in row.items() if k != "target")
        row["met"] = measured <= row["target"]
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--listeners", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="one repeat, 5 listeners (CI)")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.listeners = 1, 5
    db = Path(tempfile.mkdtemp(prefix="parley-voice-bench-")) / "bench.sqlite3"
    slug, asker, tokens = _setup(db, args.listeners)  # the ORM, before the event loop
    report = asyncio.run(_run(args, db, slug, asker, tokens))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
