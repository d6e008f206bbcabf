"""The room page in a real browser (Debian's Chromium through Playwright) on a real daphne.

Each user logs in through the login form in a browser context of their own. The model is
the fake OpenAI-compatible server, scripted per test. Waiting is always Playwright's
auto-waiting ``expect`` (or ``wait_js``) with a timeout, never a sleep.
Screenshots of the main states go to test-artifacts/; the README's two (1280x800 and a
phone's 390x844) to docs/.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.templatetags.static import static
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Page,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from chat.models import Message, Role, Status
from chat.services import room_join
from tests.support.openai_server import Scenario

pytestmark = [pytest.mark.django_db(transaction=True)]

from tests.conftest import IN_CI  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOCS = ROOT / "docs"
PASSWORD = "pw-for-tests-123"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Generous: two cores run daphne, the fake model and several renderer processes at once.
expect.set_options(timeout=15_000)
WAIT_MS = 15_000


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API keeps its event loop set as running in this thread between
    # calls, so Django would refuse the ORM in the tests' own setup and teardown. Nothing
    # here shares a connection with async code: allow it for this module only.
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing: CI installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; CI installs it)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as p:
            launched = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield launched
            launched.close()


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Any]:
    """``new_context()`` → a fresh browser profile (1280x800); all closed after the test."""
    opened: list[BrowserContext] = []

    def new_context(**kw: Any) -> BrowserContext:
        kw.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(**kw)
        opened.append(context)
        return context

    yield new_context
    for context in opened:
        context.close()


def wait_js(page: Page, expression: str, arg: Any = None, timeout: float = WAIT_MS) -> Any:
    """Wait until ``expression`` (a JS expression, or a function of ``arg``) is truthy.

    Playwright's ``wait_for_function`` compiles its predicate with ``eval`` inside the
    page, which the pages' Content-Security-Policy forbids (no 'unsafe-eval'). This checks
    the same predicate through ``page.evaluate`` (the DevTools protocol, outside the page's
    policy) every 50 ms, until it holds or ``timeout`` ms pass.
    """
    is_function = "=>" in expression or expression.lstrip().startswith("function")
    deadline = time.monotonic() + timeout / 1000
    while True:
        value = page.evaluate(expression, arg) if is_function else page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never true within {timeout} ms: {expression}")
        page.wait_for_timeout(50)  # the polling interval, as wait_for_function's own


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def login(context: BrowserContext, daphne: Any, username: str) -> Page:
    page = context.new_page()
    page.goto(f"{daphne.http_url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{daphne.http_url}/")
    return page


def open_room(page: Page, daphne: Any, slug: str, query: str = "") -> None:
    page.goto(f"{daphne.http_url}/rooms/{slug}/{query}")
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")


def user_in(daphne: Any, contexts: Any, username: str, slug: str, query: str = "") -> Page:
    page = login(contexts(), daphne, username)
    open_room(page, daphne, slug, query)
    return page


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def reply_id(page: Page) -> str:
    """The id of the newest reply after this user's own messages."""
    reply = page.locator("article.msg--mine[data-id] ~ article.msg--assistant[data-id]").last
    expect(reply).to_be_visible()
    value = reply.get_attribute("data-id")
    assert value
    return value


def page_text(page: Page, message_id: str) -> str:
    """The raw text the page holds for a message (what its markdown is rendered from)."""
    return page.evaluate("(id) => window.parley.store.get(id).text", message_id)


