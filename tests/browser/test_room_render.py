"""How the room page renders messages (chat/static/chat/js/markdown.js), in a real browser
on a real daphne: tables, task lists, highlighted code with its copy button, math, copying
a message as Markdown, hostile Markdown that must stay inert, and a streaming reply that
re-renders only its last block.

Helpers and fixtures are the room page's (tests/browser/test_room_page.py); waiting is
Playwright's ``expect`` or ``wait_js``, never a sleep.
"""

from __future__ import annotations

import re

import pytest
from django.templatetags.static import static
from playwright.sync_api import Dialog, Page, expect

from tests.browser import test_room_page
from tests.browser.test_room_page import (
    CSP_RECORDER,
    api_message,
    login,
    open_room,
    reply_id,
    send,
    shot,
    user_in,
    wait_js,
)
from tests.support.openai_server import Scenario

pytestmark = [pytest.mark.django_db(transaction=True)]

# The room page's fixtures: one Chromium per module, a context per user.
browser = test_room_page.browser
contexts = test_room_page.contexts
trio = test_room_page.trio

CODE = (
    'def ship(day):\n    """Ship on a given day."""\n'
    '    return f"shipping on {day}" if day else None'
)
RICH = [
    "Here is the plan:\n\n",
    "| Step | Owner | Days |\n",
    "| :--- | :---: | ---: |\n",
    "| Freeze | ann | 2 |\n",
    "| Docs | bob | 3 |\n\n",
    "- [x] write the tests\n",
    "- [ ] ship\n\n",
    "```python\n",
    CODE + "\n",
    "```\n\n",
    "The area is $\\pi r^2$, and\n\n",
    "$$\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}$$\n",
]


def _clipboard(page: Page) -> str:
    return str(page.evaluate("() => navigator.clipboard.readText()"))


def test_tables_tasks_highlighted_code_math_and_copy(daphne, llm, contexts, trio):
    room, tokens = trio
    llm.set_default(Scenario.slow(RICH, delay=0.02))
    context = contexts()
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    context.add_init_script(CSP_RECORDER)
    ann = login(context, daphne, "ann")
    open_room(ann, daphne, room.slug)

    send(ann, "Plan the launch, with the numbers")
    rid = reply_id(ann)
    reply = ann.locator(f'article[data-id="{rid}"]')
    expect(reply).to_have_attribute("data-status", "complete")
    body = reply.locator(".msg__body")

    # A table, aligned by classes (an inline style would break the CSP).
    table = body.locator("table")
    expect(table.locator("thead th")).to_have_text(["Step", "Owner", "Days"])
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("tbody tr").nth(1).locator("td")).to_have_text(["Docs", "bob", "3"])
    expect(table.locator("tbody td.align-right").first).to_have_text("2")
    # A task list: boxes a reader sees ticked or not, and cannot change.
    boxes = body.locator("li.task-list-item input[type=checkbox]")
    expect(boxes).to_have_count(2)
    expect(boxes.nth(0)).to_be_checked()
    expect(boxes.nth(1)).not_to_be_checked()
    expect(boxes.nth(0)).to_be_disabled()
    # Highlighted code under its language's label.
    pre = body.locator("pre")
    expect(pre).to_have_attribute("data-lang", "python")
    expect(pre.locator("code.hljs.language-python")).to_have_count(1)
    expect(pre.locator(".hljs-keyword").first).to_have_text("def")
    expect(pre.locator(".hljs-string").first).to_contain_text("Ship on a given day.")
    # Math, inline and displayed, drawn by KaTeX.
    expect(body.locator("p .math .katex")).to_have_count(1)
    expect(body.locator(".math--display .katex-display")).to_have_count(1)
    assert "\\pi r^2" in (body.locator("p .math annotation").text_content() or "")
    shot(ann, "room-rendered")

    # The code block's Copy copies exactly the code.
    pre.hover()
    pre.get_by_role("button", name="Copy code").click()
    expect(pre.get_by_role("button", name="Copy code")).to_have_text("Copied")
    assert _clipboard(ann) == CODE
    # The message's Copy copies the reply as the Markdown it was written in.
    reply.get_by_role("button", name="Copy message as Markdown").click()
    expect(reply.get_by_role("button", name="Copy message as Markdown")).to_have_text("Copied")
    stored = api_message(daphne, tokens["ann"], rid)
    assert stored["text"] == "".join(RICH)
    assert _clipboard(ann) == stored["text"]
    # ...and the same for a member's own message.
    mine = ann.locator("article.msg--mine[data-id]")
    mine.get_by_role("button", name="Copy message as Markdown").click()
    expect(mine.get_by_role("button", name="Copy message as Markdown")).to_have_text("Copied")
    assert _clipboard(ann) == "Plan the launch, with the numbers"

    # KaTeX drew all of this without an inline style the policy would refuse.
    assert ann.evaluate("window.__cspViolations") == []


