"""The room settings page in a real browser (Chromium through Playwright) on a real
daphne: the owner creates an assistant, makes a member an owner and makes an invite link;
a member's page, read-only, shows each change live (the `room` event). No sleeps: every
wait is Playwright's auto-waiting ``expect``."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from chat.models import Membership
from tests.browser.test_room_page import (  # noqa: F401 - fixtures
    ARTIFACTS,
    browser,
    contexts,
    login,
)

pytestmark = [pytest.mark.django_db(transaction=True)]


def _errors(page: Page) -> list[str]:
    seen: list[str] = []

    def note(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.append(message.text)

    page.on("console", note)
    page.on("pageerror", lambda exc: seen.append(str(exc)))
    return seen


def test_owner_edits_and_a_members_page_follows_live(
    daphne: Any,
    contexts: Any,  # noqa: F811 - the fixture imported above
    make_user: Any,
    make_room: Any,
    llm: Any,
) -> None:
    ann, _ = make_user("ann")
    bob, _ = make_user("bob")
    room = make_room(ann, "Studio", assistant="mention")
    Membership.objects.create(room=room, user=bob)
    url = f"{daphne.http_url}/rooms/{room.slug}/settings"

    owner = login(contexts(), daphne, "ann")
    owner_errors = _errors(owner)
    member = login(contexts(), daphne, "bob")
    member_errors = _errors(member)
    member.goto(url)
    expect(member.locator("#read-only")).to_be_visible()
    expect(member.locator("#assistants li[data-handle=assistant]")).to_be_visible()
    expect(member.locator("#assistant-form")).to_have_count(0)

    owner.goto(f"{daphne.http_url}/rooms/{room.slug}/")
    owner.locator("#room-settings").click()
    expect(owner).to_have_url(url)
    expect(owner.locator("#model-select option[value='default/fake-model']")).to_have_count(1)
    expect(owner.locator("#models-error")).to_be_hidden()
    owner.locator("#assistant-new summary").click()
    form = owner.locator("#assistant-form")
    form.locator("input[name=handle]").fill("coder")
    form.locator("input[name=name]").fill("Code reviewer")
    form.locator("input[name=avatar]").fill("🤖")
    form.locator("select[name=model]").select_option("default/fake-model")
    form.locator("input[name=temperature]").fill("0.3")
    form.get_by_role("button", name="Create").click()
    expect(owner.locator("#assistants li[data-handle=coder]")).to_contain_text("Code reviewer")
    # The member's page, open all along, shows it too: the room event made it re-read.
    expect(member.locator("#assistants li[data-handle=coder]")).to_contain_text("Code reviewer")

    # A bad handle is said plainly, and nothing appears.
    form.locator("input[name=handle]").fill("ann")
    form.locator("input[name=name]").fill("Clash")
    form.get_by_role("button", name="Create").click()
    expect(owner.locator("#settings-error")).to_contain_text("member of this room")
    expect(owner.locator("#assistants li")).to_have_count(2)

    owner.locator("#members li[data-username=bob]").get_by_role(
        "button", name="Make an owner"
    ).click()
    expect(member.locator("#members li[data-username=bob]")).to_contain_text("owner")

    owner.locator("#invite-create").click()
    expect(owner.locator("#invites li")).to_have_count(1)
    link = owner.locator("#invites input").input_value()
    ARTIFACTS.mkdir(exist_ok=True)
    owner.screenshot(path=str(ARTIFACTS / "settings-owner.png"), full_page=True)
    member.screenshot(path=str(ARTIFACTS / "settings-member.png"), full_page=True)
    assert link.startswith(f"{daphne.http_url}/invite/")

    # The browser logs the refused create's 400; nothing else went wrong on either page.
    assert [e for e in owner_errors if "status of 400" not in e] == []
    assert len(owner_errors) == 1
    assert member_errors == []