def api_message(daphne: Any, token: str, message_id: str) -> dict[str, Any]:
    r = httpx.get(
        f"{daphne.http_url}/api/messages/{message_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def ws_frames(page: Page) -> list[dict[str, Any]]:
    """Every JSON frame the page's WebSockets receive, recorded as they arrive."""
    frames: list[dict[str, Any]] = []

    def on_socket(ws: Any) -> None:
        def on_frame(payload: str | bytes) -> None:
            if isinstance(payload, str):
                frames.append(json.loads(payload))

        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    return frames


@pytest.fixture
def trio(make_user, make_room):
    """ann owns a room; bob and cat are members. Returns (room, tokens by name)."""
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    cat, cat_token = make_user("cat")
    room = make_room(ann, "Design review")
    room_join(room=room, user=bob)
    room_join(room=room, user=cat)
    return room, {"ann": ann_token, "bob": bob_token, "cat": cat_token}


# --- streaming to several members ---------------------------------------------------------

STREAM_PIECES = [
    "Here is ",
    "**a plan**",
    " for the launch:\n\n",
    "1. Freeze ",
    "the API\n",
    "2. Write ",
    "the docs\n\n",
    "```python\n",
    "def ship():\n",
    "    return 'soon'\n",
    "```\n\n",
    "Use `ship()` ",
    "when *ready*.",
]


def test_two_members_see_the_reply_stream_token_by_token(daphne, llm, contexts, trio):
    room, tokens = trio
    llm.set_default(Scenario.slow(STREAM_PIECES, delay=0.15))
    ann = login(contexts(), daphne, "ann")
    ann_frames = ws_frames(ann)
    open_room(ann, daphne, room.slug)
    bob = login(contexts(), daphne, "bob")
    bob_frames = ws_frames(bob)
    open_room(bob, daphne, room.slug)

    # Presence: each sees the other.
    expect(ann.locator("#presence")).to_contain_text("bob")
    expect(bob.locator("#presence")).to_contain_text("ann")
    expect(bob.locator("#presence")).to_contain_text("bob (you)")
    # Typing: bob types, ann is told.
    bob.get_by_label("Message", exact=True).press_sequentially("hm")
    expect(ann.locator("#typing")).to_have_text("bob is typing…")
    bob.get_by_label("Message", exact=True).fill("")

    send(ann, "Can you plan the launch?")
    # Optimistic: ann's message is on screen at once, then confirmed by the server.
    expect(ann.locator("article.msg--mine")).to_contain_text("Can you plan the launch?")
    expect(ann.locator("article.msg--mine[data-id]")).to_have_count(1)
    expect(ann.locator("article.msg--pending")).to_have_count(0)
    expect(bob.locator("article.msg--user")).to_contain_text("Can you plan the launch?")

    rid = reply_id(ann)
    expect(bob.locator(f'article[data-id="{rid}"] .badge')).to_have_text("streaming")
    expect(bob.locator(f'article[data-id="{rid}"] .cursor')).to_be_visible()
    shot(bob, "room-streaming")
    for page in (ann, bob):
        expect(page.locator(f'article[data-id="{rid}"]')).to_have_attribute(
            "data-status", "complete"
        )
    shot(ann, "room-complete")
    expect(ann.locator("#typing")).to_have_text("")  # it faded when bob stopped typing

    stored = api_message(daphne, tokens["ann"], rid)
    assert stored["text"] == "".join(STREAM_PIECES)
    for page, frames in ((ann, ann_frames), (bob, bob_frames)):
        assert page_text(page, rid) == stored["text"]
        # Token by token: the text came in many deltas, not in one piece.
        deltas = [f for f in frames if f.get("type") == "delta" and f["message_id"] == rid]
        assert len(deltas) >= 5
        body = page.locator(f'article[data-id="{rid}"] .msg__body')
        expect(body.locator("strong")).to_have_text("a plan")
        expect(body.locator("ol > li")).to_have_count(2)
        expect(body.locator("pre code")).to_have_text("def ship():\n    return 'soon'")
        expect(body.locator("p code")).to_have_text("ship()")
        expect(body.locator("em")).to_have_text("ready")
        expect(page.locator(f'article[data-id="{rid}"] .badge')).to_be_hidden()
        expect(page.locator(f'article[data-id="{rid}"] .cursor')).to_have_count(0)
        expect(page.locator("article.msg")).to_have_count(2)


# --- controls -------------------------------------------------------------------------------


def test_pause_resume_and_stop_from_the_buttons(daphne, llm, contexts, trio):
    room, tokens = trio
    llm.set_default(Scenario.endless(("tick ",), interval=0.03))
    bob = user_in(daphne, contexts, "bob", room.slug)  # the asker
    ann = user_in(daphne, contexts, "ann", room.slug)  # the owner
    cat = user_in(daphne, contexts, "cat", room.slug)  # neither: may not control

    send(bob, "Count for me")
    rid = reply_id(bob)
    bob_reply = bob.locator(f'article[data-id="{rid}"]')
    expect(bob_reply).to_have_attribute("data-status", "streaming")
    cat_reply = cat.locator(f'article[data-id="{rid}"]')
    expect(cat_reply).to_have_attribute("data-status", "streaming")
    for name in ("Pause", "Resume", "Stop"):
        expect(cat_reply.get_by_role("button", name=name)).to_be_disabled()
    expect(
        ann.locator(f'article[data-id="{rid}"]').get_by_role("button", name="Stop")
    ).to_be_enabled()
    expect(bob_reply.get_by_role("button", name="Resume")).to_be_disabled()

    bob_reply.get_by_role("button", name="Pause").click()
    for page in (bob, ann, cat):
        reply = page.locator(f'article[data-id="{rid}"]')
        expect(reply.locator(".badge")).to_have_text("paused")
        expect(reply.locator(".msg__note")).to_have_text("Paused by bob")
    assert api_message(daphne, tokens["bob"], rid)["status"] == "paused"
    expect(bob_reply.get_by_role("button", name="Pause")).to_be_disabled()
    shot(bob, "room-paused")
    held = len(page_text(bob, rid))

    # The owner resumes; the text goes on from where it was.
    ann_reply = ann.locator(f'article[data-id="{rid}"]')
    ann_reply.get_by_role("button", name="Resume").click()
    expect(bob_reply.locator(".badge")).to_have_text("streaming")
    wait_js(bob, "([id, n]) => window.parley.store.get(id).text.length > n + 20", arg=[rid, held])

    bob_reply.get_by_role("button", name="Stop").click()
    for page in (bob, ann, cat):
        reply = page.locator(f'article[data-id="{rid}"]')
        expect(reply.locator(".badge")).to_have_text("stopped")
        expect(reply.locator(".msg__note")).to_have_text("Stopped by bob")
        expect(reply.locator(".msg__controls")).to_be_hidden()
    shot(bob, "room-stopped")
    stored = api_message(daphne, tokens["bob"], rid)
    assert stored["status"] == "stopped"
    for page in (bob, ann, cat):
        assert page_text(page, rid) == stored["text"]
        body = page.locator(f'article[data-id="{rid}"] .msg__body')
        expect(body).to_have_text(stored["text"].strip())


# --- reconnecting -------------------------------------------------------------------------


def test_a_dropped_connection_resumes_without_loss_or_duplicates(daphne, llm, contexts, trio):
    room, tokens = trio
    pieces = [f"w{i} " for i in range(70)]
    llm.set_default(Scenario.slow(pieces, delay=0.03))
    ann = login(contexts(), daphne, "ann")
    urls: list[str] = []
    ann.on("websocket", lambda ws: urls.append(ws.url))
    open_room(ann, daphne, room.slug)

    send(ann, "Say many words")
    rid = reply_id(ann)
    wait_js(ann, "(id) => window.parley.store.get(id).text.length > 10", arg=rid)
    ann.evaluate("window.parley.debugDropSocket()")
    expect(ann.locator("#conn")).not_to_have_attribute("data-state", "open", timeout=2_000)
    wait_js(ann, "window.parley.debugState().connects === 2")
    expect(ann.locator("#conn")).to_have_attribute("data-state", "open")
    expect(ann.locator(f'article[data-id="{rid}"]')).to_have_attribute("data-status", "complete")

    stored = api_message(daphne, tokens["ann"], rid)
    assert stored["text"] == "".join(pieces)
    assert page_text(ann, rid) == stored["text"]
    expect(ann.locator(f'article[data-id="{rid}"] .msg__body')).to_have_text(stored["text"].strip())
    expect(ann.locator("article.msg")).to_have_count(2)
    # The second connection resumed after the last seq the page held.
    assert len(urls) == 2
    match = re.search(r"after=(\d+)", urls[1])
    assert match
    assert int(match.group(1)) > 0


def test_a_frame_over_the_limit_ends_the_session_with_a_message_not_a_reconnect_loop(
    daphne, contexts, trio
):
    # The server closes a connection that sent a frame over 64 KiB with 1009, a code after
    # which trying again cannot help (core/contract.py): the page says so and stays closed.
    room, _ = trio
    ann = user_in(daphne, contexts, "ann", room.slug)
    ann.evaluate("window.parley.connection.socket.send('x'.repeat(70 * 1024))")
    expect(ann.locator("#conn")).to_have_attribute("data-state", "closed")
    expect(ann.locator(".alert")).to_contain_text("A message was too large for the server")
    assert ann.evaluate("window.parley.debugState().connects") == 1


def test_a_snapshot_replaces_the_conversation_and_streaming_goes_on(daphne, llm, contexts, trio):
    room, tokens = trio
    pieces = [f"s{i} " for i in range(70)]
    llm.set_default(Scenario.slow(pieces, delay=0.03))
    ann = login(contexts(), daphne, "ann")
    frames = ws_frames(ann)
    open_room(ann, daphne, room.slug)
    send(ann, "Stream please")
    rid = reply_id(ann)
    wait_js(ann, "(id) => window.parley.store.get(id).text.length > 10", arg=rid)
    # Resume from a seq the server never issued: it must answer with a snapshot.
    ann.evaluate("window.parley.store.lastSeq = 10 ** 9; window.parley.debugDropSocket()")
    wait_js(ann, "window.parley.debugState().connects === 2")
    expect(ann.locator(f'article[data-id="{rid}"]')).to_have_attribute("data-status", "complete")
    assert [f for f in frames if f.get("type") == "snapshot"]
    stored = api_message(daphne, tokens["ann"], rid)
    assert page_text(ann, rid) == stored["text"] == "".join(pieces)
    expect(ann.locator("article.msg")).to_have_count(2)


# --- the fallback transport ------------------------------------------------------------------


def test_with_the_websocket_blocked_the_page_works_over_sse_and_http(daphne, llm, contexts, trio):
    """Needs GET /api/rooms/<slug>/events and the HTTP send and control endpoints."""
    room, tokens = trio
    llm.set_default(Scenario.endless(("flow ",), interval=0.03))
    ann = login(contexts(), daphne, "ann")
    # A proxy that refuses WebSockets: every handshake is closed before any hello.
    ann.route_web_socket(re.compile(r"/ws/rooms/"), lambda ws: ws.close())
    ann.goto(f"{daphne.http_url}/rooms/{room.slug}/")
    conn = ann.locator("#conn")
    expect(conn).to_have_attribute("data-state", "open")
    expect(conn).to_have_attribute("data-transport", "sse")
    expect(conn).to_contain_text("server-sent events")

    send(ann, "Hello over HTTP")
    expect(ann.locator("article.msg--mine[data-id]")).to_contain_text("Hello over HTTP")
    expect(ann.locator("article.msg--pending")).to_have_count(0)
    rid = reply_id(ann)
    reply = ann.locator(f'article[data-id="{rid}"]')
    expect(reply.locator(".badge")).to_have_text("streaming")
    wait_js(ann, "(id) => window.parley.store.get(id).text.length > 20", arg=rid)
    shot(ann, "room-sse")
    reply.get_by_role("button", name="Stop").click()
    expect(reply.locator(".badge")).to_have_text("stopped")
    stored = api_message(daphne, tokens["ann"], rid)
    assert page_text(ann, rid) == stored["text"]

    # ?transport=sse forces SSE without trying the WebSocket at all.
    bob = login(contexts(), daphne, "bob")
    sockets: list[str] = []
    bob.on("websocket", lambda ws: sockets.append(ws.url))
    open_room(bob, daphne, room.slug, "?transport=sse")
    expect(bob.locator("#conn")).to_have_attribute("data-transport", "sse")
    expect(bob.locator(f'article[data-id="{rid}"] .badge')).to_have_text("stopped")
    assert sockets == []


# --- safety ------------------------------------------------------------------------------------

EVIL = "<script>alert('x')</script> <img src=x onerror=\"alert('y')\"> [c](javascript:alert(1))"


def test_markup_in_messages_renders_as_text(daphne, llm, contexts, trio):
    room, _ = trio
    llm.set_default(Scenario.slow(["Echo: ", EVIL, "\n\n```\n", EVIL, "\n```"], delay=0.02))
    dialogs: list[str] = []
    ann = login(contexts(), daphne, "ann")

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    ann.on("dialog", on_dialog)
    open_room(ann, daphne, room.slug)

    send(ann, EVIL)
    mine = ann.locator("article.msg--mine[data-id]")
    expect(mine.locator(".msg__body")).to_have_text(EVIL)
    rid = reply_id(ann)
    reply = ann.locator(f'article[data-id="{rid}"]')
    expect(reply).to_have_attribute("data-status", "complete")
    expect(reply.locator(".msg__body p")).to_have_text("Echo: " + EVIL)
    expect(reply.locator(".msg__body pre code")).to_have_text(EVIL)
    for article in (mine, reply):
        expect(article.locator("script, img, [onerror]")).to_have_count(0)
        expect(article.locator("a")).to_have_count(0)  # javascript: never becomes a link
    shot(ann, "room-markup-as-text")
    assert dialogs == []
    assert ann.evaluate("typeof window.x") == "undefined"


def test_markdown_renderer_allows_only_its_own_tags(daphne, contexts, trio):
    room, _ = trio
    ann = user_in(daphne, contexts, "ann", room.slug)
    # The module under its hashed static name, as the page itself imports it.
    cases = ann.evaluate(
        """async (url) => {
          const { renderMarkdown } = await import(url);
          const r = (s) => renderMarkdown(s);
          return {
            link: r("[docs](https://example.com/a?b=1&c=\\"2\\")"),
            jsLink: r("[x](javascript:alert(1)) and <a href=javascript:alert(1)>y</a>"),
            attr: r('**"><img src=x onerror=alert(1)>**'),
            list: r("- one\\n- two *em*\\n\\n3. three"),
            fence: r("```js\\nconst a = '<b>';\\n```"),
            open: r("```\\nstill streaming <i>"),
            code: r("use `<script>` here"),
            bare: r("see https://example.org/x."),
          };
        }""",
        static("chat/js/markdown.js"),
    )
    copy = '<button type="button" class="copy" aria-label="Copy code">Copy</button>'
    assert cases["link"] == (
        '<p><a href="https://example.com/a?b=1&amp;c=%222%22" target="_blank" '
        'rel="noopener noreferrer nofollow">docs</a></p>\n'
    )
    assert "<a" not in cases["jsLink"]
    assert "&lt;a href=javascript:alert(1)&gt;" in cases["jsLink"]
    assert cases["attr"] == '<p><strong>"&gt;&lt;img src=x onerror=alert(1)&gt;</strong></p>\n'
    assert cases["list"] == (
        "<ul>\n<li>one</li>\n<li>two <em>em</em></li>\n</ul>\n"
        '<ol start="3">\n<li>three</li>\n</ol>\n'
    )
    # Highlighted by highlight.js, its text still escaped.
    assert cases["fence"] == (
        f'<pre data-lang="js">{copy}<code class="hljs language-js">'
        '<span class="hljs-keyword">const</span> a = '
        "<span class=\"hljs-string\">'&lt;b&gt;'</span>;</code></pre>\n"
    )
    assert cases["open"] == (
        f'<pre>{copy}<code class="hljs">still streaming &lt;i&gt;</code></pre>\n'
    )
    assert cases["code"] == "<p>use <code>&lt;script&gt;</code> here</p>\n"
    assert '<a href="https://example.org/x"' in cases["bare"]
    assert cases["bare"].endswith("</a>.</p>\n")


# --- Content-Security-Policy ---------------------------------------------------------------

# Records every CSP violation the page reports, before any of the page's own code runs.
# (Playwright's init scripts are injected by the browser, so the policy does not block it.)
CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


def test_the_pages_run_under_a_csp_with_no_inline_script(daphne, llm, contexts, trio):
    room, _ = trio
    context = contexts()
    context.add_init_script(CSP_RECORDER)
    console: list[str] = []
    responses: dict[str, Any] = {}
    page = context.new_page()
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("response", lambda r: responses.setdefault(r.url, r))

    page.goto(f"{daphne.http_url}/accounts/login/")
    page.get_by_label("Username").fill("ann")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{daphne.http_url}/")
    expect(page.get_by_role("link", name="Design review")).to_be_visible()
    open_room(page, daphne, room.slug)
    send(page, "Does this page run under its policy?")
    rid = reply_id(page)
    expect(page.locator(f'article[data-id="{rid}"]')).to_have_attribute("data-status", "complete")

    document = responses[f"{daphne.http_url}/rooms/{room.slug}/"]
    policy = document.headers["content-security-policy"]
    script_src = next(d for d in policy.split(";") if d.strip().startswith("script-src"))
    assert "'unsafe-inline'" not in script_src
    assert "'unsafe-eval'" not in script_src
    assert "data:" not in script_src
    # The page's code is static files under hashed names, cached for good.
    scripts = [u for u in responses if "/static/chat/js/" in u]
    assert any(re.search(r"/static/chat/js/room\.[0-9a-f]{12}\.js$", u) for u in scripts)
    assert any(re.search(r"/static/chat/js/store\.[0-9a-f]{12}\.js$", u) for u in scripts)
    for url in scripts:
        assert "immutable" in responses[url].headers["cache-control"], url
    assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)", document.text())
    # Nothing the page does was refused...
    assert page.evaluate("window.__cspViolations") == []
    assert not [line for line in console if "Content Security Policy" in line], console
    # ...and the policy is really in force: an injected inline script does not run.
    page.evaluate(
        """() => { const s = document.createElement("script");
                   s.textContent = "window.__inlineRan = true"; document.body.append(s); }"""
    )
    wait_js(page, "window.__cspViolations.length > 0", timeout=WAIT_MS)
    assert page.evaluate("window.__inlineRan") is None


