"""A handshake flood from one user, and what another user's pings feel meanwhile.

    .venv/bin/python -m bench.flood [--handshakes 1000] [--concurrency 50] [--out FILE]
                                    [--settings CAP:GATE,...]

For each setting (by default: a cap of 20 connections per user and 16 handshakes worked
on at once; no cap with the gate at 4 and at 16; neither, as before both existed) it serves Parley
with a real daphne on loopback (SQLite, the in-memory layer), connects a second user
("bystander") to the same room, and measures the bystander's ping round-trip (WebSocket
``ping`` → ``pong``): first with nothing else going on, then while the first user opens
``--handshakes`` room WebSockets, ``--concurrency`` at a time, holding every one the
server accepts. JSON out (stdout, and ``--out`` if given).

Bounded in count and time; loopback only. The machine is shared: compare the rows of one
run with each other, not with another run's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
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

PING_INTERVAL = 0.02  # seconds between the bystander's pings: 50 per second
BASELINE_PINGS = 100
PING_TIMEOUT = 30.0  # a ping not answered in this long counts as lost
HANDSHAKE_TIMEOUT = 30.0


def _setup(db_path: Path) -> tuple[str, str, str]:
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
    flooder = users.create_user(username="flooder", password="flood-pass-123")
    bystander = users.create_user(username="bystander", password="flood-pass-123")
    room = room_create(owner=bystander, name="Flooded")
    room_join(room=room, user=flooder)
    return room.slug, api_token_create(user=flooder)[1], api_token_create(user=bystander)[1]


def _stats(rtts: list[float]) -> dict[str, float | int]:
    if not rtts:
        return {"pings": 0}
    ordered = sorted(rtts)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 1)

    return {
        "pings": len(ordered),
        "p50_ms": q(0.50),
        "p95_ms": q(0.95),
        "p99_ms": q(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


async def _pinger(client: Any, stop: asyncio.Event, rtts: list[float], limit: int) -> int:
    """Ping until ``stop`` (or ``limit`` pings); returns how many got no answer."""
    lost = 0
    n = 0
    while not stop.is_set() and n < limit:
        n += 1
        sent = time.perf_counter()
        await client.send(action="ping", id=f"p{n}")
        try:
            await client.wait_for(
                lambda e, i=f"p{n}": e.get("type") == "pong" and e.get("id") == i,
                timeout=PING_TIMEOUT,
                start=max(0, len(client.events) - 50),
            )
            rtts.append(time.perf_counter() - sent)
        except TimeoutError:
            lost += 1
        await asyncio.sleep(PING_INTERVAL)  # pacing between pings, not synchronisation
    return lost


async def _handshake(url: str, token: str, held: list[Any], outcome: dict[str, int]) -> None:
    import websockets

    try:
        conn = await websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30
        )
    except Exception:
        outcome["failed"] += 1
        return
    try:
        await asyncio.wait_for(conn.recv(), HANDSHAKE_TIMEOUT)  # hello, or the close
        outcome["accepted"] += 1
        held.append(conn)
    except websockets.ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        key = f"closed_{code}"
        outcome[key] = outcome.get(key, 0) + 1
    except TimeoutError:
        outcome["timed_out"] += 1
        await conn.close()


async def _flood_run(
    server: Any, slug: str, flooder: str, bystander: str, handshakes: int, concurrency: int
) -> dict[str, Any]:
    """One server: the bystander's pings quiet, during the flood, and after it."""
    from tests.support.wsclient import RoomClient

    client = await RoomClient.connect(server.ws_url, slug, token=bystander)
    await client.wait_type("hello")
    # Warm up, then the quiet baseline.
    await _pinger(client, asyncio.Event(), [], 10)
    quiet: list[float] = []
    await _pinger(client, asyncio.Event(), quiet, BASELINE_PINGS)

    # The flood runs in a process of its own, so the bystander's timings are the server's
    # and not this process's event loop busy with a thousand handshakes.
    url = f"{server.ws_url}/ws/rooms/{slug}/"
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.flood",
        "--flood-url",
        url,
        "--handshakes",
        str(handshakes),
        "--concurrency",
        str(concurrency),
        cwd=ROOT,
        env={**os.environ, "FLOOD_TOKEN": flooder},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert flood.stdout is not None
    assert flood.stdin is not None
    stop = asyncio.Event()
    during: list[float] = []
    pinger = asyncio.create_task(_pinger(client, stop, during, 10**6))
    outcome = json.loads(await flood.stdout.readline())  # flood done, connections held
    stop.set()
    lost = await pinger
    # The flood's connections open and idle: the bystander's ping meanwhile.
    after: list[float] = []
    await _pinger(client, asyncio.Event(), after, BASELINE_PINGS)
    flood.stdin.close()  # lets the flooder close its connections and exit
    await flood.wait()
    await client.close()
    return {
        "handshakes": handshakes,
        "concurrency": concurrency,
        "flood_seconds": outcome.pop("seconds"),
        "handshakes_per_second": round(handshakes / outcome["seconds_raw"], 1),
        "outcome": {k: v for k, v in outcome.items() if k != "seconds_raw"},
        "bystander_ping_quiet": _stats(quiet),
        "bystander_ping_during_flood": {**_stats(during), "lost": lost},
        "bystander_ping_with_flood_connections_held": _stats(after),
    }


