"""Parley's benchmark: one command, JSON out.

    make bench            (or: .venv/bin/python -m bench.run --out bench/results.json)

It serves Parley with a real daphne on loopback (SQLite, in-memory layer, the bundled
voice) against the loopback fake model server, and measures what users feel:

- fan-out: N members in a room while a fast model streams; for every token, the time
  from the model server writing it to each member receiving it (p50/p95), and how many
  frames each member got (delta coalescing on, and off in the same run, as a ratio);
- time to first token through the server;
- time to first audio per voice mode, from the first token and from the first complete
  sentence reaching the member.

The machine is shared and noisy: compare runs by the ratios measured within one run.
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


def _setup_django(db_path: Path) -> None:
    os.environ["DATABASE_URL"] = f"sqlite:///{db_path}"
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _users(count: int) -> tuple[str, list[str]]:
    from django.contrib.auth import get_user_model

    from accounts.services import api_token_create
    from chat.services import room_create, room_join

    User = get_user_model()
    users = [
        User.objects.create_user(username=f"bench{i}", password="bench-pass-123")
        for i in range(count)
    ]
    room = room_create(owner=users[0], name=f"Bench {time.monotonic_ns()}")
    for user in users:
        room_join(room=room, user=user)
    return room.slug, [api_token_create(user=user)[1] for user in users]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fanout(
    server: Any, fake: Any, slug: str, tokens: list[str], *, n_tokens: int, interval: float
) -> dict[str, Any]:
    from tests.support.openai_server import Scenario
    from tests.support.wsclient import RoomClient

    pieces = [f"t{i} " for i in range(n_tokens)]
    fake.set_default(Scenario.slow(pieces, delay=interval))
    clients = [await RoomClient.connect(server.ws_url, slug, token=t) for t in tokens]
    for c in clients:
        await c.wait_type("hello")
    sent_at: dict[str, float] = {}
    # The fake writes each piece from its own thread; stamp them from its record.
    started = time.monotonic()
    await clients[0].send(action="send", text="go", client_id="bench")
    reply = await clients[0].wait_for(
        lambda e: e.get("type") == "message" and e["message"]["role"] == "assistant"
    )
    reply_id = reply["message"]["id"]
    arrivals: list[list[tuple[float, str]]] = [[] for _ in clients]

    async def watch(index: int, client: Any) -> None:
        seen = 0
        while True:
            event = await client.wait_for(lambda e: True, timeout=120, start=seen)
            seen = client.events.index(event, seen) + 1
            if event.get("type") == "delta" and event.get("message_id") == reply_id:
                arrivals[index].append((time.monotonic(), event["text"]))
            if (
                event.get("type") == "generation"
                and event.get("message_id") == reply_id
                and event["state"] in ("complete", "stopped", "failed")
            ):
                return

    await asyncio.gather(*(watch(i, c) for i, c in enumerate(clients)))
    record = fake.requests[-1]
    for c in clients:
        await c.close()
    # The fake stamps each piece as it writes it (same clock: it runs in this process).
    for piece, at in zip(pieces, record.piece_times, strict=True):
        sent_at[piece] = at
    latencies = []
    for member in arrivals:
        for at, text in member:
            for piece in text.split(" "):
                if piece:
                    latencies.append(at - sent_at[piece + " "])
    first_delta = min(m[0][0] for m in arrivals if m)
    frames = statistics.mean(len(m) for m in arrivals)
    return {
        "members": len(clients),
        "tokens": n_tokens,
        "token_interval_ms": interval * 1000,
        "frames_per_member": round(frames, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "latency_p95_ms": round(percentile(latencies, 0.95) * 1000, 2),
        "time_to_first_delta_ms": round((first_delta - started) * 1000, 1),
    }


async def first_audio(server: Any, fake: Any, slug: str, token: str, mode: str) -> dict[str, Any]:
    from tests.support.openai_server import Scenario
    from tests.support.wsclient import RoomClient

    words = "The first sentence is short. Then a second one follows. And a third.".split()
    fake.set_default(Scenario.slow([w + " " for w in words], delay=0.05))
    c = await RoomClient.connect(server.ws_url, slug, token=token)
    await c.wait_type("hello")
    await c.send(action="audio", enabled=True)
    await c.send(action="send", text="speak", voice=mode)
    stamps: dict[str, float] = {}
    text = ""
    seen = 0
    while "audio" not in stamps:
        event = await c.wait_for(lambda e: True, timeout=120, start=seen)
        seen = c.events.index(event, seen) + 1
        now = time.monotonic()
        if event.get("type") == "delta":
            stamps.setdefault("first_token", now)
            text += event["text"]
            if "." in text:
                stamps.setdefault("first_sentence", now)
        elif event.get("type") == "audio" and event.get("state") == "start":
            stamps["audio"] = now
    await c.wait_type("audio", state="end", timeout=120)
    await c.close()
    return {
        "mode": mode,
        "from_first_token_ms": round((stamps["audio"] - stamps["first_token"]) * 1000, 1),
        "from_first_sentence_ms": round(
            (stamps["audio"] - stamps.get("first_sentence", stamps["audio"])) * 1000, 1
        ),
    }


async def main(members: int, tokens: int) -> dict[str, Any]:
    from tests.support.daphne import DaphneServer
    from tests.support.openai_server import FakeOpenAIServer

    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    db = tmp / "bench.sqlite3"
    await asyncio.to_thread(_setup_django, db)
    slug, user_tokens = await asyncio.to_thread(_users, members)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "fanout": [],
        "first_audio": [],
    }
    with FakeOpenAIServer() as fake:
        env = {
            "DATABASE_URL": f"sqlite:///{db}",
            "LLM_BACKEND": "openai",
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "bench",
            "PARLEY_SEND_BURST": "100000",
            "LOG_LEVEL": "WARNING",
        }
        for window in ("0.03", "0"):
            server = DaphneServer(
                {**env, "PARLEY_DELTA_WINDOW": window, "VOICE_PRELOAD": "0", "LOG_LEVEL": "INFO"}
            ).start()
            try:
                for count in sorted({1, members}):
                    row = await fanout(
                        server, fake, slug, user_tokens[:count], n_tokens=tokens, interval=0.002
                    )
                    row["delta_window_ms"] = float(window) * 1000
                    results["fanout"].append(row)
            finally:
                server.stop()
        server = DaphneServer({**env, "LOG_LEVEL": "INFO"}).start()
        try:
            # Warm the voice first: its one-time load is not a per-reply cost.
            await first_audio(server, fake, slug, user_tokens[0], "normal")
            for mode in ("normal", "streaming", "realtime"):
                results["first_audio"].append(
                    await first_audio(server, fake, slug, user_tokens[0], mode)
                )
        finally:
            server.stop()
    on = {r["members"]: r for r in results["fanout"] if r["delta_window_ms"] > 0}
    off = {r["members"]: r for r in results["fanout"] if r["delta_window_ms"] == 0}
    results["coalescing_ratios"] = {
        str(m): {
            "frames_off_over_on": _ratio(off[m], on[m], "frames_per_member"),
            "p95_latency_off_over_on": _ratio(off[m], on[m], "latency_p95_ms"),
        }
        for m in on
        if m in off
    }
    return results


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    return round(a[key] / b[key], 2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=400)
    args = parser.parse_args()
    report = asyncio.run(main(args.members, args.tokens))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
