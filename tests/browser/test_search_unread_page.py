"""Search, jump and unread in a real browser: a search result far back in a long room is
jumped to with its history loaded around it, and the page goes back to the live end; the
home page's unread badge and mention mark, the room's "new" divider, and the read mark
the page sends back.

Helpers and fixtures are the room page's (tests/browser/test_room_page.py); waiting is
Playwright's ``expect`` or ``wait_js``, never a sleep.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from chat.models import Message, Role
from chat.services import room_join
from tests.browser import test_room_page
from tests.browser.test_room_page import login, open_room, send, shot, user_in, wait_js

pytestmark = [pytest.mark.django_db(transaction=True)]

browser = test_room_page.browser
contexts = test_room_page.contexts

PAGE = 50  # chat/static/chat/js/room.js HISTORY_PAGE


def api(daphne: Any, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=daphne.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


@pytest.fixture
def mention_room(make_user, make_room):
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Long room", assistant="mention")
    room_join(room=room, user=bob)
    return room, {"ann": ann_token, "bob": bob_token}, bob


def class_with(name: str) -> Any:
    return re.compile(rf"(^|\s){re.escape(name)}(\s|$)")


def in_viewport(page: Page, message_id: int) -> bool:
    return page.evaluate(
        """(id) => {
          const list = document.getElementById("messages").getBoundingClientRect();
          const box = document.querySelector(`article[data-id='${id}']`)?.getBoundingClientRect();
          return Boolean(box) && box.top >= list.top - 1 && box.bottom <= list.bottom + 1;
        }""",
        message_id,
    )


def test_search_jumps_to_an_old_message_and_back_to_the_live_end(daphne, contexts, mention_room):
    room, tokens, bob = mention_room
    texts = [f"history line {i}" for i in range(1, 301)]
    texts[39] = "the pineapple recipe is in the blue folder"
    Message.objects.bulk_create(
        [Message(room=room, role=Role.USER, author=bob, text=t) for t in texts]
    )
    ids = sorted(Message.objects.filter(room=room).values_list("pk", flat=True))
    found = ids[39]

    ann = user_in(daphne, contexts, "ann", room.slug)
    expect(ann.locator("article.msg")).to_have_count(PAGE)
    expect(ann.locator(f'article[data-id="{found}"]')).to_have_count(0)  # far back

    box = ann.get_by_role("searchbox", name="Search messages")
    box.fill("pineapple")
    box.press("Enter")
    results = ann.get_by_role("list", name="Search results")
    hit = results.get_by_role("button")
    expect(hit).to_have_count(1)
    expect(hit).to_contain_text("bob")
    expect(hit.locator("mark")).to_have_text("pineapple")
    shot(ann, "room-search")
    hit.click()

    # The message, with history around it, centred and marked; the page is away from
    # the live end and says how to go back.
    target = ann.locator(f'article[data-id="{found}"]')
    expect(target).to_contain_text("the pineapple recipe")
    expect(target).to_have_class(class_with("msg--found"))
    assert in_viewport(ann, found)
    expect(ann.locator(f'article[data-id="{ids[-1]}"]')).to_have_count(0)
    jump = ann.get_by_role("button", name="Jump to latest")
    expect(jump).to_be_visible()

    # A message sent meanwhile is not put after the gap; the button still leads to it.
    with api(daphne, tokens["bob"]) as bob_api:
        r = bob_api.post(f"/api/rooms/{room.slug}/messages", json={"text": "fresh news"})
        assert r.status_code == 201, r.text
        fresh = r.json()["message"]["id"]
    expect(jump).to_be_visible()
    expect(ann.locator(f'article[data-id="{fresh}"]')).to_have_count(0)

    jump.click()
    expect(ann.locator(f'article[data-id="{fresh}"]')).to_contain_text("fresh news")
    expect(jump).to_be_hidden()
    shown = [
        int(i)
        for i in ann.eval_on_selector_all("article.msg[data-id]", "e => e.map(a => a.dataset.id)")
    ]
    assert shown == sorted(shown)
    assert shown[-1] == int(fresh)
    # Live again: what one sends, and what others send, arrives at the end.
    send(ann, "back at the end")
    expect(ann.locator("article.msg--mine[data-id]")).to_contain_text("back at the end")
    with api(daphne, tokens["bob"]) as bob_api:
        bob_api.post(f"/api/rooms/{room.slug}/messages", json={"text": "and live again"})
    expect(ann.locator("article.msg[data-id]").last).to_contain_text("and live again")


def test_paging_down_from_a_jump_joins_the_live_end(daphne, contexts, mention_room):
    room, tokens, bob = mention_room
    texts = [f"line {i}" for i in range(1, 131)]
    texts[59] = "a needle in the haystack"
    Message.objects.bulk_create(
        [Message(room=room, role=Role.USER, author=bob, text=t) for t in texts]
    )
    ids = sorted(Message.objects.filter(room=room).values_list("pk", flat=True))
    ann = user_in(daphne, contexts, "ann", room.slug)
    expect(ann.locator("article.msg")).to_have_count(PAGE)
    ann.evaluate("(id) => window.parley.jumpTo(String(id))", ids[59])
    expect(ann.locator(f'article[data-id="{ids[59]}"]')).to_be_visible()
    expect(ann.get_by_role("button", name="Jump to latest")).to_be_visible()
    # Scrolling down pages through what follows, to the newest message, in order.
    for _ in range(10):
        if ann.locator(f'article[data-id="{ids[-1]}"]').count():
            break
        count = ann.locator("article.msg").count()
        ann.evaluate("const l = document.getElementById('messages'); l.scrollTop = l.scrollHeight")
        expect(ann.locator("article.msg")).not_to_have_count(count)
    expect(ann.locator(f'article[data-id="{ids[-1]}"]')).to_have_count(1)
    shown = [
        int(i)
        for i in ann.eval_on_selector_all("article.msg[data-id]", "e => e.map(a => a.dataset.id)")
    ]
    assert shown == [i for i in ids if i >= shown[0]]  # no gap, no duplicate
    expect(ann.get_by_role("button", name="Jump to latest")).to_be_hidden()


def wait_for(condition: Any, page: Page, timeout: float = 15.0) -> None:
    """Poll ``condition()`` (a server-side check) until true; the browser's timer paces it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("never true")
        page.wait_for_timeout(100)  # the polling interval