def test_the_admin_runs_under_the_same_csp(daphne, contexts, trio, make_user):
    room, _ = trio
    boss, _ = make_user("boss", staff=True)
    boss.is_superuser = True
    boss.save(update_fields=["is_superuser"])
    reply = Message.objects.create(room=room, role=Role.ASSISTANT, text="hi", status="complete")
    context = contexts()
    context.add_init_script(CSP_RECORDER)
    page = context.new_page()
    page.goto(f"{daphne.http_url}/admin/login/")
    page.get_by_label("Username").fill("boss")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{daphne.http_url}/admin/")
    for path in (
        "/admin/chat/message/",
        f"/admin/chat/message/{reply.pk}/change/",
        f"/admin/chat/room/{room.pk}/change/",
        f"/admin/chat/room/{room.pk}/transcript/",
    ):
        response = page.goto(daphne.http_url + path)
        assert response is not None
        assert response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert page.evaluate("window.__cspViolations") == [], path
    # The admin's own scripts ran (the action bar counts the selection).
    page.goto(f"{daphne.http_url}/admin/chat/message/")
    page.locator("input.action-select").first.check()
    expect(page.locator(".action-counter")).to_contain_text("1 of")


# --- rooms: list, create, join, access ---------------------------------------------------


def test_room_list_creates_and_joins_rooms_and_hides_private_ones(
    daphne, contexts, make_user, make_room
):
    ann, _ = make_user("ann")
    make_user("bob")
    make_room(ann, "Open plan")
    secret = make_room(ann, "Secret plans", visibility="private")

    bob = login(contexts(), daphne, "bob")
    expect(bob.locator("#public-rooms")).to_contain_text("Open plan")
    expect(bob.locator("body")).not_to_contain_text("Secret plans")
    shot(bob, "home")
    bob.get_by_role("button", name="Join Open plan").click()
    expect(bob).to_have_url(re.compile(r"/rooms/open-plan/$"))
    expect(bob.locator("#conn")).to_have_attribute("data-state", "open")
    expect(bob.locator("#presence")).to_contain_text("bob (you)")

    # A private room is not there for a non-member.
    response = bob.goto(f"{daphne.http_url}/rooms/{secret.slug}/")
    assert response is not None
    assert response.status == 404

    # Create a room from the form; it opens, and is listed as ours.
    bob.goto(f"{daphne.http_url}/")
    bob.get_by_label("Name").fill("Bob's corner")
    bob.get_by_label("Who can join").select_option("private")
    bob.get_by_role("button", name="Create room").click()
    expect(bob).to_have_url(re.compile(r"/rooms/bobs-corner/$"))
    expect(bob.locator(".room__title h1")).to_have_text("Bob's corner")
    expect(bob.locator("#conn")).to_have_attribute("data-state", "open")
    bob.goto(f"{daphne.http_url}/")
    expect(bob.locator("#my-rooms")).to_contain_text("Bob's corner")
    expect(bob.locator("#my-rooms")).to_contain_text("Open plan")


