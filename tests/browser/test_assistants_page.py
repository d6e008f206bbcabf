# ruff: noqa: F811 (the fixtures imported from test_room_page are arguments here)
"""A room's assistants on the room page, in Chromium on a real daphne: ``@`` completion in
the composer, replies under their assistant's name and avatar, and the page following
the room's settings live (the ``room`` event).

Fixtures and helpers are test_room_page.py's; waiting is Playwright's ``expect`` (or
``wait_js``), never a sleep. Most assistants are made with the ORM here (the settings
page has its own tests).

The end-to-end test makes its assistant on the settings page, as an owner would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser.test_room_page import (  # noqa: F401 (fixtures)
    browser,
    contexts,
    login,
    open_room,
    shot,
    trio,
    user_in,
)
from tests.support.assistants import add_assistant, add_provider
from tests.support.openai_server import FakeOpenAIServer, Scenario

pytestmark = [pytest.mark.django_db(transaction=True)]

CODER_KEY = "coder-provider-key"


@pytest.fixture
def coder_llm() -> Iterator[FakeOpenAIServer]:
    """The coder's own model server (a second provider), on loopback."""
    server = FakeOpenAIServer(api_key=CODER_KEY, model="coder-model").start()
    yield server
    server.stop()


@pytest.fixture
def coder_room(trio, coder_llm) -> Any:
    """trio's room with an assistant ``coder`` ("Coder", 🛠) on its own provider,
    answering when mentioned."""
    room, tokens = trio
    add_provider("coderhost", coder_llm.base_url, api_key=CODER_KEY)
    add_assistant(room, "coder", "Coder", avatar="🛠", provider="coderhost", model="coder-model")
    return room, tokens


def composer(page: Page) -> Any:
    return page.get_by_label("Message", exact=True)


def options(page: Page) -> Any:
    return page.get_by_role("listbox").get_by_role("option")


def test_at_offers_assistants_and_members_by_keyboard_and_mouse(daphne, contexts, coder_room):
    room, _ = coder_room
    bob = user_in(daphne, contexts, "bob", room.slug)
    box = composer(bob)
    box.press_sequentially("hi @")
    listbox = bob.get_by_role("listbox")
    expect(listbox).to_be_visible()
    # The room's assistants first (handle, name), then the other members.
    expect(options(bob)).to_have_count(4)
    expect(options(bob).nth(0)).to_contain_text("@assistant")
    expect(options(bob).nth(1)).to_contain_text("@coder")
    expect(options(bob).nth(1)).to_contain_text("Coder")
    expect(options(bob).nth(1).locator(".mention__avatar")).to_have_text("🛠")
    expect(listbox).to_contain_text("@ann")
    expect(listbox).to_contain_text("@cat")
    expect(listbox).not_to_contain_text("@bob")  # not yourself
    # The first is active; the textarea names it (aria-activedescendant).
    first = options(bob).nth(0)
    expect(first).to_have_attribute("aria-selected", "true")
    expect(box).to_have_attribute("aria-activedescendant", first.get_attribute("id") or "")
    box.press("ArrowDown")
    second = options(bob).nth(1)
    expect(second).to_have_attribute("aria-selected", "true")
    expect(box).to_have_attribute("aria-activedescendant", second.get_attribute("id") or "")
    box.press("ArrowUp")
    expect(first).to_have_attribute("aria-selected", "true")
    # Escape closes it and leaves the text; Enter then sends nothing it should not.
    box.press("Escape")
    expect(listbox).to_be_hidden()
    expect(box).to_have_value("hi @")

    # Filtered as you type; Tab picks.
    box.press_sequentially("co")
    expect(options(bob)).to_have_count(1)
    expect(options(bob).first).to_contain_text("@coder")
    box.press("Tab")
    expect(listbox).to_be_hidden()
    expect(box).to_have_value("hi @coder ")
    expect(box).to_be_focused()

    # A member, picked with the mouse.
    box.press_sequentially("and @ca")
    expect(options(bob)).to_have_count(1)
    shot(bob, "room-mention")
    options(bob).first.click()
    expect(box).to_have_value("hi @coder and @cat ")
    expect(box).to_be_focused()
    # Nothing matches: no list.
    box.press_sequentially("@zz")
    expect(listbox).to_be_hidden()
    # A handle typed out in full has nothing left to complete: Enter sends.
    box.fill("")
    box.press_sequentially("thanks @cat")
    expect(listbox).to_be_hidden()
    box.press("Enter")
    expect(bob.locator("article.msg--mine[data-id]")).to_contain_text("thanks @cat")