HOSTILE = [
    # Raw HTML, in a paragraph and as a block.
    "<script>window.x = 1</script><img src=x onerror=window.x=2>",
    '<div onmouseover="window.x=3">hover</div>\n\n<iframe src="javascript:window.x=4"></iframe>',
    # javascript: and friends as links, in every spelling markdown-it accepts as a link.
    "[a](javascript:window.x=5) [b](JaVaScRiPt:window.x=6) [c](java\tscript:window.x=7)",
    "<javascript:window.x=8> [d](vbscript:x) [e](data:text/html,<script>window.x=9</script>)",
    '[f](https://ok.example "t" onclick="window.x=10") [ref][r]\n\n[r]: javascript:window.x=11',
    # SVG, inline and in a link.
    "<svg onload=window.x=12><script>window.x=13</script></svg>",
    "[svg](data:image/svg+xml,<svg onload=window.x=14>)",
    # KaTeX macros that would make links, classes, styles or pictures if trusted.
    "$\\href{javascript:window.x=15}{click}$ and $\\url{javascript:window.x=16}$",
    "$\\htmlClass{msg__copy}{x}$ $\\htmlId{messages}{x}$ $\\htmlStyle{position:fixed}{x}$",
    "$\\htmlData{foo=bar}{x}$ $\\includegraphics{https://evil.example/p.png}$",
    "$$\\def\\a{\\a\\a}\\a$$",  # runaway expansion: bounded, an error shown, no hang
    # A fence whose language tries to break out of its attribute.
    '```js" onmouseover="window.x=17\nx\n```',
]

# What may appear inside a rendered message (outside KaTeX's MathML): markdown-it's own
# tags, the copy button, and KaTeX's spans.
ALLOWED_TAGS = (
    "P BR EM STRONG S DEL CODE PRE UL OL LI BLOCKQUOTE H3 H4 H5 H6 HR A TABLE THEAD TBODY "
    "TR TH TD INPUT LABEL BUTTON SPAN DIV"
).split()


def test_hostile_markdown_renders_inert(daphne, llm, contexts, trio):
    room, _ = trio
    llm.set_default(Scenario.slow(["Echo:\n\n", *[h + "\n\n" for h in HOSTILE]], delay=0.02))
    dialogs: list[str] = []
    context = contexts()
    context.add_init_script(CSP_RECORDER)
    ann = login(context, daphne, "ann")

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    ann.on("dialog", on_dialog)
    open_room(ann, daphne, room.slug)
    send(ann, "\n\n".join(HOSTILE))
    rid = reply_id(ann)
    expect(ann.locator(f'article[data-id="{rid}"]')).to_have_attribute("data-status", "complete")
    expect(ann.locator("article.msg--mine[data-id] .katex").first).to_be_visible()

    found = ann.evaluate(
        """(allowed) => {
          const bodies = [...document.querySelectorAll("article.msg[data-id] .msg__body")];
          const tags = new Set(), attrs = new Set(), hrefs = [], classes = new Set();
          for (const body of bodies) for (const el of body.querySelectorAll("*")) {
            if (el.closest("math")) continue;  // KaTeX's MathML, made by KaTeX from TeX
            if (!allowed.includes(el.tagName.toUpperCase())) tags.add(el.tagName);
            for (const a of el.attributes) {
              if (/^on|^src$|^srcdoc$|^formaction$/i.test(a.name)) attrs.add(a.name);
            }
            if (el.tagName === "A") hrefs.push([el.getAttribute("href"), el.target, el.rel]);
            for (const c of el.classList) classes.add(c);
          }
          return { tags: [...tags], attrs: [...attrs], hrefs, classes: [...classes] };
        }""",
        ALLOWED_TAGS,
    )
    assert found["tags"] == []
    assert found["attrs"] == []
    # The only link is the https one, opened safely; the rest stayed text.
    assert found["hrefs"] == [["https://ok.example", "_blank", "noopener noreferrer nofollow"]] * 2
    assert "msg__copy" not in found["classes"]  # \\htmlClass made no class
    assert ann.locator(".msg__body #messages").count() == 0  # \\htmlId made no id
    assert dialogs == []
    assert ann.evaluate("typeof window.x") == "undefined"
    # The page still works, and nothing asked for anything the policy refused.
    expect(ann.locator("#conn")).to_have_attribute("data-state", "open")
    assert ann.evaluate("window.__cspViolations") == []
    shot(ann, "room-hostile-markdown")


