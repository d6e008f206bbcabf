"""Waiting for the assistant, on the page: places in line, and the demo model said plainly.

The same real Chromium and daphne as test_room_page.py (its fixtures and helpers).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_room_page import (  # noqa: F401 - fixtures used by name
    browser,
    contexts,
    send,
    shot,
    trio,
    user_in,
)
from tests.support.openai_server import Scenario

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_a_waiting_reply_shows_its_place_in_line_and_moves_up(
    daphne,
    llm,
    contexts,  # noqa: F811
    trio,  # noqa: F811
    transport,
):
    """Bob follows over either transport: an EventSource hears only the event names the
    page listens for, so `queue` must be one of them."""
    room, _ = trio
    llm.set_default(Scenario.stepped(["Done."]))
    ann = user_in(daphne, contexts, "ann", room.slug)
    bob = user_in(daphne, contexts, "bob", room.slug, f"?transport={transport}")
    send(ann, "first question")
    expect(bob.locator(".badge", has_text="streaming")).to_have_count(1)
    send(ann, "second question")
    send(ann, "third question")

    # Bob sees where ann's waiting questions stand, not just "queued".
    second = bob.locator(".badge", has_text="queued · 2nd in line")
    third = bob.locator(".badge", has_text="queued · 3rd in line")
    expect(second).to_have_count(1)
    expect(third).to_have_count(1)
    if transport == "ws":
        shot(bob, "waiting-in-line")

    llm.step()  # the first reply ends: the third question is now 2nd in line
    expect(third).to_have_count(0)
    expect(second).to_have_count(1)
    llm.step()
    expect(second).to_have_count(0)
    llm.step()
    expect(bob.locator(".badge:visible")).to_have_count(0)  # all complete
    # The model server has no visible line: no "waiting for the model" is made up.
    expect(bob.get_by_text("waiting for the model")).to_have_count(0)
    # And the demo note is for the bundled model only.
    expect(bob.locator("#demo-model")).to_have_count(0)


def test_the_bundled_model_is_said_to_be_a_tiny_demo(daphne_factory, contexts, trio):  # noqa: F811
    room, _ = trio
    server = daphne_factory(
        LLM_BACKEND="local", LLM_MODEL="gemma-3-270m", OPENAI_BASE_URL="", OPENAI_API_KEY=""
    )
    page = user_in(server, contexts, "ann", room.slug)
    note = page.locator("#demo-model")
    expect(note).to_contain_text("tiny demo model")
    how = note.get_by_text("Connect a real one")
    expect(how).to_be_visible()
    expect(note.get_by_text("OPENAI_BASE_URL")).to_be_hidden()
    how.click()
    expect(note.get_by_text("OPENAI_BASE_URL")).to_be_visible()
    expect(note).to_contain_text("Configuration")
