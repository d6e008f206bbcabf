"""This revision against an earlier one, interleaved: one command, JSON out.

    .venv/bin/python -m bench.ab --before 9f45ac2 --pairs 6 --out bench/ab.json

``make bench --before`` measures the earlier revision once per repeat, after this one's
whole sequence (peers, two processes, 10,000 idle members), so the machine is in another
state for each side. Here each pair starts a fresh daphne of each revision in turn (the
order alternating from pair to pair), warms it with a quiet room, then fans the same
stream out to ``--members`` members: the two sides meet the same machine, and the
medians over the pairs compare like with like.

``--openai`` measures the HTTP side instead, the same way: the OpenAI-compatible API's
first chunk against a WebSocket send's first delta (``Bench.openai_first_chunk``), and
the round trip of two plain requests, ``GET /healthz`` (an async view that reads
nothing: what any HTTP request costs) and ``GET /v1/models`` (a bearer token and one
read), medians of ``--sends``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import Bench, _setup_django, _users, checkout_remove  # noqa: E402

FANOUT_METRICS = ("p50_ms", "p99_ms", "frames_per_member", "lost")
OPENAI_METRICS = (
    "api_text_median_ms",
    "healthz_median_ms",
    "models_median_ms",
    "ws_delta_median_ms",
    "api_text_over_ws_delta",
)


def _plain_requests(url: str, token: str, sends: int) -> dict[str, float]:
    """Medians of ``GET /healthz`` and ``GET /v1/models`` on one kept-alive connection,
    taking turns, after a few of each to warm the connection."""
    import httpx

    async def go() -> dict[str, list[float]]:
        headers = {"Authorization": f"Bearer {token}"}
        found: dict[str, list[float]] = {"healthz": [], "models": []}
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for i in range(sends + 5):
                for name, path, given in (
                    ("healthz", "/healthz", {}),
                    ("models", "/v1/models", headers),
                ):
                    sent = time.monotonic()
                    answer = await http.get(path, headers=given)
                    took = time.monotonic() - sent
                    assert answer.status_code == 200, (path, answer.status_code)
                    if i >= 5:
                        found[name].append(took)
        return found

    found = asyncio.run(go())
    return {
        f"{name}_median_ms": round(statistics.median(gaps) * 1000, 2)
        for name, gaps in found.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, metavar="REV")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument(
        "--room-members", type=int, default=0, help="the room's size (default: --members)"
    )
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "ab.json")
    parser.add_argument(
        "--openai", action="store_true", help="the HTTP side: /v1/ first chunk, plain requests"
    )
    parser.add_argument("--sends", type=int, default=20, help="--openai: requests of each kind")
    args = parser.parse_args()
    bench = Bench(
        argparse.Namespace(before=args.before, tokens=args.tokens, rate=args.rate, quick=False)
    )
    _setup_django(bench.db)
    bench.slug, bench.tokens = _users(max(args.members, args.room_members))
    from tests.support.openai_server import FakeOpenAIServer

    assert bench.checkout is not None
    metrics = OPENAI_METRICS if args.openai else FANOUT_METRICS
    sides: dict[str, Path] = {"now": ROOT, "before": bench.checkout}
    runs: list[dict[str, Any]] = []
    try:
        with FakeOpenAIServer() as fake:
            bench.fake = fake
            for pair in range(args.pairs):
                order = ["now", "before"] if pair % 2 == 0 else ["before", "now"]
                for side in order:
                    server = bench.parley(cwd=sides[side])[0]
                    try:
                        if args.openai:
                            url = server.http_url
                            result = bench.openai_first_chunk(url, args.sends)
                            result.update(_plain_requests(url, bench.tokens[0], args.sends))
                        else:
                            bench.fanout("parley", [server.http_url], 1)  # warm-up
                            result = bench.fanout("parley", [server.http_url], args.members)
                    finally:
                        server.stop()
                    row = {"pair": pair, "side": side, **result}
                    runs.append(row)
                    print(json.dumps({k: row[k] for k in ("pair", "side", *metrics[:2])}))
    finally:
        checkout_remove(bench.checkout)
    summary: dict[str, Any] = {}
    for side in sides:
        for metric in metrics:
            values = [r[metric] for r in runs if r["side"] == side]
            summary[f"{side}.{metric}"] = {
                "median": round(statistics.median(values), 2),
                "min": min(values),
                "max": max(values),
            }
    for metric in metrics[:3] if args.openai else ("p50_ms", "p99_ms"):
        summary[f"before_over_now.{metric}"] = round(
            summary[f"before.{metric}"]["median"] / summary[f"now.{metric}"]["median"], 2
        )
    report = {
        "settings": {**vars(args), "out": str(args.out)},
        "runs": runs,
        "summary": summary,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
