"""Versions of a reply on the page: regenerate, watch the new version stream in the same
article on a second member's page, page through versions, and pick one.

The same real Chromium and daphne as test_room_page.py (its fixtures and helpers).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_room_page import (  # noqa: F401 - fixtures used by name
    api_message,
    browser,
    contexts,
    reply_id,
    send,
    trio,
    user_in,
)
from tests.support.openai_server import Scenario

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_regenerate_and_page_through_versions(
    daphne,
    llm,
    contexts,  # noqa: F811
    trio,  # noqa: F811
    transport,
):
    room, tokens = trio
    llm.script(Scenario.normal(["First answer."]), Scenario.stepped(["Second ", "answer."]))
    ann = user_in(daphne, contexts, "ann", room.slug, f"?transport={transport}")
    bob = user_in(daphne, contexts, "bob", room.slug, f"?transport={transport}")
    send(bob, "a question @assistant")
    reply = reply_id(bob)
    on_bob = bob.locator(f'article[data-id="{reply}"]')
    on_ann = ann.locator(f'article[data-id="{reply}"]')
    expect(on_ann.locator(".msg__body")).to_have_text("First answer.")
    # Cat neither asked nor owns the room: no Regenerate for her; bob asked, ann owns.
    cat = user_in(daphne, contexts, "cat", room.slug)
    expect(cat.locator(f'article[data-id="{reply}"] .btn--regenerate')).to_be_hidden()

    bob_regen = on_bob.get_by_role("button", name="Ask for another answer")
    bob_regen.click()
    # The new version streams in the same article, on the other member's page too.
    expect(on_ann.locator(".msg__version-label")).to_have_text("2/2")
    expect(on_ann.locator(".badge")).to_have_text("streaming")
    expect(bob_regen).to_be_hidden()  # one answer at a time
    llm.step()
    expect(on_ann.locator(".msg__body")).to_contain_text("Second")
    llm.step()
    expect(on_ann.locator(".msg__body")).to_have_text("Second answer.")
    expect(ann.locator("article.msg--assistant")).to_have_count(1)  # no article of its own

    # Paging is the reader's own view: ann goes back to version 1, bob stays on 2.
    on_ann.get_by_role("button", name="Previous version").click()
    expect(on_ann.locator(".msg__version-label")).to_have_text("1/2")
    expect(on_ann.locator(".msg__body")).to_have_text("First answer.")
    expect(on_bob.locator(".msg__body")).to_have_text("Second answer.")

    # The owner picks version 1: durable, and every page shows it.
    on_ann.get_by_role("button", name="Use this version").click()
    expect(on_bob.locator(".msg__version-label")).to_have_text("1/2")
    expect(on_bob.locator(".msg__body")).to_have_text("First answer.")
    expect(on_ann.get_by_role("button", name="Use this version")).to_be_hidden()
    assert api_message(daphne, tokens["cat"], reply)["current"] == reply

    # A reload shows the same.
    bob.reload()
    expect(on_bob.locator(".msg__version-label")).to_have_text("1/2")
    expect(on_bob.locator(".msg__body")).to_have_text("First answer.")
    on_bob.get_by_role("button", name="Next version").click()
    expect(on_bob.locator(".msg__body")).to_have_text("Second answer.")