def test_unread_badge_mention_divider_and_read(daphne, contexts, mention_room):
    room, tokens, bob = mention_room
    url = f"/api/rooms/{room.slug}/messages"
    with api(daphne, tokens["ann"]) as ann_api:
        assert ann_api.post(url, json={"text": "anyone here?"}).status_code == 201
        head = next(r for r in ann_api.get("/api/rooms").json()["rooms"] if r["slug"] == room.slug)
        ann_api.post(f"/api/rooms/{room.slug}/read", json={"seq": head["head"]})
    with api(daphne, tokens["bob"]) as bob_api:
        first = bob_api.post(url, json={"text": "yes, me"}).json()["message"]["id"]
        bob_api.post(url, json={"text": "and @ann, look at this"})
        bob_api.post(url, json={"text": "third"})

    ann = login(contexts(), daphne, "ann")  # lands on the home page
    card = ann.locator(f'#my-rooms .room-card[data-slug="{room.slug}"]')
    badge = card.locator(".unread")
    expect(badge).to_be_visible()
    expect(badge).to_have_text("@ 3")
    expect(badge).to_have_attribute("aria-label", "3 unread, you were mentioned")
    shot(ann, "home-unread")

    open_room(ann, daphne, room.slug)
    divider = ann.get_by_role("separator")
    expect(divider).to_have_text("New")
    # The divider stands right before bob's first unread message.
    assert ann.evaluate(
        "() => document.getElementById('unread-divider').nextElementSibling.dataset.id"
    ) == str(first)

    # The page, at the end and visible, tells the server it has read the room.
    def read() -> bool:
        with api(daphne, tokens["ann"]) as ann_api:
            rooms = ann_api.get("/api/rooms").json()["rooms"]
        mine = next(r for r in rooms if r["slug"] == room.slug)
        return mine["unread"] == 0 and mine["mentioned"] is False

    wait_for(read, ann)
    ann.go_back()
    ann.reload()
    expect(card.locator(".unread")).to_be_hidden()


# Records each browser notification the page makes (title, body, whether the tab was
# hidden), then makes it with the real Notification: the page cannot tell the difference.
RECORD_NOTIFICATIONS = """
(() => {
  if (!("Notification" in window)) return;
  const Real = window.Notification;
  const shown = [];
  Object.defineProperty(window, "__notifications", { value: shown });
  window.Notification = new Proxy(Real, {
    construct(target, args, newTarget) {
      const options = args[1] || {};
      shown.push({ title: String(args[0]), body: options.body, hidden: document.hidden });
      const made = newTarget === window.Notification ? target : newTarget;
      return Reflect.construct(target, args, made);
    },
    // Notification.permission and requestPermission, read from the real class.
    get(target, name) {
      const value = Reflect.get(target, name);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
})();
"""