def test_a_public_room_shows_non_members_a_join_button(daphne, contexts, make_user, make_room):
    ann, _ = make_user("ann")
    make_user("bob")
    room = make_room(ann, "Town square")
    bob = login(contexts(), daphne, "bob")
    bob.goto(f"{daphne.http_url}/rooms/{room.slug}/")
    expect(bob.locator("#messages")).to_have_count(0)
    shot(bob, "room-join")
    bob.get_by_role("button", name="Join room").click()
    expect(bob.locator("#conn")).to_have_attribute("data-state", "open")
    expect(bob.locator("#presence")).to_contain_text("bob (you)")


# --- voice (client side) ----------------------------------------------------------------


def audio_frame(stream: int, index: int, samples: int, rate_hz: int = 220) -> bytes:
    header = struct.pack(">II", stream, index)
    pcm = b"".join(struct.pack("<h", (i * rate_hz) % 20000 - 10000) for i in range(samples))
    return header + pcm


def test_voice_controls_and_gapless_audio_playback(daphne, contexts, trio):
    """The server's audio is mocked here (voice is built elsewhere): the page's side only."""
    room, _ = trio
    ann = login(contexts(), daphne, "ann")
    sent: list[dict[str, Any]] = []
    routes: list[WebSocketRoute] = []

    def fake_server(ws: WebSocketRoute) -> None:
        routes.append(ws)

        def on_message(message: str | bytes) -> None:
            frame = json.loads(message)
            sent.append(frame)
            if frame.get("action") == "ping":
                ws.send(json.dumps({"type": "pong", "id": frame.get("id")}))

        ws.on_message(on_message)
        hello = {
            "type": "hello",
            "room": {
                "slug": room.slug,
                "name": room.name,
                "owner": "ann",
                "visibility": "public",
                "assistant": "always",
                "voice": "off",
                "head": 0,
            },
            "you": "ann",
            "head": 0,
            "online": ["ann"],
        }
        ws.send(json.dumps(hello))

    ann.route_web_socket(re.compile(r"/ws/rooms/"), fake_server)
    open_room(ann, daphne, room.slug)
    ws = routes[0]

    ann.get_by_label("Voice mode for your messages").select_option("streaming")
    ann.get_by_role("button", name="Speaker off").click()
    expect(ann.get_by_role("button", name="Speaker on")).to_have_attribute("aria-pressed", "true")
    assert {"action": "audio", "enabled": True} in sent
    wait_js(ann, "window.parley.player.debugState().context === 'running'")

    send(ann, "Speak to me")
    expect(ann.locator("article.msg--pending")).to_contain_text("Speak to me")
    wait_js(ann, "window.parley.store.pending.values().next().value.conn !== null")
    send_frames = [f for f in sent if f.get("action") == "send"]
    assert send_frames
    assert send_frames[0]["voice"] == "streaming"
    assert send_frames[0]["text"] == "Speak to me"

    reply = {
        "id": "77",
        "room": room.slug,
        "role": "assistant",
        "author": "assistant",
        "text": "",
        "status": "streaming",
        "reply_to": None,
        "client_id": None,
        "created": "2030-01-01T10:00:00Z",
    }
    ws.send(json.dumps({"type": "message", "seq": 1, "message": reply}))
    ws.send(
        json.dumps(
            {
                "type": "audio",
                "state": "start",
                "stream": 5,
                "message_id": "77",
                "format": "pcm_s16le",
                "sample_rate": 16000,
                "channels": 1,
                "mode": "streaming",
            }
        )
    )
    # Out of order on purpose: chunk 1 waits for chunk 0, then both play back to back.
    ws.send(audio_frame(5, 1, 8000))
    ws.send(audio_frame(5, 0, 8000))
    wait_js(ann, "window.parley.player.debugState().played === 2")
    state = ann.evaluate("window.parley.player.debugState()")
    assert state["streams"] == 1
    assert state["dropped"] == 0

    ws.send(
        json.dumps(
            {
                "type": "generation",
                "seq": 2,
                "message_id": "77",
                "state": "paused",
                "by": "ann",
                "reason": None,
            }
        )
    )
    wait_js(ann, "window.parley.player.debugState().context === 'suspended'")
    ws.send(
        json.dumps(
            {
                "type": "generation",
                "seq": 3,
                "message_id": "77",
                "state": "streaming",
                "by": "ann",
                "reason": None,
            }
        )
    )
    wait_js(ann, "window.parley.player.debugState().context === 'running'")
    ws.send(audio_frame(5, 2, 16000))
    wait_js(ann, "window.parley.player.debugState().played === 3")
    ws.send(json.dumps({"type": "audio", "state": "cancel", "stream": 5}))
    wait_js(ann, "window.parley.player.debugState().streams === 0")
    assert ann.evaluate("window.parley.player.debugState().queued") == 0


