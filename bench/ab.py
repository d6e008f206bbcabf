"""This revision against an earlier one, interleaved: one command, JSON out.

    .venv/bin/python -m bench.ab --before 9f45ac2 --pairs 6 --out bench/ab.json

``make bench --before`` measures the earlier revision once per repeat, after this one's
whole sequence (peers, two processes, 10,000 idle members), so the machine is in another
state for each side. Here each pair starts a fresh daphne of each revision in turn (the
order alternating from pair to pair), warms it with a quiet room, then fans the same
stream out to ``--members`` members: the two sides meet the same machine, and the
medians over the pairs compare like with like.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import Bench, _setup_django, _users, checkout_remove  # noqa: E402


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
    args = parser.parse_args()
    bench = Bench(
        argparse.Namespace(before=args.before, tokens=args.tokens, rate=args.rate, quick=False)
    )
    _setup_django(bench.db)
    bench.slug, bench.tokens = _users(max(args.members, args.room_members))
    from tests.support.openai_server import FakeOpenAIServer

    assert bench.checkout is not None
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
                        bench.fanout("parley", [server.http_url], 1)  # warm-up
                        result = bench.fanout("parley", [server.http_url], args.members)
                    finally:
                        server.stop()
                    row = {"pair": pair, "side": side, **result}
                    runs.append(row)
                    print(json.dumps({k: row[k] for k in ("pair", "side", "p50_ms", "p99_ms")}))
    finally:
        checkout_remove(bench.checkout)
    summary: dict[str, Any] = {}
    for side in sides:
        for metric in ("p50_ms", "p99_ms", "frames_per_member", "lost"):
            values = [r[metric] for r in runs if r["side"] == side]
            summary[f"{side}.{metric}"] = {
                "median": round(statistics.median(values), 2),
                "min": min(values),
                "max": max(values),
            }
    for metric in ("p50_ms", "p99_ms"):
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