def test_the_owner_adds_an_assistant_a_member_mentions_it_and_both_pages_show_its_reply(
    daphne, llm, coder_llm, contexts, trio
):
    """The whole path: the owner creates `coder` on the settings page, on a provider the
    admin added; bob's page, open all along, learns of it live (the room event); bob asks
    it with `@` completion; both pages stream its reply under its name and avatar."""
    room, _ = trio
    add_provider("coderhost", coder_llm.base_url, api_key=CODER_KEY)
    coder_llm.set_default(Scenario.slow(["Looks ", "good ", "to me."], delay=0.1))
    llm.set_default(Scenario.normal(["wrong model"]))
    bob = user_in(daphne, contexts, "bob", room.slug)
    ann = user_in(daphne, contexts, "ann", room.slug)

    ann.locator("#room-settings").click()
    expect(ann).to_have_url(f"{daphne.http_url}/rooms/{room.slug}/settings")
    ann.locator("#assistant-new summary").click()
    form = ann.locator("#assistant-form")
    form.locator("input[name=handle]").fill("coder")
    form.locator("input[name=name]").fill("Coder")
    form.locator("input[name=avatar]").fill("🛠")
    # The model list is the provider's own GET /v1/models.
    form.locator("select[name=model]").select_option("coderhost/coder-model")
    form.get_by_role("button", name="Create").click()
    expect(ann.locator("#assistants li[data-handle=coder]")).to_contain_text("Coder")
    assert CODER_KEY not in ann.content()
    open_room(ann, daphne, room.slug)

    box = composer(bob)
    box.press_sequentially("@co")
    expect(options(bob)).to_have_count(1)
    box.press("Enter")  # picks @coder (it does not send)
    expect(box).to_have_value("@coder ")
    box.press_sequentially("please review the patch")
    box.press("Enter")

    for page in (bob, ann):
        reply = page.locator('article.msg--assistant[data-assistant="coder"]')
        expect(reply).to_have_count(1)
        expect(reply.locator(".msg__author")).to_have_text("Coder")
        expect(reply.locator(".msg__avatar")).to_have_text("🛠")
        expect(reply).to_have_attribute("data-status", "complete")
        expect(reply.locator(".msg__body")).to_have_text("Looks good to me.")
    shot(ann, "room-assistant-reply")
    # It came from the coder's model server, asked for the coder's model.
    asked = [r for r in coder_llm.requests if r.method == "POST"]
    assert len(asked) == 1
    assert asked[0].body["model"] == "coder-model"
    assert "please review the patch" in str(asked[0].body["messages"])
    assert not [r for r in llm.requests if "please review the patch" in str(r.body)]


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_a_room_event_updates_the_page(daphne, contexts, trio, transport):
    """An assistant added through the API reaches an open page live, over either
    transport."""
    room, tokens = trio
    bob = user_in(daphne, contexts, "bob", room.slug, f"?transport={transport}")
    r = httpx.post(
        f"{daphne.http_url}/api/rooms/{room.slug}/assistants",
        headers={"Authorization": f"Bearer {tokens['ann']}"},
        json={
            "handle": "translator",
            "name": "Translator",
            "model": "default/fake-model",
            "mode": "mention",
            "avatar": "#336699",
        },
        timeout=10,
    )
    assert r.status_code == 201, r.text
    # No reload: the header and `@` know the new assistant.
    expect(bob.locator("#room-answers")).to_contain_text("@translator")
    box = composer(bob)
    box.press_sequentially("@tr")
    expect(options(bob)).to_have_count(1)
    expect(options(bob).first).to_contain_text("Translator")
    expect(options(bob).first.locator(".mention__avatar")).to_have_text("T")
    expect(options(bob).first.locator(".mention__avatar")).to_have_css(
        "background-color", re.compile(r"rgb\(51, 102, 153\)")
    )


def test_the_page_applies_a_room_event_and_ignores_unknown_ones(daphne, contexts, trio):
    """The page's side of ``room``, whoever emits it: the frame is added to bob's real
    connection (Playwright passes the server's frames through and sends this one after
    them, at the next seq), so this runs on its own. The end-to-end version, with the
    event emitted by the server, is test_a_room_event_updates_the_page."""
    room, _ = trio
    bob = login(contexts(), daphne, "bob")
    sockets: list[WebSocketRoute] = []

    def passed_through(ws: WebSocketRoute) -> None:
        ws.connect_to_server()  # every frame both ways, as without the route
        sockets.append(ws)

    bob.route_web_socket(re.compile(r"/ws/rooms/"), passed_through)
    open_room(bob, daphne, room.slug)
    seq = bob.evaluate("window.parley.store.lastSeq")
    now = bob.evaluate("window.parley.room")
    translator = {
        "handle": "translator",
        "name": "Translator",
        "avatar": "#336699",
        "model": "default/fake-model",
        "mode": "mention",
        "shared": False,
    }
    changed = {
        **now,
        "name": "Renamed room",
        "voice": "streaming",
        "assistants": [*now["assistants"], translator],
    }
    sockets[0].send(json.dumps({"type": "room", "seq": seq + 1, "room": changed}))
    expect(bob.locator(".room__title h1")).to_have_text("Renamed room")
    expect(bob).to_have_title("Renamed room · Parley")
    expect(bob.locator("#room-voice")).to_have_text("Spoken: sentence by sentence")
    expect(bob.locator("#room-answers")).to_have_text(
        "Assistant answers every message · @translator when mentioned"
    )
    # Durable: it took its seq. Event types the page does not know change nothing.
    assert bob.evaluate("window.parley.store.lastSeq") == seq + 1
    sockets[0].send(json.dumps({"type": "later_durable", "seq": seq + 2, "x": 1}))
    sockets[0].send(json.dumps({"type": "later_live", "x": 1}))
    box = composer(bob)
    box.press_sequentially("@tr")
    expect(options(bob)).to_have_count(1)
    avatar = options(bob).first.locator(".mention__avatar")
    expect(avatar).to_have_text("T")
    expect(avatar).to_have_css("background-color", "rgb(51, 102, 153)")
    expect(bob.locator("#conn")).to_have_attribute("data-state", "open")