# --- the README's screenshot, and the phone layout -----------------------------------------

README_REPLY = [
    "Here are the rollback steps, in order:\n\n",
    "1. **Freeze deploys** so nothing new ships while we roll back.\n",
    "2. Restore the previous release ",
    "and watch the error rate.\n",
    "3. Tell the room when the dashboards are green.\n\n",
    "```bash\n",
    "./deploy freeze --reason rollback\n",
    "./deploy restore v2.3.1\n",
    "./deploy status --watch\n",
    "```\n\n",
    "If the restore fails, ",
    "page the on-call engineer and ",
    "keep the freeze ",
    "in place until",
]


def test_readme_screenshot_of_a_room_mid_reply_and_the_phone_layout(daphne, llm, contexts, trio):
    from django.contrib.auth import get_user_model

    room, _ = trio
    users = {u.username: u for u in get_user_model().objects.filter(username__in=["bob", "cat"])}
    asked = Message.objects.create(
        room=room,
        role=Role.USER,
        author=users["bob"],
        text="Morning! Can someone recap what is left before the **v2.4 launch**?",
    )
    Message.objects.create(
        room=room,
        role=Role.ASSISTANT,
        text=(
            "Two things are left:\n\n- the `billing` migration, due today\n"
            "- the launch post, waiting for review"
        ),
        status=Status.COMPLETE,
        reply_to=asked,
    )
    Message.objects.create(
        room=room, role=Role.USER, author=users["cat"], text="I can review the post after lunch."
    )
    # The model sends all but nothing after the last piece: the reply stays mid-stream
    # (until the server's read timeout fails it, long after the screenshot).
    llm.set_default(Scenario.hang(README_REPLY, after=len(README_REPLY)))
    cat = user_in(daphne, contexts, "cat", room.slug)
    ann = user_in(daphne, contexts, "ann", room.slug)
    bob = login(
        contexts(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True),
        daphne,
        "bob",
    )
    open_room(bob, daphne, room.slug)

    send(ann, "If the migration goes wrong, what are our rollback steps?")
    rid = reply_id(ann)
    reply = ann.locator(f'article[data-id="{rid}"]')
    expect(reply.locator(".msg__body")).to_contain_text("keep the freeze in place until")
    cat.get_by_label("Message", exact=True).press_sequentially("Thanks")
    expect(ann.locator("#typing")).to_have_text("cat is typing…")
    DOCS.mkdir(exist_ok=True)
    ann.screenshot(path=str(DOCS / "screenshot-room.png"))
    # Still streaming after the shot, so it was streaming during it.
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(reply.locator(".cursor")).to_be_visible()

    # On a phone: the conversation and the composer fill the screen; details are a drawer.
    phone_reply = bob.locator(f'article[data-id="{rid}"]')
    expect(phone_reply.locator(".msg__body")).to_contain_text("keep the freeze in place until")
    expect(bob.get_by_label("Message", exact=True)).to_be_in_viewport()
    expect(bob.locator("#side")).not_to_be_in_viewport()
    assert bob.evaluate("document.documentElement.scrollWidth") <= 390
    bob.screenshot(path=str(DOCS / "screenshot-room-phone.png"))  # the README's, beside it
    expect(phone_reply).to_have_attribute("data-status", "streaming")
    bob.get_by_role("button", name=re.compile("room details")).click()
    expect(bob.locator("#side")).to_be_in_viewport(ratio=1)  # slid all the way in
    expect(bob.locator("#presence")).to_contain_text("bob (you)")
    shot(bob, "room-phone-details")
