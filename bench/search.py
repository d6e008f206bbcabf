"""Search in a room of 100,000 messages on PostgreSQL, through the real HTTP endpoint.

    .venv/bin/python -m bench.search [--messages 100000] [--queries 300] [--quick]
                                     [--database-url postgres://postgres@127.0.0.1:5432/parley_bench_search]
                                     [--out bench/search.json]

It makes a database of its own (dropped and made again on each run, dropped at the end),
migrates it, and fills one room with ``--messages`` messages in a few seconds
(``bulk_create``): sentences of 4 to 40 words drawn from a vocabulary whose word
frequencies fall off as in real text (Zipf), with a few code identifiers and names mixed
in. A real daphne serves Parley on loopback; a member then asks
``GET /api/rooms/<slug>/search`` ``--queries`` times, a mix of what people type (a common
word, a word of middling frequency, a rare word, two words, a quoted phrase, a word
without another, a word that is nowhere, and the next page of a common word), one request
at a time, and the wall-clock time of each answer is kept. The target (issue 19): p99 under
100 ms. JSON out (stdout, and ``--out``); also the planner's plan of one query of each kind.

Bounded in size and time (a minute or two at 100,000); loopback only. The machine is
shared: a run's rows compare with each other, not with another run's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/parley_bench_search"
SEED = 19
VOCABULARY = 6000  # distinct words; word k's frequency is proportional to 1 / k
WARMUP = 20  # requests before the timed ones (connections, caches, the planner's stats)
BATCH = 5000  # rows per bulk_create

COMMON_WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have "
    "this from or had by not word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them write "
    "would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been now"
).split()


def _words(rng: random.Random) -> list[str]:
    """The vocabulary, most frequent first: common English words, then made-up words
    (syllables), some identifiers and names."""
    syllables = (
        "ka lo mi ne ru ta vo shi den par ley chan nel gram sto rix ven tal mor quen".split()
    )
    made: set[str] = set()
    while len(made) < VOCABULARY - len(COMMON_WORDS) - 200:
        made.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    idents = [
        f"{rng.choice(syllables)}_{rng.choice(syllables)}{rng.randint(1, 99)}" for _ in range(150)
    ]
    names = [f"@{rng.choice(syllables)}{rng.choice(syllables)}" for _ in range(50)]
    rest = sorted(made) + idents + names
    rng.shuffle(rest)
    return list(COMMON_WORDS) + rest


def _sentences(rng: random.Random, words: list[str], count: int) -> list[str]:
    weights = [1 / (k + 1) for k in range(len(words))]
    cumulative = list(itertools.accumulate(weights))
    out = []
    for _ in range(count):
        n = rng.randint(4, 40)
        chosen = rng.choices(words, cum_weights=cumulative, k=n)
        text = " ".join(chosen)
        out.append(text[0].upper() + text[1:] + rng.choice([".", ".", "?", "!"]))
    return out


def _database(url: str) -> None:
    """Drop and create the database named in ``url`` (connected to ``postgres``)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _drop(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


def _fill(
    url: str, messages: int, rng: random.Random
) -> tuple[str, str, list[str], dict[str, Any]]:
    os.environ["DATABASE_URL"] = url
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from accounts.services import api_token_create
    from chat.models import Membership, Message, Role
    from chat.services import room_create

    call_command("migrate", verbosity=0)
    call_command("collectstatic", "--noinput", verbosity=0)
    users = get_user_model().objects
    reader = users.create_user(username="reader", password="bench-pass-123")
    writers = [users.create_user(username=f"writer{i}", password="x-bench-123") for i in range(8)]
    room = room_create(owner=reader, name="Searched", assistant="mention")
    for writer in writers:
        Membership.objects.create(room=room, user=writer)
    words = _words(rng)
    texts = _sentences(rng, words, messages)
    started = time.perf_counter()
    for start in range(0, messages, BATCH):
        Message.objects.bulk_create(
            [
                Message(room=room, role=Role.USER, author=rng.choice(writers), text=text)
                for text in texts[start : start + BATCH]
            ]
        )
    filled = time.perf_counter() - started
    with connection.cursor() as cursor:
        # As autovacuum leaves a table after a burst of inserts: the GIN index's pending
        # list merged (until then every lookup reads it through, and the planner, which
        # counts it, walks the room instead) and the statistics fresh.
        cursor.execute("VACUUM ANALYZE chat_message")
        cursor.execute("SELECT pg_size_pretty(pg_relation_size('message_text_search'))")
        index_size = cursor.fetchone()[0]
    fill = {"messages": messages, "fill_seconds": round(filled, 1), "gin_index_size": index_size}
    return room.slug, api_token_create(user=reader)[1], texts, fill


def _queries(rng: random.Random, texts: list[str], n: int) -> list[tuple[str, str]]:
    """(kind, q) pairs, the kinds in turn."""
    from collections import Counter

    counts = Counter(w.strip(".?!").lower() for t in texts[:20000] for w in t.split())
    ranked = [w for w, _ in counts.most_common() if w.isidentifier() or w.startswith("@")]
    common, middle, rare = ranked[:30], ranked[200:800], ranked[-400:]
    kinds = {
        "common word": lambda: rng.choice(common),
        "middling word": lambda: rng.choice(middle),
        "rare word": lambda: rng.choice(rare),
        "two words": lambda: f"{rng.choice(middle)} {rng.choice(middle)}",
        "phrase": lambda: '"' + " ".join(rng.choice(texts).split()[1:3]).strip(".?!") + '"',
        "word without another": lambda: f"{rng.choice(middle)} -{rng.choice(common)}",
        "nowhere": lambda: f"zzq{rng.randint(0, 10**6)}",
        "common word, page 2": lambda: rng.choice(common),
    }
    names = list(kinds)
    return [(names[i % len(names)], kinds[names[i % len(names)]]()) for i in range(n)]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)


