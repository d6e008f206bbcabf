"""How fast a message action reaches every member, beside how fast a delta does (issue 19).

    python -m bench.actions --out bench/actions.json          (make bench)
    python -m bench.actions --quick --out bench/actions-quick.json

One daphne, one room of ``--members`` WebSocket members (bench/loadgen.py's cheap
clients), one loopback model server (tests/support/openai_server.py). First a reply
streams ``--tokens`` tokens at 50 tokens/s: a delta's latency is the time from the model
server writing a token to a member receiving it. Then member 0 acts, ``--repeat`` times
each: ``rate`` (the ``rating`` event), ``edit`` (``edit``), ``regenerate`` (``version``),
``delete`` of a message whose reply has ended (``delete``) and ``delete_streaming`` of one
whose reply is still streaming (stopped first; ``delete``); an action's latency is the
time from member 0 writing the frame to a member receiving its event. Both are per
member, so p99 is the slowest members' view, and the two are measured in the same
process, room and run: the target is an action p99 within the delta's.

``--before REV`` measures an earlier Parley too, in the same run: a worktree of REV
serves the same database and room from its own daphne, and the two sides take turns
(``--rounds`` each, alternating which goes first), so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    _setup_django,
    _users,
    before_checkout,
    checkout_remove,
    percentile,
    server_env,
)

TOKEN = re.compile(rb"t(\d+) ")
# What member 0 does, each --repeat times: rate the reply, edit its question, regenerate
# the reply, delete a message whose reply has ended, delete one whose reply streams.
ACTIONS = ("rate", "edit", "regenerate", "delete", "delete_streaming")


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "samples": len(values),
        "p50_ms": round(percentile(values, 0.5) * 1000, 1),
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
    }


class Room:
    """The members' connections and what each has received, stamped on arrival."""

    def __init__(self, url: str, slug: str, tokens: list[str]) -> None:
        self.url, self.slug, self.tokens = url, slug, tokens
        self.members: list[Any] = []

    async def open(self) -> None:
        from bench.loadgen import ws_connect

        gate = asyncio.Semaphore(50)

        async def one(token: str) -> Any:
            async with gate:
                client = await ws_connect(
                    self.url, f"/ws/rooms/{self.slug}/", {"Authorization": f"Bearer {token}"}
                )
                await self.until(client, lambda payload: b'"type":"hello"' in payload)
                return client

        self.members = list(await asyncio.gather(*(one(t) for t in self.tokens)))

    @staticmethod
    async def until(client: Any, match: Any, start: int = 0) -> tuple[float, bytes]:
        """The first frame from index ``start`` on that ``match`` accepts (waits for it,
        60 s at most in all)."""
        seen = start
        deadline = time.monotonic() + 60
        while True:
            for at, payload in client.frames[seen:]:
                if match(payload):
                    return at, payload
            seen = len(client.frames)
            client.changed.clear()
            try:
                await asyncio.wait_for(client.changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                tail = [p[:300] for _, p in client.frames[-4:]]
                raise TimeoutError(f"no matching frame in 60 s; the last: {tail}") from None

    async def act(self, frame: dict[str, Any], event: str) -> tuple[list[float], dict[str, Any]]:
        """Member 0 sends ``frame``; every member's latency to the ``event`` it causes."""
        marks = [len(m.frames) for m in self.members]
        needle = f'"type":"{event}"'.encode()
        sent = time.monotonic()
        self.members[0].send(json.dumps(frame).encode())
        arrivals = await asyncio.gather(
            *(
                self.until(m, lambda p: needle in p, start)
                for m, start in zip(self.members, marks, strict=True)
            )
        )
        return [at - sent for at, _ in arrivals], json.loads(arrivals[0][1])

    async def answer_to(self, message_id: str) -> str:
        """The id of the reply to ``message_id`` (once member 0 has its ``message`` event)."""
        needle = f'"reply_to":"{message_id}"'.encode()
        _, payload = await self.until(
            self.members[0], lambda p: b'"type":"message"' in p and needle in p
        )
        return str(json.loads(payload)["message"]["id"])

    async def streaming(self, message_id: str) -> None:
        """Until member 0 has a delta of the reply ``message_id``."""
        mine = f'"message_id":"{message_id}"'.encode()
        await self.until(self.members[0], lambda p: b'"type":"delta"' in p and mine in p)

    async def reply_done(self, message_id: str) -> None:
        mine, done = f'"message_id":"{message_id}"'.encode(), b'"state":"complete"'
        await asyncio.gather(
            *(self.until(m, lambda p: mine in p and done in p) for m in self.members)
        )

    def close(self) -> None:
        for m in self.members:
            if m.transport is not None:
                m.transport.close()


async def measure(
    args: argparse.Namespace, url: str, slug: str, tokens: list[str], fake: Any
) -> dict[str, Any]:
    """One side's turn: the raw latencies (seconds) of the deltas and of each action."""
    from tests.support.openai_server import Scenario

    pieces = [f"t{i} " for i in range(args.tokens)]
    room = Room(url, slug, tokens)
    await room.open()
    # This process stamps 200 members' frames and the model's tokens: its own collector's
    # full passes over them (50-110 ms here) would be read as the server's latency.
    gc.collect()
    gc.disable()
    try:
        # The reply every action works on, streamed as the fan-out bench streams it.
        fake.set_default(Scenario.slow(pieces, delay=1 / 50))
        before = len(fake.requests)
        _, created = await room.act({"action": "send", "text": "go", "ask_ai": True}, "message")
        asked_id = created["message"]["id"]
        record = await fake.await_request(before, timeout=60)
        while not record.path.endswith("/chat/completions"):  # not a model listing
            before += 1
            record = await fake.await_request(before, timeout=60)
        reply_id = await room.answer_to(asked_id)
        await room.reply_done(reply_id)
        record = fake.requests[record.index]  # await_request answered a copy, then
        deltas = []
        for member in room.members:
            for at, payload in member.frames:
                for match in TOKEN.finditer(payload):
                    index = int(match.group(1))
                    if index < len(record.piece_times):
                        deltas.append(at - record.piece_times[index])
        results: dict[str, list[float]] = {name: [] for name in ACTIONS}
        fake.set_default(Scenario.normal(["again"]))
        for i in range(args.repeat):
            value = 1 if i % 2 == 0 else -1
            lat, _ = await room.act(
                {"action": "rate", "message_id": reply_id, "value": value}, "rating"
            )
            results["rate"] += lat
            lat, _ = await room.act(
                {"action": "edit", "message_id": asked_id, "text": f"go, take {i}"}, "edit"
            )
            results["edit"] += lat
            lat, version = await room.act(
                {"action": "regenerate", "message_id": reply_id}, "version"
            )
            results["regenerate"] += lat
            await room.reply_done(version["current"])
            # A delete of a message whose reply has ended (the room answers every message).
            _, said = await room.act({"action": "send", "text": f"note {i}"}, "message")
            note_id = said["message"]["id"]
            await room.reply_done(await room.answer_to(note_id))
            lat, _ = await room.act({"action": "delete", "message_id": note_id}, "delete")
            results["delete"] += lat
            # And of one whose reply still streams: the reply is stopped first (its
            # terminal `generation` event, then the `delete`).
            fake.set_default(Scenario.slow(["still "] * 500, delay=1 / 50))
            _, said = await room.act({"action": "send", "text": f"long {i}"}, "message")
            note_id = said["message"]["id"]
            await room.streaming(await room.answer_to(note_id))
            lat, _ = await room.act({"action": "delete", "message_id": note_id}, "delete")
            results["delete_streaming"] += lat
            fake.set_default(Scenario.normal(["again"]))
        return {"members": len(room.members), "delta": deltas, **results}
    finally:
        gc.enable()
        room.close()


def _row(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures over its rounds (samples pooled)."""
    samples: dict[str, list[float]] = {}
    for measured in rounds:
        for name, values in measured.items():
            if name != "members":
                samples.setdefault(name, []).extend(values)
    delta = _ms(samples.pop("delta"))
    row: dict[str, Any] = {"members": rounds[0]["members"], "delta": delta}
    for name, values in samples.items():
        stats: dict[str, float] = _ms(values)
        stats["p99_vs_delta_p99"] = round(stats["p99_ms"] / max(delta["p99_ms"], 0.1), 2)
        row[name] = stats
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "actions.json")
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=10, help="times each action is taken")
    parser.add_argument("--before", metavar="REV", help="also measure this earlier revision")
    parser.add_argument("--rounds", type=int, default=1, help="turns each side takes")
    args = parser.parse_args()
    if args.quick:
        args.members, args.tokens, args.repeat = 20, 40, 2

    from tests.support.daphne import DaphneServer
    from tests.support.openai_server import FakeOpenAIServer

    tmp = Path(tempfile.mkdtemp(prefix="parley-actions-"))
    db = tmp / "bench.sqlite3"
    _setup_django(db)
    slug, tokens = _users(args.members)
    checkout = before_checkout(args.before, tmp) if args.before else None
    sides: dict[str, list[dict[str, Any]]] = {"after": [], "before": []}
    try:
        with FakeOpenAIServer() as fake:
            env = server_env(db, fake.base_url, PARLEY_ACTION_BURST="100000", VOICE_PRELOAD="0")
            for turn in range(args.rounds):
                order = [("after", ROOT)]
                if checkout is not None:
                    order.append(("before", checkout))
                    if turn % 2 == 0:
                        order.reverse()
                for side, cwd in order:
                    server = DaphneServer(env, cwd=cwd).start()
                    try:
                        sides[side].append(
                            asyncio.run(measure(args, server.http_url, slug, tokens, fake))
                        )
                    finally:
                        server.stop()
    finally:
        if checkout is not None:
            checkout_remove(checkout)
    row = _row(sides["after"])
    report: dict[str, Any] = {
        "settings": {"members": args.members, "tokens": args.tokens, "repeat": args.repeat},
        "actions": row,
    }
    names = ACTIONS
    summary: dict[str, Any] = {
        "delta_p99_ms": row["delta"]["p99_ms"],
        "worst_action_ratio": max(row[name]["p99_vs_delta_p99"] for name in names),
    }
    if sides["before"]:
        before = _row(sides["before"])
        report["settings"].update(before=args.before, rounds=args.rounds)
        report["before"] = before
        summary["before_delta_p99_ms"] = before["delta"]["p99_ms"]
        summary["before_worst_action_ratio"] = max(
            before[name]["p99_vs_delta_p99"] for name in names
        )
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