# The tab's visibility as the test sets it (see ``hide``).
TAB_VISIBILITY = """
(() => {
  let hidden = false;
  Object.defineProperty(Document.prototype, "hidden", { configurable: true, get: () => hidden });
  Object.defineProperty(Document.prototype, "visibilityState", {
    configurable: true,
    get: () => (hidden ? "hidden" : "visible"),
  });
  Object.defineProperty(window, "__setTabHidden", {
    value: (value) => {
      hidden = Boolean(value);
      document.dispatchEvent(new Event("visibilitychange"));
    },
  });
})();
"""


def notifications(page: Page) -> list[dict[str, Any]]:
    return page.evaluate("() => window.__notifications")


def hide(page: Page, hidden: bool = True) -> None:
    """Send the tab to the background (or bring it back): ``document.hidden`` and
    ``visibilityState`` change and ``visibilitychange`` fires, as in a real tab switch.

    Emulated (``TAB_VISIBILITY``), not done for real: headless Chromium does report a tab
    behind another one as hidden when driven over the DevTools protocol alone, but
    Playwright turns on focus emulation (``Emulation.setFocusEmulationEnabled``) for every
    page it opens, which keeps each page visible whatever is in front (checked with
    ``bring_to_front``, a popup and a minimized window: all stay "visible")."""
    page.evaluate("(hidden) => window.__setTabHidden(hidden)", hidden)
    wait_js(page, "(hidden) => document.hidden === hidden", hidden)


def post(daphne: Any, token: str, slug: str, text: str) -> str:
    with api(daphne, token) as client:
        r = client.post(f"/api/rooms/{slug}/messages", json={"text": text})
        assert r.status_code == 201, r.text
        return str(r.json()["message"]["id"])


def test_a_mention_notifies_only_while_the_tab_is_hidden(daphne, contexts, mention_room):
    room, tokens, _ = mention_room
    context = contexts()
    context.grant_permissions(["notifications"], origin=daphne.http_url)
    context.add_init_script(RECORD_NOTIFICATIONS)
    context.add_init_script(TAB_VISIBILITY)
    ann = login(context, daphne, "ann")
    open_room(ann, daphne, room.slug)
    toggle = ann.locator("#notify-toggle")
    expect(toggle).to_have_text("Notify me of mentions")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(toggle).to_have_text("Notifying you of mentions")

    # In front: a mention shows on the page, and no notification.
    seen = post(daphne, tokens["bob"], room.slug, "@ann are you there?")
    expect(ann.locator(f'article[data-id="{seen}"]')).to_be_attached()
    assert notifications(ann) == []

    # Behind another tab: a message without a mention notifies nobody; a mention does.
    hide(ann)
    post(daphne, tokens["bob"], room.slug, "nothing for anyone")
    post(daphne, tokens["bob"], room.slug, "@ann the build is green")
    wait_js(ann, "window.__notifications.length > 0")
    assert notifications(ann) == [
        {
            "title": "bob mentioned you in Long room",
            "body": "@ann the build is green",
            "hidden": True,
        }
    ]

    # In front again: mentions show on the page only.
    hide(ann, False)
    back = post(daphne, tokens["bob"], room.slug, "@ann welcome back")
    expect(ann.locator(f'article[data-id="{back}"]')).to_be_attached()
    assert len(notifications(ann)) == 1


def test_no_notification_without_the_users_permission(daphne, contexts, mention_room):
    room, tokens, _ = mention_room
    # Allowed by the browser, but the reader never asked for notifications of this room.
    allowed = contexts()
    allowed.grant_permissions(["notifications"], origin=daphne.http_url)
    # Asked for them on the page, but the browser did not allow them.
    refused = contexts()
    pages = []
    for context in (allowed, refused):
        context.add_init_script(RECORD_NOTIFICATIONS)
        context.add_init_script(TAB_VISIBILITY)
        page = login(context, daphne, "ann")
        open_room(page, daphne, room.slug)
        pages.append(page)
    not_asked, not_allowed = pages
    toggle = not_allowed.locator("#notify-toggle")
    toggle.click()
    wait_js(not_allowed, "Notification.permission !== 'granted'")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(not_asked.locator("#notify-toggle")).to_have_attribute("aria-pressed", "false")

    for page in pages:
        hide(page)
    mention = post(daphne, tokens["bob"], room.slug, "@ann can you look at this?")
    for page in pages:
        # The message reached the hidden page (it is in the list), and made no notification.
        expect(page.locator(f'article[data-id="{mention}"]')).to_be_attached()
        assert page.evaluate("document.hidden") is True
        assert notifications(page) == []
