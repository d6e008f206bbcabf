"""The bundled model (Gemma 3 270M on llama.cpp), measured as rooms use it (issue 22).

    .venv/bin/python -m bench.model [--quick] [--part ttft|answers|all] [--out FILE]

- **ttft**: time to first token in busy rooms (50 messages of history) against fresh ones
  (one message), the earlier path (``before``: a 4,096-token window sliding by a turn per
  reply, no kept state) side by side with this one (``after``: the local window, history
  restarted only when it fills, each room's state kept while another room has the
  model). Each busy room is answered once first (timed apart, ``cold``). Turns then
  alternate busy room A, a fresh room, busy room B, so the model keeps leaving one
  conversation for another, as in a server with several rooms. The two configurations
  take turns step by step on one model file (two llama.cpp contexts), so the shared,
  noisy machine weighs on both alike. Target: a busy room's median within 2x a fresh
  room's.
- **answers**: 8 everyday questions, each asked after 24 "fun fact about N" exchanges (what
  made the model parrot the room), greedy, before and after, and under the variants in
  ``ANSWER_VARIANTS`` (what each change does on its own); see ``parrots`` for what counts
  as parroting.

The prompt is built as the server builds it (chat/llm/prompt.py, the default system
prompt and context budget), and each reply goes through ``LocalBackend.stream``, the
server's own path. JSON out (stdout, and ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_RATIO = 2.0
# A reply is read up to this many tokens: the first token is what is timed, and the rest
# only makes the room's history; the model stops at its line's end anyway.
READ_TOKENS = 24
QUESTIONS = (
    "Hi, what can you do?",
    "What is the capital of France?",
    "How long should I cook pasta?",
    "Can you suggest a name for a cat?",
    "What's 12 times 12?",
    "Give me a tip for sleeping better.",
    "How do you say thank you in Spanish?",
    "What should I cook for dinner tonight?",
)
ANSWER_TOKENS = 40

# Each configuration: LocalBackend's arguments beside the model file and threads.
BEFORE = {
    "n_ctx": 4096,
    "max_tokens": 512,
    "reuse": False,
    "state_cache_bytes": 0,
    "repeat_penalty": 1.0,
}
# What one change to this revision's defaults does to the answers.
ANSWER_VARIANTS: dict[str, dict[str, Any]] = {
    "after_window_1024": {"n_ctx": 1024},
    "after_window_2048": {"n_ctx": 2048},
    "after_repeat_penalty_1.3": {"repeat_penalty": 1.3},
}
# Words in a row that, found in an earlier line (the room's, or the prompt's examples),
# make an answer a copy rather than an answer.
COPY_WORDS = 4


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")
    import django

    django.setup()


def _after() -> dict[str, Any]:
    """This revision's defaults (config/settings.py), as get_backend() passes them."""
    from django.conf import settings

    return {
        "n_ctx": settings.LLM_LOCAL_N_CTX,
        "max_tokens": settings.LLM_LOCAL_MAX_TOKENS,
        "reuse": settings.LLM_LOCAL_REUSE,
        "state_cache_bytes": settings.LLM_LOCAL_STATE_CACHE_MB << 20,
        "repeat_penalty": settings.LLM_LOCAL_REPEAT_PENALTY,
    }


def _backend(**config: Any) -> Any:
    from chat.llm.local import BUNDLED_MODEL, LocalBackend

    return LocalBackend(model=BUNDLED_MODEL, n_threads=2, temperature=0.0, **config)


def _messages(turns: list[tuple[str, str, str]]) -> list[Any]:
    """The model's messages for a room's turns (role, author, text), as the server builds
    them (chat/llm/prompt.py, with the configured budget)."""
    from django.conf import settings

    from chat.llm.prompt import DEFAULT_SYSTEM_PROMPT, Turn, build_messages

    return build_messages(
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        turns=[Turn(role, author, text) for role, author, text in turns],
        max_chars=settings.LLM_CONTEXT_CHARS,
        max_messages=settings.LLM_CONTEXT_MESSAGES,
    )


async def _reply(backend: Any, turns: list[tuple[str, str, str]], limit: int) -> dict[str, Any]:
    """One reply: its time to first token, its text (up to ``limit`` tokens), its usage."""
    from chat.llm.base import Usage

    usage = Usage()
    started = time.monotonic()
    first: float | None = None
    text = []
    stream = backend.stream(_messages(turns), usage)
    try:
        async for delta in stream:
            first = first or time.monotonic()
            text.append(delta)
            if (usage.completion_tokens or 0) >= limit:
                break
    finally:
        await stream.aclose()
    return {
        "ttft_ms": round(((first or time.monotonic()) - started) * 1000, 1),
        "text": "".join(text).strip(),
        "prompt_tokens": usage.prompt_tokens,
        "evaluated_tokens": (usage.prompt_tokens or 0) - (usage.cached_tokens or 0),
    }