def test_the_renderer_refuses_unsafe_markup(daphne, contexts, trio):
    """The same inputs through the module itself (the page's hashed markdown.js)."""
    room, _ = trio
    ann = user_in(daphne, contexts, "ann", room.slug)
    html = ann.evaluate(
        """async ([url, inputs]) => {
          const { renderMarkdown } = await import(url);
          return inputs.map((s) => renderMarkdown(s));
        }""",
        [static("chat/js/markdown.js"), HOSTILE],
    )
    joined = "\n".join(html).lower()
    for tag in ("<script", "<img", "<iframe", "<svg", "<object", "<embed", "<style"):
        assert tag not in joined, tag
    assert not re.search(r"<[^>]*\son[a-z]+=", joined)  # no handler attribute in any tag
    assert re.findall(r'href="([^"]*)"', joined) == ["https://ok.example"]
    # Raw HTML is shown as the text it is.
    assert "&lt;script&gt;window.x = 1&lt;/script&gt;" in html[0]
    assert "&lt;svg onload=window.x=12&gt;" in html[5]
    # KaTeX with trust off shows the untrusted command as an error, not its effect.
    assert "\\href" in html[7]
    assert "\\htmlClass" in html[8]
    assert "\\includegraphics" in html[9]


def test_a_streaming_reply_renders_only_its_last_block(daphne, llm, contexts, trio):
    room, _ = trio
    pieces = [
        "First, a paragraph.\n\n",
        "```python\n",
        "x = 1\n",
        "y = 2\n",
        "```\n\n",
        "Then a list:\n\n- one\n",
        "- two\n",
    ]
    llm.set_default(Scenario.stepped(pieces))
    ann = user_in(daphne, contexts, "ann", room.slug)
    send(ann, "Stream something")
    rid = reply_id(ann)
    body = ann.locator(f'article[data-id="{rid}"] .msg__body')

    def step_to(text: str) -> None:
        llm.step()
        wait_js(ann, "([id, t]) => window.parley.store.get(id)?.text.endsWith(t)", arg=[rid, text])

    step_to("First, a paragraph.\n\n")
    expect(body.locator("p")).to_have_text("First, a paragraph.")
    step_to("```python\n")
    step_to("x = 1\n")
    # An open fence is already code while it streams.
    expect(body.locator("pre[data-lang=python] code")).to_have_text("x = 1")
    expect(body.locator("pre .hljs-number")).to_have_count(1)
    # The paragraph is a finished block now (another has started): mark its element;
    # later renders must keep it, not rebuild it.
    first_p = "document.querySelector(`article[data-id='${id}'] .msg__body p`)"
    ann.evaluate(f"(id) => {{ window.__first = {first_p}; }}", rid)
    ann.evaluate("(id) => { window.__stats = { ...window.__parleyRenderStats }; }", rid)
    step_to("y = 2\n")
    expect(body.locator("pre code")).to_have_text("x = 1\ny = 2")
    step_to("```\n\n")
    step_to("- one\n")
    step_to("- two\n")
    expect(ann.locator(f'article[data-id="{rid}"]')).to_have_attribute("data-status", "complete")
    expect(body.locator("ul li")).to_have_text(["one", "two"])
    expect(body.locator("pre code")).to_have_text("x = 1\ny = 2")
    kept = ann.evaluate(f"(id) => window.__first === {first_p} && window.__first.isConnected", rid)
    assert kept, "the first paragraph was rendered again"
    stats = ann.evaluate("() => ({ ...window.__parleyRenderStats })")
    before = ann.evaluate("() => window.__stats")
    # Since the fence opened, no render of this message started from nothing.
    assert stats["fullRenders"] == before["fullRenders"]
    assert stats["renders"] > before["renders"]
    assert stats["totalMs"] > 0
    # The finished reply reads the same as a fresh render of its whole text.
    fresh = ann.evaluate(
        """async ([url, id]) => {
          const { renderMarkdown } = await import(url);
          return renderMarkdown(window.parley.store.get(id).text);
        }""",
        [static("chat/js/markdown.js"), rid],
    )
    shown = body.evaluate("(el) => el.innerHTML")
    assert shown.replace("\n", "") == fresh.replace("\n", "")
