"""The tables of docs/benchmarks.md, from a ``make bench`` report.

    .venv/bin/python -m bench.table bench/results.json

Each cell is the median over the repeated runs, with the spread (min-max) beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def cell(summary: dict[str, Any], key: str, unit: str = "") -> str:
    stat = summary.get(key)
    if stat is None:
        return "-"
    if stat["min"] == stat["max"]:
        return f"{stat['median']:g}{unit}"
    return f"{stat['median']:g}{unit} ({stat['min']:g}-{stat['max']:g})"


def ratio(summary: dict[str, Any], key: str) -> str:
    stat = summary["ratios"].get(key)
    if stat is None:
        return "-"
    return f"{stat['median']:.2f}x ({stat['min']:.2f}-{stat['max']:.2f})"


def tables(report: dict[str, Any]) -> str:
    s = report["summary"]
    settings = report["settings"]
    lines = [
        f"{settings['tokens']} tokens at {settings['tokens_per_second']:g} tokens/s, "
        f"{settings['repeat']} runs; median (min-max).",
        "",
        "| scenario | server | p50 | p99 | lost | frames per member | handshakes per second |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    run = report["runs"][0]
    before = f"Parley before ({settings.get('before', '-')})"
    rows = [
        ("parley_quiet", "1 process", "Parley"),
        ("parley_1p", "1 process", "Parley"),
        ("socketio_1p", "1 process", "python-socketio"),
        ("before_1p", "1 process", before),
        ("parley_second_room", "1 process, a second room (its 1 assistant)", "Parley"),
        ("parley_assistants", "1 process, a second room of 3 assistants", "Parley"),
        ("parley_mixed", "1 process, half of them SSE", "Parley"),
        ("parley_2p", "2 processes on Redis", "Parley"),
        ("socketio_2p", "2 processes on Redis", "python-socketio"),
        ("parley_large", "1 process", "Parley"),
        ("socketio_large", "1 process", "python-socketio"),
        ("before_large", "1 process", before),
        ("parley_huge", "1 process", "Parley"),
        ("metrics_on", "1 process, metrics on", "Parley"),
        ("metrics_off", "1 process, metrics off", "Parley"),
    ]
    for key, where, server in rows:
        if f"{key}.p99_ms" not in s:
            continue
        members = run[key].get("members", 0)
        who = "1 member" if members == 1 else f"{members:,} members"
        lines.append(
            f"| {who}, {where} | {server} | {cell(s, key + '.p50_ms', ' ms')} | "
            f"{cell(s, key + '.p99_ms', ' ms')} | {cell(s, key + '.lost')} | "
            f"{cell(s, key + '.frames_per_member')} | "
            f"{cell(s, key + '.handshakes_per_second')} |"
        )
    if "send_to_model.warm_median_ms" not in s:  # --metrics-cost-only
        return _ratios(lines, s)
    lines += [
        "",
        f"Mixed room, p99: WebSocket {cell(s, 'parley_mixed.ws.p99_ms', ' ms')}, "
        f"SSE {cell(s, 'parley_mixed.sse.p99_ms', ' ms')}.",
        "",
        "| figure | Parley | Parley before |",
        "|---|---:|---:|",
        f"| send -> model has the request, warm median | "
        f"{cell(s, 'send_to_model.warm_median_ms', ' ms')} | "
        f"{cell(s, 'before_send_to_model.warm_median_ms', ' ms')} |",
        f"| send -> model, first send after start | {cell(s, 'send_to_model.first_ms', ' ms')} | "
        f"{cell(s, 'before_send_to_model.first_ms', ' ms')} |",
        f"| idle members: KB each | {cell(s, 'idle.kb_per_member')} | "
        f"{cell(s, 'before_idle.kb_per_member')} |",
        f"| idle members: % of a core | {cell(s, 'idle.cpu_percent_of_core')} | "
        f"{cell(s, 'before_idle.cpu_percent_of_core')} |",
        f"| idle members: handshakes per second into the room | "
        f"{cell(s, 'idle.handshakes_per_second')} | "
        f"{cell(s, 'before_idle.handshakes_per_second')} |",
    ]
    return _ratios(lines, s)


def _ratios(lines: list[str], s: dict[str, Any]) -> str:
    lines += ["", "| ratio | median (min-max) |", "|---|---:|"]
    for key in sorted(s["ratios"]):
        lines.append(f"| {key} | {ratio(s, key)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
    sys.stdout.write(tables(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