async def flood_process(url: str, token: str, handshakes: int, concurrency: int) -> None:
    """The flooder: open the handshakes, report on stdout, hold them until stdin closes."""
    held: list[Any] = []
    outcome: dict[str, Any] = {"accepted": 0, "failed": 0, "timed_out": 0}
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await _handshake(url, token, held, outcome)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(handshakes)))
    elapsed = time.perf_counter() - started
    outcome.update(seconds=round(elapsed, 2), seconds_raw=elapsed)
    print(json.dumps(outcome), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await asyncio.gather(*(c.close() for c in held), return_exceptions=True)


DEFAULT_SETTINGS = "20:16,0:4,0:16,0:0"


async def main(handshakes: int, concurrency: int, settings: str) -> dict[str, Any]:
    from tests.support.daphne import DaphneServer

    db = Path(tempfile.mkdtemp(prefix="parley-flood-")) / "flood.sqlite3"
    slug, flooder, bystander = await asyncio.to_thread(_setup, db)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "ping_interval_ms": PING_INTERVAL * 1000,
        "runs": [],
    }
    for cap, gate in (pair.split(":") for pair in settings.split(",")):
        server = DaphneServer(
            {
                "DATABASE_URL": f"sqlite:///{db}",
                "PARLEY_MAX_CONNECTIONS_PER_USER": cap,
                "PARLEY_HANDSHAKE_CONCURRENCY": gate,
                "VOICE_PRELOAD": "0",
                "LOG_LEVEL": "INFO",
            }
        ).start()
        try:
            row = await _flood_run(server, slug, flooder, bystander, handshakes, concurrency)
        finally:
            server.stop()
        report["runs"].append(
            {"max_connections_per_user": int(cap), "handshake_concurrency": int(gate), **row}
        )
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--settings",
        default=DEFAULT_SETTINGS,
        help="CAP:GATE pairs, comma-separated (PARLEY_MAX_CONNECTIONS_PER_USER, "
        "PARLEY_HANDSHAKE_CONCURRENCY; 0 turns either off)",
    )
    parser.add_argument("--flood-url", help=argparse.SUPPRESS)  # the flooder process
    args = parser.parse_args()
    if args.flood_url:
        logging.disable(logging.ERROR)  # refused sockets' keepalive noise
        asyncio.run(
            flood_process(
                args.flood_url, os.environ["FLOOD_TOKEN"], args.handshakes, args.concurrency
            )
        )
        sys.exit(0)
    result = asyncio.run(main(args.handshakes, args.concurrency, args.settings))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
