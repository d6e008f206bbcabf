"""The room page's conversation in a real browser: in id order however its messages
arrive, older messages as the reader scrolls up, and replies that read the same after a
reload.

Helpers and fixtures are the room page's (tests/browser/test_room_page.py); waiting is
Playwright's ``expect`` or ``wait_js``, never a sleep.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from chat.models import Message, Role
from chat.services import room_join
from tests.browser import test_room_page
from tests.browser.test_room_page import (
    api_message,
    login,
    open_room,
    page_text,
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

# The page's history page size (chat/static/chat/js/room.js HISTORY_PAGE).
PAGE = 50


def api(daphne: Any, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=daphne.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def shown_ids(page: Page) -> list[int]:
    """The ids of the messages on the page, top to bottom."""
    ids: list[str] = page.eval_on_selector_all(
        "#messages article.msg[data-id]", "els => els.map(e => e.dataset.id)"
    )
    return [int(i) for i in ids]


@pytest.fixture
def mention_room(make_user, make_room):
    """ann owns a room whose assistant answers only when asked; bob is a member."""
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Busy room", assistant="mention")
    room_join(room=room, user=bob)
    return room, {"ann": ann_token, "bob": bob_token}


def scroll_to_start(page: Page) -> None:
    """Scroll to the top until the page says the conversation starts there."""
    history = page.locator("#history")
    for _ in range(10):
        if history.get_attribute("data-state") == "start":
            return
        count = page.locator("article.msg").count()
        page.evaluate("document.getElementById('messages').scrollTop = 0")
        expect(history).not_to_have_attribute("data-state", "loading")
        expect(page.locator("article.msg")).not_to_have_count(count)
    raise AssertionError("never reached the start")


# --- item: a room opened while a reply streams is in order ------------------------------


def test_a_busy_room_opened_during_a_live_reply_is_in_order_and_the_reply_goes_on(
    daphne_factory, sole_deployment, llm, contexts, mention_room
):
    room, tokens = mention_room
    # The test, not a clock, paces the model, with logins in between: a server that
    # waits for the model's next piece longer than the session's 2 s, and saves a reply's
    # text only when it ends, so what members saw can only come from the live copy.
    daphne = daphne_factory(LLM_READ_TIMEOUT="60", PARLEY_SAVE_INTERVAL="600")
    pieces = [f"part{i} " for i in range(8)]
    llm.set_default(Scenario.stepped(pieces))
    url = f"/api/rooms/{room.slug}/messages"
    with api(daphne, tokens["bob"]) as bob_api:
        # 72 messages sent as members send them: each is also a `message` event in the
        # room's log, which a replay from the start would send again.
        for i in range(1, 73):
            assert bob_api.post(url, json={"text": f"note {i}"}).status_code == 201
        r = bob_api.post(url, json={"text": "Sum it up", "ask_ai": True})
        assert r.status_code == 202, r.text
        rid = r.json()["reply"]["id"]

    # bob watches the reply start: the first pieces have reached members (and the
    # database has at most an older save of them) before ann opens the room.
    bob = user_in(daphne, contexts, "bob", room.slug)
    llm.step()
    llm.step()
    llm.step()
    wait_js(bob, "([id, t]) => window.parley.store.get(id)?.text === t", [rid, "".join(pieces[:3])])

    ann = login(contexts(), daphne, "ann")
    urls: list[str] = []
    ann.on("websocket", lambda ws: urls.append(ws.url))
    open_room(ann, daphne, room.slug)
    reply = ann.locator(f'article[data-id="{rid}"]')
    expect(reply).to_have_attribute("data-status", "streaming")
    wait_js(ann, "([id, t]) => window.parley.store.get(id).text === t", [rid, "".join(pieces[:3])])
    assert Message.objects.get(pk=rid).text == ""  # not from the database: it has nothing yet

    # Every message in id order, the newest page of them, the reply last and in view.
    ids = shown_ids(ann)
    assert ids == sorted(set(ids)), ids
    assert len(ids) == PAGE
    assert ids[-1] == int(rid)
    expect(reply).to_be_in_viewport()
    expect(ann.locator("article.msg--user").last).to_contain_text("Sum it up")
    # It went on from the page's head: no replay of the room from its start.
    match = re.search(r"after=(\d+)", urls[0])
    assert match
    assert int(match.group(1)) > 72

    # The reply goes on, piece by piece, with nothing lost or doubled.
    for n in range(4, len(pieces) + 1):
        llm.step()
        wait_js(
            ann, "([id, t]) => window.parley.store.get(id).text === t", [rid, "".join(pieces[:n])]
        )
    expect(reply).to_have_attribute("data-status", "complete")
    stored = api_message(daphne, tokens["ann"], rid)
    assert page_text(ann, rid) == page_text(bob, rid) == stored["text"] == "".join(pieces)
    expect(reply.locator(".msg__body")).to_have_text(stored["text"].strip())
    assert shown_ids(ann) == ids  # nothing moved
    shot(ann, "room-opened-mid-reply")
    # And above them, as ann scrolls up, the rest of the room: every message, in order.
    scroll_to_start(ann)
    assert shown_ids(ann) == sorted(Message.objects.filter(room=room).values_list("pk", flat=True))


# --- item: scrolling up reaches the first message ---------------------------------------


def test_scrolling_up_loads_older_messages_to_the_first_in_order(daphne, contexts, mention_room):
    room, _ = mention_room
    from django.contrib.auth import get_user_model

    bob = get_user_model().objects.get(username="bob")
    total = 2 * PAGE + 31
    created = Message.objects.bulk_create(
        [
            Message(room=room, role=Role.USER, author=bob, text=f"history line {i}")
            for i in range(1, total + 1)
        ]
    )
    all_ids = sorted(m.pk for m in Message.objects.filter(room=room))
    assert len(all_ids) == len(created) == total

    ann = user_in(daphne, contexts, "ann", room.slug)
    expect(ann.locator("article.msg")).to_have_count(PAGE)
    assert shown_ids(ann) == all_ids[-PAGE:]
    history = ann.locator("#history")
    expect(history).to_have_attribute("data-state", "more")
    expect(ann.get_by_text("This is the start of the conversation")).to_be_hidden()

    loads = 0
    while ann.locator("#history").get_attribute("data-state") != "start":
        count = ann.locator("article.msg").count()
        # Scroll to the top; note where the message at the top of the page stands.
        top_id, top_at = ann.evaluate(
            """() => {
              const list = document.getElementById("messages");
              list.scrollTop = 0;
              const first = list.querySelector("article.msg[data-id]");
              return [first.dataset.id, first.getBoundingClientRect().top];
            }"""
        )
        expect(ann.locator("article.msg")).not_to_have_count(count)
        expect(history).not_to_have_attribute("data-state", "loading")
        loads += 1
        # The reader's place held: the message they were reading did not move.
        now_at = ann.evaluate(
            "(id) => document.querySelector(`[data-id='${id}']`).getBoundingClientRect().top",
            top_id,
        )
        assert abs(now_at - top_at) <= 2, (top_at, now_at)
        assert ann.evaluate("document.getElementById('messages').scrollTop") > 0
        assert loads <= 3

    assert loads == 2  # 50 + 50 + 31
    assert shown_ids(ann) == all_ids  # all of them, in order, each once
    ann.evaluate("document.getElementById('messages').scrollTop = 0")
    start = ann.get_by_text(f"This is the start of the conversation in {room.name}.")
    expect(start).to_be_in_viewport()
    first = ann.locator(f'article[data-id="{all_ids[0]}"]')
    expect(first).to_contain_text("history line 1")
    expect(first).to_be_in_viewport()
    expect(ann.get_by_role("button", name="Load earlier messages")).to_be_hidden()
    shot(ann, "room-history-start")

    # New messages still arrive at the end, after the whole history.
    send(ann, "and one more")
    expect(ann.locator("article.msg--mine[data-id]")).to_have_count(1)
    ids = shown_ids(ann)
    assert ids[:-1] == all_ids
    assert ids == sorted(set(ids))


def test_a_room_shorter_than_a_page_says_it_starts_there(daphne, contexts, mention_room):
    room, _ = mention_room
    from django.contrib.auth import get_user_model

    bob = get_user_model().objects.get(username="bob")
    Message.objects.create(room=room, role=Role.USER, author=bob, text="only one")
    ann = user_in(daphne, contexts, "ann", room.slug)
    expect(ann.locator("article.msg")).to_have_count(1)
    expect(ann.get_by_text("This is the start of the conversation")).to_be_visible()
    expect(ann.get_by_role("button", name="Load earlier messages")).to_be_hidden()


# --- item: a reply's footnote is the same after a reload --------------------------------


def test_a_reply_footnote_reads_the_same_after_a_reload(daphne, llm, contexts, mention_room):
    room, _ = mention_room
    bob = user_in(daphne, contexts, "bob", room.slug)
    ann = user_in(daphne, contexts, "ann", room.slug)

    def note(page: Page, rid: str) -> str:
        reply = page.locator(f'article[data-id="{rid}"]')
        expect(reply).not_to_have_attribute("data-status", re.compile("queued|streaming|paused"))
        text = reply.locator(".msg__note").text_content() or ""
        return text.strip()

    # Completed: its metrics.
    llm.set_default(Scenario.normal(["Four", " it", " is", "."]))
    send(bob, "@assistant what is 2+2?")
    done = reply_id(bob)
    expect(bob.locator(f'article[data-id="{done}"] .msg__note')).to_have_text(
        re.compile(r"^4 tokens( · \d+\.\d s)?$")
    )
    # Stopped by the owner, not the asker: who stopped it.
    llm.set_default(Scenario.endless(("tick ",), interval=0.03))
    send(bob, "@assistant count for me")
    expect(bob.locator("article.msg--assistant[data-id]")).to_have_count(2)
    stopped = reply_id(bob)
    reply = ann.locator(f'article[data-id="{stopped}"]')
    expect(reply).to_have_attribute("data-status", "streaming")
    reply.get_by_role("button", name="Stop").click()
    expect(bob.locator(f'article[data-id="{stopped}"] .msg__note')).to_have_text("Stopped by ann")
    # Failed: the reason members read.
    llm.set_default(Scenario.error_status(500, message="model exploded"))
    send(bob, "@assistant fail please")
    expect(bob.locator("article.msg--assistant[data-id]")).to_have_count(3)
    failed = reply_id(bob)
    expect(bob.locator(f'article[data-id="{failed}"] .msg__note')).to_contain_text("model exploded")

    live = {rid: (note(bob, rid), note(ann, rid)) for rid in (done, stopped, failed)}
    for rid, (seen_by_bob, seen_by_ann) in live.items():
        assert seen_by_bob == seen_by_ann, rid
    for page in (bob, ann):
        page.reload()
        expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        for rid, (seen, _) in live.items():
            assert note(page, rid) == seen, rid
    shot(bob, "room-footnotes-after-reload")
