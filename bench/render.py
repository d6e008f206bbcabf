"""Rendering a streamed reply in the room page (issue 19), before and after.

    .venv/bin/python -m bench.render [--tokens 2000] [--rate 50] [--out bench/render.json]

Serves Parley with a real daphne on loopback (SQLite, the in-memory layer) and the
loopback fake model (tests/support/openai_server.py), which streams a Markdown reply of
``--tokens`` pieces (paragraphs, lists, a table, code fences, inline math) at ``--rate``
pieces a second. Headless Chromium (Debian's, /usr/bin/chromium) logs in, opens the room,
asks, and watches the reply stream to its end, once per renderer:

- **after**: the page as it is: chat/js/markdown.js renders only the last top-level
  block of a message on each frame (markdown-it, DOMPurify, highlight.js, KaTeX).
- **before**: the same page with markdown.js swapped (a Playwright route) for the
  hand-written renderer it replaced (bench/render_before.js: that file as of 7ceb306,
  with the same timing hooks), which rendered the whole text into innerHTML every frame.

Both are timed by the page's own hooks: each render is a ``performance.measure``, summed
in ``window.__parleyRenderStats`` (renders, total and max ms). The whole page's
scripting time over the stream is Chromium's ``ScriptDuration`` (DevTools ``Performance``
domain). JSON out (stdout, and ``--out``). One run is a few minutes; the machine is
shared, so compare the rows of one run with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "render-bench-pass-123"  # noqa: S105 (a throwaway user in a throwaway database)
BEFORE_JS = Path(__file__).with_name("render_before.js")
# A 2,000-token reply at 50 tokens/s streams for 40 s; this bounds the wait for its end.
STREAM_TIMEOUT_MS = 180_000

WORDS = (
    "the reply streams into the room while every member watches it grow and the page "
    "renders each new piece as it arrives so the text must stay cheap to draw even when "
    "it is long and full of code tables lists and formulas"
).split()


def reply_pieces(tokens: int, seed: int = 19) -> list[str]:
    """``tokens`` pieces of a Markdown reply, the way a model streams them (a word or a
    bit of syntax each): paragraphs, a heading, lists, a table, code, inline math."""
    rng = random.Random(seed)
    pieces: list[str] = []

    def words(n: int) -> None:
        for _ in range(n):
            pieces.append(rng.choice(WORDS) + " ")

    section = 0
    while len(pieces) < tokens:
        section += 1
        pieces += ["## ", f"Part {section}", "\n\n"]
        words(40)
        pieces += ["with $x_", str(section), "^2$ ", "inside", ".\n\n"]
        for item in range(4):
            pieces += ["- ", f"**item {item}** "]
            words(6)
            pieces.append("\n")
        pieces += ["\n| name | value | note |\n", "| --- | ---: | --- |\n"]
        for row in range(4):
            pieces += ["| ", f"row{row} ", "| ", str(row * section), " | "]
            words(2)
            pieces.append("|\n")
        pieces += ["\n```python\n"]
        for line in range(8):
            pieces += ["def ", f"step_{line}", "(x):\n", "    return ", f"x * {line}", "\n"]
        pieces += ["```\n\n"]
        words(30)
        pieces.append("\n\n")
    return pieces[:tokens]


def _setup(db: Path) -> tuple[str, str]:
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from chat.services import room_create

    call_command("migrate", verbosity=0)
    call_command("collectstatic", "--noinput", verbosity=0)  # daphne needs the manifest
    owner = get_user_model().objects.create_user(username="reader", password=PASSWORD)
    # A room per renderer: each page opens on an empty conversation.
    return (
        room_create(owner=owner, name="Render bench before").slug,
        room_create(owner=owner, name="Render bench after").slug,
    )


# Chromium's own totals for the page (DevTools Performance.getMetrics): scripting, style
# and layout, whatever caused them.
PAGE_METRICS = {
    "script": "ScriptDuration",
    "style": "RecalcStyleDuration",
    "layout": "LayoutDuration",
}
SAMPLE = "() => [performance.now(), __parleyRenderStats.renders, __parleyRenderStats.totalMs]"
SAMPLE_EVERY_S = 2.0


def _quarters(samples: list[list[float]]) -> list[float]:
    """Mean ms per render in each quarter of the samples (taken at an even pace)."""
    if len(samples) < 5:
        return []
    n = len(samples) - 1
    bounds = [samples[round(n * q / 4)] for q in range(5)]
    out = []
    for first, last in zip(bounds, bounds[1:], strict=False):
        renders = last[1] - first[1]
        out.append(round((last[2] - first[2]) / renders, 3) if renders else 0.0)
    return out


def _measure(browser: Any, base: str, slug: str, swap_before: bool) -> dict[str, Any]:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    if swap_before:
        body = BEFORE_JS.read_text()
        page.route(
            re.compile(r"/static/chat/js/markdown\.[0-9a-f]{12}\.js$"),
            lambda route: route.fulfill(body=body, content_type="text/javascript"),
        )
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill("reader")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/")
    page.goto(f"{base}/rooms/{slug}/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")

    def page_seconds() -> dict[str, float]:
        metrics = cdp.send("Performance.getMetrics")["metrics"]
        return {m["name"]: float(m["value"]) for m in metrics if m["name"] in PAGE_METRICS.values()}

    page.evaluate("() => window.__parleyRenderStats.reset()")
    at_start = page_seconds()
    started = time.monotonic()
    box = page.get_by_label("Message", exact=True)
    box.fill("Write it out")
    box.press("Enter")
    reply = page.locator("article.msg--assistant")
    expect(reply).to_have_count(1)
    # The page's totals every few seconds, to see how a render's cost moves as the reply
    # grows (the sleep paces the sampling; the stream's end is waited for as an event).
    samples = []
    while reply.get_attribute("data-status") != "complete":
        if time.monotonic() - started > STREAM_TIMEOUT_MS / 1000:
            raise RuntimeError("the reply did not complete")
        samples.append(page.evaluate(SAMPLE))
        time.sleep(SAMPLE_EVERY_S)
    expect(reply).to_have_attribute("data-status", "complete")
    wall = time.monotonic() - started
    at_end = page_seconds()
    samples.append(page.evaluate(SAMPLE))
    stats = page.evaluate("() => ({ ...window.__parleyRenderStats })")
    chars = page.evaluate(
        "(id) => window.parley.store.get(id).text.length", reply.get_attribute("data-id")
    )
    context.close()
    return {
        "renders": stats["renders"],
        "render_total_ms": round(stats["totalMs"], 1),
        "render_mean_ms": round(stats["totalMs"] / max(1, stats["renders"]), 3),
        "render_max_ms": round(stats["maxMs"], 2),
        "blocks_rendered": stats["blocksRendered"],
        "full_renders": stats["fullRenders"],
        # ms per render over each quarter of the stream (by time): flat, or growing with the text
        "render_mean_ms_by_quarter": _quarters(samples),
        **{
            f"page_{name}_s": round(at_end[metric] - at_start[metric], 2)
            for name, metric in PAGE_METRICS.items()
        },
        "stream_wall_s": round(wall, 1),
        "reply_chars": chars,
    }


def main(tokens: int, rate: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from tests.support.daphne import DaphneServer
    from tests.support.openai_server import FakeOpenAIServer, Scenario

    db = Path(tempfile.mkdtemp(prefix="parley-render-")) / "render.sqlite3"
    before_room, after_room = _setup(db)
    pieces = reply_pieces(tokens)
    llm = FakeOpenAIServer(Scenario.slow(pieces, delay=1 / rate)).start()
    server = DaphneServer(
        {
            "DATABASE_URL": f"sqlite:///{db}",
            "LLM_BACKEND": "openai",
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_API_KEY": "bench-key",
            "LLM_MODEL": "fake-model",
            "VOICE_PRELOAD": "0",
        }
    ).start()
    rows: dict[str, Any] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            # before first, then after: a fresh page and room each.
            rows["before"] = _measure(browser, server.http_url, before_room, True)
            rows["after"] = _measure(browser, server.http_url, after_room, False)
            browser.close()
    finally:
        server.stop()
        llm.stop()
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "tokens": tokens,
        "tokens_per_s": rate,
        "before": rows["before"],
        "after": rows["after"],
        "ratio_total": round(
            rows["before"]["render_total_ms"] / max(0.001, rows["after"]["render_total_ms"]), 2
        ),
        "ratio_max": round(
            rows["before"]["render_max_ms"] / max(0.001, rows["after"]["render_max_ms"]), 2
        ),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens a second")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = main(args.tokens, args.rate)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
