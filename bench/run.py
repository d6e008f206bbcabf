"""Parley's benchmark, side by side with the peer people would pick instead: one command,
JSON out, ratios printed.

    make bench          (.venv/bin/python -m bench.run --out bench/results.json)
    make bench-quick    (the same scenarios, small: under two minutes, run in CI)

One loopback model server (tests/support/openai_server.py) streams the same tokens (by
default 200 at 50 tokens/s) to both servers: Parley under daphne, and a python-socketio
server under uvicorn (bench/peers/socketio_server.py; its Redis manager for two
processes). The load generator (bench/loadgen.py) runs as its own process. Token latency
is the time from the model server writing a token to a member receiving it; both stamp
``time.monotonic()``, one clock on Linux.

Scenarios: fan-out at 200 members in one process and over two processes on Redis, 500 and
1,000 members, SSE beside WebSocket listeners, idle members (memory and CPU per member),
handshakes per second into one room, one quiet member (frames per token), and the time
from a ``send`` to the model server having the request, and the OpenAI-compatible API's
request to its first chunk against a WebSocket send's first delta
(``openai_first_chunk``). ``--assistants 3`` adds the
200-member fan-out in a room of 3 assistants, each on its own loopback model server, each
fan-out asking the next one by its ``@handle`` (``parley_assistants``, beside
``parley_1p`` in the same process and run). ``--metrics-cost`` adds the 200-member fan-out
on a process with metrics on (``PARLEY_METRICS=on``, the default) and on one with them off,
side by side in each repeat, which goes first alternating (``metrics_on``, ``metrics_off``;
``--metrics-cost-only``: those rows alone). The machine is shared and noisy
(2 cores for servers and generator): compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
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
    # daphne refuses to start without the static manifest (core/checks.py).
    call_command("collectstatic", "--noinput", verbosity=0)


def _users(count: int) -> tuple[str, list[str]]:
    """``count`` members of one room, each with a token (bulk: no password hashing)."""
    from django.contrib.auth import get_user_model

    from accounts.models import ApiToken, generate_token, hash_token
    from chat.models import Membership
    from chat.services import room_create

    User = get_user_model()
    owner = User.objects.create_user(username="bench-owner", password=None)
    room = room_create(owner=owner, name=f"Bench {time.monotonic_ns()}")
    users = User.objects.bulk_create(
        [User(username=f"bench{i}", password="!") for i in range(count)], batch_size=2000
    )
    Membership.objects.bulk_create([Membership(room=room, user=u) for u in users], batch_size=2000)
    raws = [generate_token() for _ in users]
    ApiToken.objects.bulk_create(
        [
            ApiToken(user=u, key_hash=hash_token(raw), prefix=raw[:10])
            for u, raw in zip(users, raws, strict=True)
        ],
        batch_size=2000,
    )
    return room.slug, raws


def _assistants_room(slug: str, count: int) -> str:
    """A room with the bench room's members and ``count`` assistants (``a1`` ...), each on
    its own provider (``bench-a1`` ...: PARLEY_PROVIDERS), none answering unasked."""
    from chat.models import Assistant, Membership, Room, RoomAssistant
    from chat.services import room_create

    first = Room.objects.get(slug=slug)
    room = room_create(owner=first.owner, name=f"Bench assistants {time.monotonic_ns()}")
    members = Membership.objects.filter(room=first).exclude(user=first.owner)
    Membership.objects.bulk_create(
        [Membership(room=room, user_id=m.user_id) for m in members], batch_size=2000
    )
    RoomAssistant.objects.filter(room=room).update(mode="mention")
    for i in range(1, count + 1):
        assistant = Assistant.objects.create(
            room=room, handle=f"a{i}", name=f"A{i}", provider=f"bench-a{i}", model="bench"
        )
        RoomAssistant.objects.create(room=room, assistant=assistant, handle=f"a{i}")
    return room.slug


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Peer:
    """The python-socketio server under uvicorn, one process."""

    def __init__(self, model_url: str, redis_url: str | None) -> None:
        self.port = free_port()
        env = {**os.environ, "BENCH_MODEL_URL": model_url}
        if redis_url:
            env["BENCH_REDIS_URL"] = redis_url
        uvicorn = [sys.executable, "-m", "uvicorn", "bench.peers.socketio_server:app"]
        self.proc = subprocess.Popen(
            [*uvicorn, "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            cwd=ROOT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the socketio peer did not start")
            time.sleep(0.05)  # polling a port for a server we do not control

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def loadgen(plan: dict[str, Any], *, on_ready: Any = None) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(plan) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if plan.get("idle"):
        assert json.loads(line).get("ready"), line
        extra = on_ready() if on_ready else {}
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        result = json.loads(line)
        result.update(extra)
    else:
        result = json.loads(line)
    proc.wait(30)
    return result


def latency_row(result: dict[str, Any], times: list[float], expect: int) -> dict[str, Any]:
    def summarize(members: list[dict[str, Any]]) -> dict[str, Any]:
        latencies = []
        lost = 0
        for member in members:
            got = {t for t, _ in member["tokens"]}
            lost += expect - len(got & set(range(expect)))
            latencies += [at - times[t] for t, at in member["tokens"] if t < len(times)]
        return {
            "members": len(members),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "lost": lost,
            "frames_per_member": round(statistics.mean(m["frames"] for m in members), 1)
            if members
            else 0,
        }

    arrivals = result.get("arrivals", [])
    row = summarize(arrivals)
    row["connected"] = result["connected"]
    row["handshakes_per_second"] = result["handshakes_per_second"]
    ws = [m for m in arrivals if not m["sse"]]
    sse = [m for m in arrivals if m["sse"]]
    if ws and sse:
        row["ws"] = summarize(ws)
        row["sse"] = summarize(sse)
    return row


def before_checkout(rev: str, tmp: Path) -> Path:
    """A worktree of ``rev`` (``--before``) that daphne can serve: its daphne serves its own
    static files, and refuses to start without them."""
    checkout = tmp / "before"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(checkout), rev],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=checkout,
        check=True,
        capture_output=True,
    )
    return checkout


def checkout_remove(checkout: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=ROOT, check=False)


def server_env(db: Path, model_url: str, **extra: str) -> dict[str, str]:
    """A bench daphne's environment: the bench's SQLite file, the loopback model server,
    no send rate limit; ``extra`` adds or overrides."""
    return {
        "DATABASE_URL": f"sqlite:///{db}",
        "LLM_BACKEND": "openai",
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "bench",
        "PARLEY_SEND_BURST": "100000",
        **extra,
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="parley-bench-"))
        self.db = self.tmp / "bench.sqlite3"
        self.pieces = [f"t{i} " for i in range(args.tokens)]
        self.checkout: Path | None = None
        # --assistants: one loopback model server per assistant, and how many fan-outs
        # have asked one (each asks the next assistant in turn).
        self.assistant_fakes: list[Any] = []
        self.asked = 0
        if args.before:
            # A worktree of the earlier revision, served from the same database.
            self.checkout = before_checkout(args.before, self.tmp)

    def parley_env(self, **extra: str) -> dict[str, str]:
        env = server_env(
            self.db,
            self.fake.base_url,
            PARLEY_MAX_CONNECTIONS_PER_USER="100000",
            VOICE_PRELOAD="0",
            LOG_LEVEL="INFO",
        )
        if self.assistant_fakes:
            env["PARLEY_PROVIDERS"] = json.dumps(
                {
                    f"bench-a{i}": {"base_url": fake.base_url, "api_key": "bench"}
                    for i, fake in enumerate(self.assistant_fakes, 1)
                }
            )
        env.update(extra)
        return env

    def parley(self, count: int = 1, *, cwd: Path = ROOT, **extra: str) -> list[Any]:
        from tests.support.daphne import DaphneServer

        env = self.parley_env(**extra)
        return [DaphneServer(env, cwd=cwd).start() for _ in range(count)]

    def before_fanout(self, checkout: Path, run: dict[str, Any]) -> None:
        """The same one-process fan-outs against an earlier Parley (``--before REV``), in
        the same order as this revision's: a quiet room first on a fresh process (so the
        crowds after it are measured warm on both sides), then the crowds, the half-SSE
        room among them (what a process served before a crowd shapes its p99)."""
        args = self.args
        server = self.parley(cwd=checkout)[0]
        try:
            run["before_quiet"] = self.fanout("parley", [server.http_url], 1)
            run["before_1p"] = self.fanout("parley", [server.http_url], args.members)
            run["before_mixed"] = self.fanout("parley-mixed", [server.http_url], args.members)
            run["before_large"] = self.fanout("parley", [server.http_url], args.members_large)
        finally:
            server.stop()

    def before_rest(self, checkout: Path, run: dict[str, Any]) -> None:
        """The earlier Parley's send -> model and idle members."""
        args = self.args
        server = self.parley(cwd=checkout)[0]
        try:
            first = self.send_to_model(server.http_url, 1)["gaps"][0]
            warm = self.send_to_model(server.http_url, args.sends)["gaps"]
            run["before_send_to_model"] = {
                "first_ms": round(first * 1000, 1),
                "warm_median_ms": round(statistics.median(warm) * 1000, 1),
            }
        finally:
            server.stop()
        server = self.parley(cwd=checkout)[0]
        try:
            assert server.proc is not None
            run["before_idle"] = self.idle(server, server.proc.pid, args.before_idle_members)
        finally:
            server.stop()

    def fanout(
        self,
        kind: str,
        urls: list[str],
        members: int,
        *,
        slug: str | None = None,
        text: str = "go",
        fake: Any = None,
    ) -> dict[str, Any]:
        from tests.support.openai_server import Scenario

        fake = fake or self.fake
        slug = slug or self.slug
        fake.set_default(Scenario.slow(self.pieces, delay=1 / self.args.rate))
        before = len(fake.requests)
        plan: dict[str, Any] = {"kind": kind, "urls": urls, "members": members, "wait": 120}
        if kind == "socketio":
            plan["trigger"] = '42["ask",{}]'
        else:
            plan.update(
                path=f"/ws/rooms/{slug}/",
                sse_path=f"/api/rooms/{slug}/events",
                tokens=self.tokens[:members],
                trigger=json.dumps({"action": "send", "text": text, "ask_ai": True}),
            )
        result = loadgen(plan)
        record = fake.requests[before]
        return latency_row(result, record.piece_times, len(self.pieces))

    def fanout_assistants(self, url: str) -> dict[str, Any]:
        """The 200-member fan-out in the room of several assistants, each fan-out asking
        the next one (on its own model server) by its @handle."""
        index = self.asked % len(self.assistant_fakes)
        self.asked += 1
        return self.fanout(
            "parley",
            [url],
            self.args.members,
            slug=self.assistants_slug,
            text=f"@a{index + 1} go",
            fake=self.assistant_fakes[index],
        )

    def assistants_rows(self, url: str, run: dict[str, Any], *, first: bool) -> None:
        """The room of several assistants against a second room with its one assistant,
        the same crowd, each in the same place: right after the first room's crowd, which
        of the two goes first alternating by repeat. (A second 10,000-member room's crowd
        right after the first's was seen to pay a stall that has nothing to do with its
        assistants, up to 64 ms p99 with one assistant: compared with parley_1p alone,
        the assistants would be charged for it.)"""

        def assistants() -> None:
            run["parley_assistants"] = self.fanout_assistants(url)

        def one() -> None:
            run["parley_second_room"] = self.fanout(
                "parley", [url], self.args.members, slug=self.second_slug
            )

        for step in (assistants, one) if first else (one, assistants):
            step()

    def metrics_rows(self, run: dict[str, Any], *, on_first: bool) -> None:
        """The 200-member fan-out with metrics on and with them off (issue 20: the
        instrumentation must cost nothing measurable per token), each on a fresh process
        warmed by a quiet room first, the same way; which goes first alternates by repeat,
        so neither always meets the machine as the other leaves it."""
        for setting in ("on", "off") if on_first else ("off", "on"):
            server = self.parley(PARLEY_METRICS=setting)[0]
            try:
                self.fanout("parley", [server.http_url], 1)  # warm, like parley_quiet
                run[f"metrics_{setting}"] = self.fanout(
                    "parley", [server.http_url], self.args.members
                )
            finally:
                server.stop()

    def send_to_model(self, url: str, sends: int) -> dict[str, Any]:
        """From a member's ``send`` to the model server having the request."""
        from bench.loadgen import ws_connect
        from tests.support.openai_server import Scenario

        self.fake.set_default(Scenario.normal(["ok"]))

        async def go() -> list[float]:
            client = await ws_connect(
                url, f"/ws/rooms/{self.slug}/", {"Authorization": f"Bearer {self.tokens[0]}"}
            )
            while not client.frames:
                client.changed.clear()
                await client.changed.wait()
            gaps = []
            for i in range(sends):
                before = len(self.fake.requests)
                frame = {"action": "send", "text": f"q{i}", "ask_ai": True}
                sent = time.monotonic()
                client.send(json.dumps(frame).encode())
                record = await self.fake.await_request(before, timeout=30)
                gaps.append(record.received_at - sent)
                # Let the reply finish before the next send (one reply at a time per room).
                while not any(b'"state":"complete"' in p for _, p in client.frames[-3:]):
                    client.changed.clear()
                    await client.changed.wait()
                client.frames.clear()
            assert client.transport is not None
            client.transport.close()
            return gaps

        return {"gaps": asyncio.run(go())}

    def openai_first_chunk(self, url: str, sends: int) -> dict[str, Any]:
        """The OpenAI-compatible API's overhead: from a streamed ``POST
        /v1/chat/completions`` to its first ``chat.completion.chunk`` (the role chunk, sent
        on the reply's ``message`` event) and to its first chunk with text, against a
        WebSocket ``send``'s time to its first ``delta``: the same server, room, member and
        model, alternating (WebSocket first, then the API) so both meet the machine alike."""
        import httpx

        from bench.loadgen import ws_connect
        from tests.support.openai_server import Scenario

        self.fake.set_default(Scenario.normal(["ok", " then", " more"]))
        headers = {"Authorization": f"Bearer {self.tokens[0]}"}

        async def go() -> dict[str, list[float]]:
            member = await ws_connect(url, f"/ws/rooms/{self.slug}/", headers)

            async def until(done: Any) -> float:
                while True:
                    for at, payload in member.frames:
                        if done(json.loads(payload)):
                            return at
                    member.changed.clear()
                    await member.changed.wait()

            await until(lambda e: e.get("type") == "hello")
            found: dict[str, list[float]] = {"ws_delta": [], "api_chunk": [], "api_text": []}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
                for i in range(sends):
                    member.frames.clear()
                    frame = {"action": "send", "text": f"w{i}", "ask_ai": True}
                    sent = time.monotonic()
                    member.send(json.dumps(frame).encode())
                    at = await until(lambda e: e.get("type") == "delta")
                    found["ws_delta"].append(at - sent)
                    await until(lambda e: e.get("state") == "complete")
                    member.frames.clear()
                    body = {
                        "model": f"parley/{self.slug}",
                        "messages": [{"role": "user", "content": f"a{i}"}],
                        "stream": True,
                    }
                    sent = time.monotonic()
                    chunk = text = None
                    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                        async for line in r.aiter_lines():
                            if not line.startswith("data: {"):
                                continue
                            now = time.monotonic()
                            chunk = chunk or now
                            delta = json.loads(line[6:])["choices"][0]["delta"]
                            if text is None and delta.get("content"):
                                text = now
                    assert chunk is not None and text is not None, "no chunk came"
                    found["api_chunk"].append(chunk - sent)
                    found["api_text"].append(text - sent)
                    # Its end reached the member too, before the next WebSocket send.
                    await until(lambda e: e.get("state") == "complete")
            assert member.transport is not None
            member.transport.close()
            return found

        found = asyncio.run(go())
        row: dict[str, Any] = {}
        for key, gaps in found.items():
            row[f"{key}_median_ms"] = round(statistics.median(gaps) * 1000, 1)
            row[f"{key}_p90_ms"] = round(percentile(gaps, 0.9) * 1000, 1)
        row["api_text_over_ws_delta"] = round(
            statistics.median(found["api_text"]) / statistics.median(found["ws_delta"]), 2
        )
        return row

    def idle(self, server: Any, pid: int, members: int) -> dict[str, Any]:
        def sample() -> dict[str, Any]:
            time.sleep(2)  # let the handshake burst settle before sampling (not a sync)
            rss0 = _rss_kb(pid)
            cpu0, t0 = _cpu_seconds(pid), time.monotonic()
            time.sleep(self.args.idle_seconds)  # the measurement window
            cpu = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            return {"rss_kb": rss0, "cpu_percent_of_core": round(cpu * 100, 2)}

        base = _rss_kb(pid)
        plan = {
            "kind": "parley",
            "urls": [server.http_url.replace("http", "http")],
            "members": members,
            "path": f"/ws/rooms/{self.slug}/",
            "tokens": self.tokens[:members],
            "idle": True,
            "concurrency": 100,
        }
        result = loadgen(plan, on_ready=sample)
        result["kb_per_member"] = round((result["rss_kb"] - base) / members, 1)
        result["rss_before_kb"] = base
        return result

    def redis_rows(
        self, run: dict[str, Any], redis_url: str, cluster_url: str, *, cluster_first: bool
    ) -> None:
        """Two processes fanning out to the members over one Redis (``parley_2p``) and over
        a Redis Cluster (``parley_2p_cluster``), one right after the other; which goes first
        alternates when asked, so neither always meets the machine as the other leaves it."""
        rows = [("parley_2p", redis_url), ("parley_2p_cluster", cluster_url)]
        for name, url in reversed(rows) if cluster_first else rows:
            servers = self.parley(2, REDIS_URL=url)
            try:
                run[name] = self.fanout("parley", [s.http_url for s in servers], self.args.members)
            finally:
                for s in servers:
                    s.stop()

    def run(self) -> dict[str, Any]:
        from tests.support.openai_server import FakeOpenAIServer
        from tests.support.redis_cluster import RedisCluster
        from tests.support.redis_server import RedisServer

        args = self.args
        _setup_django(self.db)
        most = max(args.idle_members, args.members_large, args.members_huge, args.members)
        self.slug, self.tokens = _users(most)
        if args.assistants:
            self.assistants_slug = _assistants_room(self.slug, args.assistants)
            self.second_slug = _assistants_room(self.slug, 0)  # its one default assistant
            self.assistant_fakes = [FakeOpenAIServer().start() for _ in range(args.assistants)]
        report: dict[str, Any] = {
            "machine": _machine(),
            "settings": {
                "tokens": args.tokens,
                "tokens_per_second": args.rate,
                "repeat": args.repeat,
            },
            "runs": [],
        }
        with FakeOpenAIServer() as fake:
            self.fake = fake
            model_url = fake.base_url
            redis = RedisServer().start()
            # The same two processes over a Redis Cluster of 3 masters and 3 replicas
            # (REDIS_URL=redis+cluster://...), compared with the one-Redis row run beside it.
            cluster = RedisCluster().start()
            try:
                for rep in range(args.repeat):
                    run: dict[str, Any] = {}
                    if args.metrics_cost or args.metrics_cost_only:
                        self.metrics_rows(run, on_first=rep % 2 == 0)
                    if args.metrics_cost_only:
                        report["runs"].append(run)
                        print(json.dumps({"run": rep, **_summary_line(run)}), flush=True)
                        continue
                    if args.cluster_only:
                        self.redis_rows(run, redis.url, cluster.url, cluster_first=rep % 2 == 1)
                        report["runs"].append(run)
                        print(json.dumps({"run": rep, **_summary_line(run)}), flush=True)
                        continue
                    # -- one process, side by side -- The earlier revision's crowds run
                    # right beside this one's, first on every other repeat, so neither
                    # side always meets the machine as the other leaves it.
                    if self.checkout is not None and rep % 2:
                        self.before_fanout(self.checkout, run)
                    server = self.parley()[0]
                    try:
                        run["parley_quiet"] = self.fanout("parley", [server.http_url], 1)
                        run["parley_1p"] = self.fanout("parley", [server.http_url], args.members)
                        if self.assistant_fakes:
                            self.assistants_rows(server.http_url, run, first=rep % 2 == 0)
                        run["parley_mixed"] = self.fanout(
                            "parley-mixed", [server.http_url], args.members
                        )
                        run["parley_large"] = self.fanout(
                            "parley", [server.http_url], args.members_large
                        )
                        run["parley_huge"] = self.fanout(
                            "parley", [server.http_url], args.members_huge
                        )
                    finally:
                        server.stop()
                    if self.checkout is not None and not rep % 2:
                        self.before_fanout(self.checkout, run)
                    peer = Peer(model_url, None)
                    try:
                        run["socketio_1p"] = self.fanout("socketio", [peer.url], args.members)
                        run["socketio_large"] = self.fanout(
                            "socketio", [peer.url], args.members_large
                        )
                    finally:
                        peer.stop()
                    # -- two processes on Redis --
                    self.redis_rows(run, redis.url, cluster.url, cluster_first=False)
                    peers = [Peer(model_url, redis.url) for _ in range(2)]
                    try:
                        run["socketio_2p"] = self.fanout(
                            "socketio", [p.url for p in peers], args.members
                        )
                    finally:
                        for p in peers:
                            p.stop()
                    # -- send -> model, first send after start, idle members --
                    server = self.parley()[0]
                    try:
                        first = self.send_to_model(server.http_url, 1)["gaps"][0]
                        warm = self.send_to_model(server.http_url, args.sends)["gaps"]
                        run["send_to_model"] = {
                            "first_ms": round(first * 1000, 1),
                            "warm_median_ms": round(statistics.median(warm) * 1000, 1),
                            "warm_p90_ms": round(percentile(warm, 0.9) * 1000, 1),
                        }
                        run["openai_first_chunk"] = self.openai_first_chunk(
                            server.http_url, args.sends
                        )
                    finally:
                        server.stop()
                    server = self.parley()[0]
                    try:
                        assert server.proc is not None
                        run["idle"] = self.idle(server, server.proc.pid, args.idle_members)
                    finally:
                        server.stop()
                    if self.checkout is not None:
                        self.before_rest(self.checkout, run)
                    report["runs"].append(run)
                    print(json.dumps({"run": rep, **_summary_line(run)}), flush=True)
            finally:
                redis.kill()
                cluster.stop()
                for extra in self.assistant_fakes:
                    extra.stop()
        report["summary"] = summarize(report["runs"])
        if self.checkout is not None:
            report["settings"]["before"] = args.before
            checkout_remove(self.checkout)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return report


