"""Edit, delete and rate on the room page, seen by a second member's page, over both
transports. The same real Chromium and daphne as test_room_page.py (its fixtures)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Dialog, expect

from tests.browser.test_room_page import (  # noqa: F401 - fixtures used by name
    api_message,
    browser,
    contexts,
    reply_id,
    send,
    shot,
    trio,
    user_in,
)
from tests.support.openai_server import Scenario

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_edit_delete_and_rate_show_on_another_member_s_page(
    daphne,
    llm,
    contexts,  # noqa: F811
    trio,  # noqa: F811
    transport,
):
    """Ann acts on her page (over `transport`); bob, on his, sees the edit, the
    tombstone and the counts as they happen. An EventSource hears only the names the page
    listens for, so the SSE run proves `edit`, `delete` and `rating` are among them."""
    room, tokens = trio
    llm.set_default(Scenario.normal(["Paris", " it is."]))
    query = f"?transport={transport}"
    ann = user_in(daphne, contexts, "ann", room.slug, query)
    bob = user_in(daphne, contexts, "bob", room.slug, query)

    send(ann, "capitol of France?")
    rid = reply_id(ann)
    expect(ann.locator(f'article[data-id="{rid}"]')).to_have_attribute("data-status", "complete")
    question = ann.locator("article.msg--mine[data-id]").last
    qid = question.get_attribute("data-id")
    assert qid

    # Edit inline: the box, Save; bob sees the new text marked "edited".
    question.get_by_role("button", name="Edit").click()
    box = question.get_by_label("Edit your message")
    expect(box).to_have_value("capitol of France?")
    box.fill("capital of France?")
    question.get_by_role("button", name="Save").click()
    theirs = bob.locator(f'article[data-id="{qid}"]')
    expect(theirs.locator(".msg__body")).to_have_text("capital of France?")
    expect(theirs.locator(".msg__edited")).to_have_text("edited")
    expect(question.locator(".msg__edited")).to_have_text("edited")
    # Bob cannot edit ann's message, and has no Delete on it (not his, not an owner).
    expect(theirs.get_by_role("button", name="Edit")).to_have_count(0)
    expect(theirs.get_by_role("button", name="Delete")).to_have_count(0)

    # Rate: ann up, bob down; both pages show both counts.
    ann.locator(f'article[data-id="{rid}"] .msg__rate-up').click()
    bob.locator(f'article[data-id="{rid}"] .msg__rate-down').click()
    for page in (ann, bob):
        reply = page.locator(f'article[data-id="{rid}"]')
        expect(reply.locator(".msg__rate-up")).to_have_text("▲ 1")
        expect(reply.locator(".msg__rate-down")).to_have_text("▼ 1")
    expect(ann.locator(f'article[data-id="{rid}"] .msg__rate-up')).to_have_attribute(
        "aria-pressed", "true"
    )

    # Delete, after the confirm: a tombstone on bob's page, text gone.
    def accept(dialog: Dialog) -> None:
        assert "Delete this message" in dialog.message
        dialog.accept()

    ann.once("dialog", accept)
    question.get_by_role("button", name="Delete").click()
    expect(theirs.locator(".msg__tombstone")).to_have_text("message deleted")
    expect(theirs).not_to_contain_text("capital of France?")
    expect(question.locator(".msg__tombstone")).to_have_text("message deleted")
    if transport == "ws":
        shot(bob, "lifecycle-tombstone")
    assert api_message(daphne, tokens["bob"], qid).get("deleted") is True

    # A reload shows the same: the edit mark gone with the text, the counts kept.
    bob.reload()
    expect(bob.locator(f'article[data-id="{qid}"] .msg__tombstone')).to_have_text("message deleted")
    expect(bob.locator(f'article[data-id="{rid}"] .msg__rate-up')).to_have_text("▲ 1")