def run(url: str, messages: int, queries: int) -> dict[str, Any]:
    import httpx

    from tests.support.daphne import DaphneServer

    rng = random.Random(SEED)
    _database(url)
    try:
        slug, token, texts, fill = _fill(url, messages, rng)
        plan = _plans(slug)
        env = {
            "DATABASE_URL": url,
            "VOICE_PRELOAD": "0",
            "LOG_LEVEL": "INFO",  # daphne says it listens at INFO
            # No reply is asked (a mention room): no model to load at start-up.
            "LLM_BACKEND": "openai",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "OPENAI_API_KEY": "unused",
        }
        # Parley as configured (a connection pool per process), and beside it the same
        # Parley with DATABASE_POOL=0 (a new connection per HTTP request under ASGI), asked
        # the same searches in turn, so the pool's share is a ratio within this run.
        server = DaphneServer(env).start(timeout=120)
        unpooled = DaphneServer({**env, "DATABASE_POOL": "0"}).start(timeout=120)
        try:
            from django.conf import settings

            from chat.models import Room
            from chat.search import message_search

            room = Room.objects.get(slug=slug)
            page_size = settings.PARLEY_SEARCH_PAGE
            timings: dict[str, list[float]] = {}
            hits: dict[str, list[int]] = {}
            floor: list[float] = []
            in_process: list[float] = []
            without_pool: list[float] = []
            without_pool_floor: list[float] = []
            headers = {"Authorization": f"Bearer {token}"}
            path = f"/api/rooms/{slug}/search"

            def timed(http: httpx.Client, url: str, params: dict[str, str]) -> float:
                started = time.perf_counter()
                r = http.get(url, params=params)
                elapsed = (time.perf_counter() - started) * 1000
                r.raise_for_status()
                return elapsed

            with (
                httpx.Client(base_url=server.http_url, headers=headers, timeout=30) as http,
                httpx.Client(base_url=unpooled.http_url, headers=headers, timeout=30) as other,
            ):
                for _kind, q in _queries(rng, texts, WARMUP):
                    http.get(path, params={"q": q}).raise_for_status()
                    other.get(path, params={"q": q}).raise_for_status()
                for i, (kind, q) in enumerate(_queries(rng, texts, queries)):
                    params: dict[str, str] = {"q": q}
                    if kind.endswith("page 2"):
                        first = http.get(path, params=params).json()["results"]
                        if first:
                            params["before"] = first[-1]["message"]["id"]
                    # Which server goes first alternates.
                    if i % 2:
                        without_pool.append(timed(other, path, params))
                        without_pool_floor.append(timed(other, f"/api/rooms/{slug}", {}))
                    started = time.perf_counter()
                    r = http.get(path, params=params)
                    elapsed = (time.perf_counter() - started) * 1000
                    r.raise_for_status()
                    timings.setdefault(kind, []).append(elapsed)
                    hits.setdefault(kind, []).append(len(r.json()["results"]))
                    # The floor: the same sign-in and room check, no search.
                    floor.append(timed(http, f"/api/rooms/{slug}", {}))
                    if not i % 2:
                        without_pool.append(timed(other, path, params))
                        without_pool_floor.append(timed(other, f"/api/rooms/{slug}", {}))
                    # The search alone, in this process: the database's share.
                    started = time.perf_counter()
                    message_search(
                        room=room,
                        q=params["q"],
                        before=int(params["before"]) if "before" in params else None,
                        limit=page_size,
                    )
                    in_process.append((time.perf_counter() - started) * 1000)
        finally:
            server.stop()
            unpooled.stop()
    finally:
        _drop(url)
    every = [t for ts in timings.values() for t in ts]
    if not every:
        raise SystemExit("no query was timed")
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "database": "postgresql",
        **fill,
        "queries": len(every),
        "p50_ms": _pct(every, 0.50),
        "p99_ms": _pct(every, 0.99),
        "max_ms": round(max(every), 1),
        "mean_ms": round(statistics.fmean(every), 1),
        "target_p99_ms": 100,
        # GET /api/rooms/<slug> between the searches: what any request costs here (token,
        # room, membership, the answer), to read the search's own share against.
        "floor_p50_ms": _pct(floor, 0.50),
        "floor_p99_ms": _pct(floor, 0.99),
        # The same searches as function calls in the bench's process (the queries and the
        # headlines, no HTTP).
        "in_process_p50_ms": _pct(in_process, 0.50),
        "in_process_p99_ms": _pct(in_process, 0.99),
        # The same searches and floors on the daphne without the connection pool.
        "without_pool": {
            "p50_ms": _pct(without_pool, 0.50),
            "p99_ms": _pct(without_pool, 0.99),
            "floor_p50_ms": _pct(without_pool_floor, 0.50),
            "floor_p99_ms": _pct(without_pool_floor, 0.99),
        },
        "without_pool_p99_over_pool_p99": round(
            _pct(without_pool, 0.99) / max(_pct(every, 0.99), 0.1), 2
        ),
        "kinds": {
            kind: {
                "queries": len(ts),
                "p50_ms": _pct(ts, 0.50),
                "p99_ms": _pct(ts, 0.99),
                "mean_hits": round(statistics.fmean(hits[kind]), 1),
            }
            for kind, ts in timings.items()
        },
        "plans": plan,
    }


def _plans(slug: str) -> dict[str, str]:
    """How PostgreSQL answers a common and a rare word (the search's own query)."""
    from chat.models import Message, Room
    from chat.search import stored_vector, text_query

    room = Room.objects.get(slug=slug)
    out = {}
    for kind, q in (("common word", "the"), ("middling word", "parley"), ("rare word", "zzq1")):
        qs = (
            Message.objects.filter(room=room)
            .annotate(found=stored_vector())
            .filter(found=text_query(q))
            .order_by("-id")[:21]
        )
        out[kind] = qs.explain(analyze=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="10,000 messages, 80 queries")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_SEARCH_DATABASE_URL", DEFAULT_DB)
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.messages, args.queries = 10_000, 80
    result = run(args.database_url, args.messages, args.queries)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
