"""How much one Redis takes of Parley's own traffic: appends and publishes per second.

    .venv/bin/python -m bench.redis_capacity [--seconds 3] [--subscribers 2]

A private redis-server (nothing saved to disk, as Parley runs it) is driven by
``redis-benchmark`` (C, many connections, pipelined) so the figure is Redis's and not a
Python client's:

- ``append``: Parley's append script (chat/events/redis_store.py ``_APPEND``) for a delta
  of a live reply, 40 bytes of text in a 200-byte event, over 1,000 rooms (``EVALSHA``);
- ``publish``: a 300-byte channel-layer message to a room's channel heard by
  ``--subscribers`` processes (``PUBLISH``; ``SPUBLISH`` costs the same on a shard).

docs/architecture.md "How far one Redis goes" turns the two figures into rooms and
streaming replies. One Redis is one core: the machine's other cores do not raise it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _benchmark(port: int, requests: int, spread: int, *command: str) -> float:
    out = subprocess.run(
        [
            "redis-benchmark", "-p", str(port), "-c", "50", "-P", "16", "-n", str(requests),
            "-r", str(spread), "--csv", *command,
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"redis-benchmark failed: {out.stderr or out.stdout}")
    # The last row: "<command>","<rps>", then six latencies (the command is not escaped).
    fields = out.stdout.strip().splitlines()[-1].strip('"').split('","')
    if len(fields) >= 8:
        return float(fields[-7])
    raise RuntimeError(f"redis-benchmark printed no rate: {out!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--subscribers", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("redis-benchmark") is None:
        sys.exit("redis-benchmark is needed (Debian: redis-tools)")

    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import redis

    from chat.events.redis_store import _APPEND
    from tests.support.redis_server import RedisServer

    server = RedisServer().start()
    subscribers: list[subprocess.Popen[bytes]] = []
    try:
        client = redis.Redis(port=server.port)
        sha = client.script_load(_APPEND)
        # A live reply, as the script finds it mid-reply. One room: redis-benchmark draws
        # each __rand_int__ apart, so a room's keys cannot vary together; Redis's cost per
        # append does not depend on how many rooms there are.
        tag = "parley:{r1}"
        client.set(f"{tag}:seq", 1)
        client.set(f"{tag}:m:1:text", "x")
        client.set(f"{tag}:m:1:status", "streaming")
        event = json.dumps({"type": "delta", "message_id": "1", "text": "t" * 40, "pad": "p" * 120})
        # __rand_int__: a fresh 12-digit number each time, so every emit's key is new.
        append = _benchmark(
            server.port, args.requests, 100_000_000,
            "EVALSHA", sha, "5", f"{tag}:seq", f"{tag}:log", f"{tag}:m:1:text",
            f"{tag}:m:1:status", f"{tag}:eid:__rand_int__",
            event, "append", "t" * 40, "86400", "30000", "none", "", "", "none", "0",
        )  # fmt: skip
        for _ in range(args.subscribers):
            subscribers.append(
                subprocess.Popen(
                    ["redis-cli", "-p", str(server.port), "SUBSCRIBE"]
                    + [f"room.{room:012d}" for room in range(1000)],
                    stdout=subprocess.DEVNULL,
                )
            )
        publish = _benchmark(
            server.port, args.requests, 1000, "PUBLISH", "room.__rand_int__", "m" * 300
        )
        print(
            json.dumps(
                {
                    "appends_per_second": round(append),
                    "publishes_per_second": round(publish),
                    "subscribers": args.subscribers,
                    "redis": client.info("server")["redis_version"],
                }
            )
        )
    finally:
        for sub in subscribers:
            sub.kill()
        server.kill()


if __name__ == "__main__":
    main()