def _summary_line(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v.get("p99_ms", v) for k, v in run.items() if isinstance(v, dict)}


def _stat(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spread over the repeated runs, and the ratios that matter."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        row = runs[0][key]
        for metric in ("p50_ms", "p99_ms", "lost", "frames_per_member", "handshakes_per_second"):
            if metric in row:
                out[f"{key}.{metric}"] = _stat([r[key][metric] for r in runs])
        if key == "parley_mixed" and "ws" in row:
            for side in ("ws", "sse"):
                out[f"{key}.{side}.p99_ms"] = _stat([r[key][side]["p99_ms"] for r in runs])
    ratios = {}
    if "metrics_on" in runs[0]:
        # Metrics on against off, same crowd, side by side in each run.
        for metric in ("p50_ms", "p99_ms"):
            ratios[f"metrics_on_{metric}_over_metrics_off"] = _stat(
                [r["metrics_on"][metric] / r["metrics_off"][metric] for r in runs]
            )
    if "parley_2p_cluster" in runs[0]:
        # Cluster mode's target: p99 within 1.5x of one Redis, both measured in the same run.
        ratios["parley_2p_cluster_p99_over_parley_2p"] = _stat(
            [r["parley_2p_cluster"]["p99_ms"] / r["parley_2p"]["p99_ms"] for r in runs]
        )
    if "send_to_model" not in runs[0]:  # --metrics-cost-only, --cluster-only
        out["ratios"] = ratios
        return out
    for key in ("first_ms", "warm_median_ms"):
        out[f"send_to_model.{key}"] = _stat([r["send_to_model"][key] for r in runs])
    if "openai_first_chunk" in runs[0]:
        for key in runs[0]["openai_first_chunk"]:
            out[f"openai_first_chunk.{key}"] = _stat([r["openai_first_chunk"][key] for r in runs])
    for key in ("kb_per_member", "cpu_percent_of_core", "handshakes_per_second"):
        out[f"idle.{key}"] = _stat([r["idle"][key] for r in runs])
    for parley, peer in (
        ("parley_1p", "socketio_1p"),
        ("parley_2p", "socketio_2p"),
        ("parley_large", "socketio_large"),
    ):
        values = [r[peer]["p99_ms"] / r[parley]["p99_ms"] for r in runs if r[parley]["p99_ms"]]
        ratios[f"{peer}_p99_over_{parley}"] = _stat(values)
    if "parley_assistants" in runs[0]:
        # Several assistants in a room against the one-assistant room, same crowd.
        ratios["parley_assistants_p99_over_parley_1p"] = _stat(
            [r["parley_assistants"]["p99_ms"] / r["parley_1p"]["p99_ms"] for r in runs]
        )
        ratios["parley_assistants_p99_over_parley_second_room"] = _stat(
            [r["parley_assistants"]["p99_ms"] / r["parley_second_room"]["p99_ms"] for r in runs]
        )
    if "before_1p" in runs[0]:
        for before, after in (
            ("before_quiet", "parley_quiet"),
            ("before_1p", "parley_1p"),
            ("before_mixed", "parley_mixed"),
            ("before_large", "parley_large"),
        ):
            ratios[f"{before}_p99_over_{after}"] = _stat(
                [r[before]["p99_ms"] / r[after]["p99_ms"] for r in runs]
            )
            out[f"{before}.p99_ms"] = _stat([r[before]["p99_ms"] for r in runs])
            out[f"{before}.p50_ms"] = _stat([r[before]["p50_ms"] for r in runs])
            out[f"{before}.frames_per_member"] = _stat(
                [r[before]["frames_per_member"] for r in runs]
            )
        for key in ("first_ms", "warm_median_ms"):
            out[f"before_send_to_model.{key}"] = _stat(
                [r["before_send_to_model"][key] for r in runs]
            )
        for key in ("kb_per_member", "cpu_percent_of_core", "handshakes_per_second"):
            out[f"before_idle.{key}"] = _stat([r["before_idle"][key] for r in runs])
    values = [
        r["parley_mixed"]["sse"]["p99_ms"] / r["parley_mixed"]["ws"]["p99_ms"]
        for r in runs
        if "sse" in r["parley_mixed"]
    ]
    if values:
        ratios["sse_p99_over_ws_p99"] = _stat(values)
    out["ratios"] = ratios
    return out


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "versions": {
            name: version(name)
            for name in (
                "django",
                "channels",
                "channels-redis",
                "daphne",
                "python-socketio",
                "uvicorn",
                "redis",
            )
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (CI)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--members-large", type=int, default=500)
    parser.add_argument("--members-huge", type=int, default=1000)
    parser.add_argument("--idle-members", type=int, default=10000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second")
    parser.add_argument("--sends", type=int, default=20)
    parser.add_argument(
        "--before", metavar="REV", help="also measure this earlier revision of Parley"
    )
    parser.add_argument("--before-idle-members", type=int, default=1000)
    parser.add_argument(
        "--assistants",
        type=int,
        default=0,
        metavar="N",
        help="also fan out in a room of N assistants, each on its own model server",
    )
    parser.add_argument(
        "--metrics-cost",
        action="store_true",
        help="also fan out to the 200 members with metrics on and off, side by side",
    )
    parser.add_argument(
        "--metrics-cost-only", action="store_true", help="only the metrics on/off rows"
    )
    parser.add_argument(
        "--cluster-only",
        action="store_true",
        help="only the two-process rows, on one Redis and on a Redis Cluster, side by side",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.members, args.members_large, args.members_huge = 1, 20, 50, 100
        args.idle_members, args.idle_seconds, args.tokens, args.sends = 200, 2.0, 40, 5
    report = Bench(args).run()
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