def _history(count: int, seed: int) -> list[tuple[str, str, str]]:
    """``count`` messages of a busy room: members asking, the assistant answering."""
    people = ("ann", "bob", "cat", "dan")
    turns = []
    for i in range(count // 2):
        n = seed * 100 + i
        turns.append(("user", people[i % 4], f"what do you think about topic {n}?"))
        turns.append(("assistant", "assistant", f"Topic {n} is interesting, tell me more."))
    return turns


async def ttft(rounds: int) -> dict[str, Any]:
    names = ("before", "after")
    backends = {"before": _backend(**BEFORE), "after": _backend(**_after())}
    for backend in backends.values():
        await backend.warm()
    rooms = {name: {"A": _history(50, 1), "B": _history(50, 2)} for name in names}
    seen: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"busy": [], "fresh": [], "cold": []} for name in names
    }
    # The first reply in each busy room reads its history whatever the path (nothing of it
    # is in the model yet): timed apart as "cold", as after a restart; a busy room is one
    # the server has answered in before.
    for name in names:
        for busy in ("A", "B"):
            history = rooms[name][busy]
            history.append(("user", "ann", f"hello room {busy}, anything new?"))
            result = await _reply(backends[name], history, READ_TOKENS)
            history.append(("assistant", "assistant", result["text"]))
            seen[name]["cold"].append(result)
    for r in range(rounds):
        room: str | None
        for step, room in enumerate(("A", None, "B")):
            for name in names if (r + step) % 2 else reversed(names):
                backend = backends[name]
                if room is None:  # a fresh room: one message
                    turns = [("user", "eve", f"hello, is anyone here? ({r})")]
                    seen[name]["fresh"].append(await _reply(backend, turns, READ_TOKENS))
                    continue
                history = rooms[name][room]
                history.append(("user", "ann", f"and what about question {r} in room {room}?"))
                result = await _reply(backend, history, READ_TOKENS)
                history.append(("assistant", "assistant", result["text"]))
                seen[name]["busy"].append(result)
    out: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {}
        for kind in ("busy", "fresh", "cold"):
            times = [x["ttft_ms"] for x in seen[name][kind]]
            row[kind] = {
                "median_ms": round(statistics.median(times), 1),
                "max_ms": max(times),
                "evaluated_tokens_median": statistics.median(
                    x["evaluated_tokens"] for x in seen[name][kind]
                ),
                "prompt_tokens_median": statistics.median(
                    x["prompt_tokens"] for x in seen[name][kind]
                ),
                "ttft_ms": times,
                "evaluated_tokens": [x["evaluated_tokens"] for x in seen[name][kind]],
            }
        row["busy_over_fresh"] = round(row["busy"]["median_ms"] / row["fresh"]["median_ms"], 2)
        out[name] = row
    out["target_busy_over_fresh"] = TARGET_RATIO
    out["met"] = out["after"]["busy_over_fresh"] <= TARGET_RATIO
    return out


def _fun_facts() -> list[tuple[str, str, str]]:
    turns = []
    for n in range(1, 25):
        turns.append(("user", "ann", f"tell me a fun fact about {n}"))
        turns.append(
            ("assistant", "assistant", f"Fun fact: {n} is the number that comes after {n - 1}.")
        )
    return turns


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def parrots(answer: str, question: str, earlier: list[str]) -> bool:
    """Whether ``answer`` parrots rather than answers: it is empty, talks of a fun fact,
    echoes the question whole, or repeats ``COPY_WORDS`` words in a row of an earlier
    line (the room's, or the prompt's examples: their text, without the speaker)."""
    said = _words(answer)
    if not said or "fun fact" in " ".join(said) or said == _words(question):
        return True
    grams = {tuple(said[i : i + COPY_WORDS]) for i in range(len(said) - COPY_WORDS + 1)}
    for line in earlier:
        words = _words(line.partition(": ")[2] if ": " in line[:20] else line)
        if said == words or grams & {tuple(words[i : i + COPY_WORDS]) for i in range(len(words))}:
            return True
    return False


async def answers(questions: tuple[str, ...]) -> dict[str, Any]:
    from chat.llm.local import FEW_SHOT

    history = _fun_facts()
    earlier = [text for _, _, text in history] + FEW_SHOT.splitlines()
    out: dict[str, Any] = {}
    configs = {
        "before": BEFORE,
        "after": _after(),
        **{name: {**_after(), **change} for name, change in ANSWER_VARIANTS.items()},
    }
    for name, config in configs.items():
        backend = _backend(**config)
        rows = []
        for question in questions:
            result = await _reply(backend, [*history, ("user", "bob", question)], ANSWER_TOKENS)
            rows.append(
                {
                    "question": question,
                    "answer": result["text"],
                    "parrots": parrots(result["text"], question, earlier),
                }
            )
        out[name] = {
            "config": {k: v for k, v in config.items() if k != "state_cache_bytes"},
            "parroting": sum(r["parrots"] for r in rows),
            "of": len(rows),
            "answers": rows,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "model.json")
    parser.add_argument("--quick", action="store_true", help="two rounds, two questions (CI)")
    parser.add_argument("--part", choices=("ttft", "answers", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    _setup()
    from importlib.metadata import version

    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "llama_cpp_python": version("llama-cpp-python"),
        }
    }
    if args.part in ("ttft", "all"):
        report["ttft"] = asyncio.run(ttft(2 if args.quick else args.rounds))
    if args.part in ("answers", "all"):
        report["answers"] = asyncio.run(answers(QUESTIONS[:2] if args.quick else QUESTIONS))
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    summary = {k: v for k, v in report.get("ttft", {}).items() if not isinstance(v, dict)}
    for name in ("before", "after"):
        if name in report.get("ttft", {}):
            row = report["ttft"][name]
            summary[name] = {
                "busy_ms": row["busy"]["median_ms"],
                "fresh_ms": row["fresh"]["median_ms"],
                "ratio": row["busy_over_fresh"],
            }
    for name, row in report.get("answers", {}).items():
        summary[f"answers.{name}.parroting"] = f"{row['parroting']}/{row['of']}"
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
