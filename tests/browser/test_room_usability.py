# ruff: noqa: F811 (the fixtures imported from test_room_page are arguments here)
"""The room page's smaller parts as a user meets them, in Chromium on a real daphne.

The phone drawer, the error pages, leaving a room and removing a member, the composer's
small rules, and the voice room's speaker offer. Fixtures and helpers are
test_room_page.py's; waiting is Playwright's ``expect`` (or ``wait_js``), never a sleep.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from chat.services import room_join
from tests.browser.test_room_page import (  # noqa: F401 (fixtures)
    browser,
    contexts,
    login,
    open_room,
    send,
    shot,
    trio,
    user_in,
    wait_js,
)
from tests.support.openai_server import Scenario

pytestmark = [pytest.mark.django_db(transaction=True)]

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def on_phone(daphne: Any, contexts: Any, username: str, slug: str) -> Page:
    page = login(contexts(**PHONE), daphne, username)
    open_room(page, daphne, slug)
    return page


# --- the room details drawer on a phone ----------------------------------------------------


def test_the_phone_drawer_closes_by_button_backdrop_and_escape(daphne, contexts, trio):
    room, _ = trio
    bob = on_phone(daphne, contexts, "bob", room.slug)
    side = bob.locator("#side")
    toggle = bob.get_by_role("button", name=re.compile("room details"))

    def open_drawer() -> None:
        toggle.click()
        expect(side).to_be_in_viewport(ratio=1)
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(bob.locator("#presence")).to_contain_text("bob (you)")

    def closed() -> None:
        expect(side).not_to_be_in_viewport()
        expect(toggle).to_have_attribute("aria-expanded", "false")
        expect(bob.get_by_label("Message", exact=True)).to_be_in_viewport()

    # The close button, at the drawer's top right, where the open button was.
    open_drawer()
    close = bob.get_by_role("button", name="Close details")
    expect(close).to_be_in_viewport()
    box = close.bounding_box()
    assert box is not None
    assert box["x"] + box["width"] > 390 - 80
    assert box["y"] < 80
    shot(bob, "room-phone-drawer")
    close.click()
    closed()
    expect(toggle).to_be_focused()  # focus returns to where it came from

    # A tap on the dimmed conversation beside the drawer.
    open_drawer()
    bob.mouse.click(20, 400)
    closed()

    # Escape.
    open_drawer()
    bob.keyboard.press("Escape")
    closed()


# --- error pages ----------------------------------------------------------------------------


def test_the_404_page_is_styled_with_the_header_and_a_way_back(daphne, contexts, trio):
    room, _ = trio
    bob = login(contexts(), daphne, "bob")
    response = bob.goto(f"{daphne.http_url}/rooms/no-such-room/")
    assert response is not None
    assert response.status == 404
    expect(bob.get_by_role("heading", name="There is nothing here")).to_be_visible()
    expect(bob.locator("header.site")).to_contain_text("bob")  # the site header, signed in
    # Styled: the stylesheet applied (the card has the page's surface and radius).
    card = bob.locator(".oops")
    assert card.evaluate("(el) => getComputedStyle(el).borderTopLeftRadius") == "12px"
    shot(bob, "page-404")
    bob.get_by_role("link", name="Back to your rooms").click()
    expect(bob).to_have_url(f"{daphne.http_url}/")
    expect(bob.get_by_role("link", name="Design review")).to_be_visible()


# --- leaving a room, removing a member ------------------------------------------------------


def test_a_member_leaves_and_the_owner_removes_a_member_from_the_page(daphne, contexts, trio):
    room, _ = trio
    ann = user_in(daphne, contexts, "ann", room.slug)  # the owner
    bob = user_in(daphne, contexts, "bob", room.slug)
    cat = user_in(daphne, contexts, "cat", room.slug)
    members = ann.locator("#members")
    expect(members.locator("li")).to_have_count(3)
    expect(members.locator("li").first).to_contain_text("owner")
    # Only the owner has Remove buttons; the owner has no Leave.
    expect(bob.get_by_role("button", name=re.compile("^Remove"))).to_have_count(0)
    expect(ann.get_by_role("button", name="Leave room")).to_have_count(0)

    # The owner removes cat: asked first, then cat's open page loses the room.
    ann.once("dialog", lambda d: d.accept())
    ann.get_by_role("button", name="Remove cat from the room").click()
    expect(members.locator("li")).to_have_count(2)
    expect(cat.locator("#conn")).to_have_attribute("data-state", "closed")
    expect(cat.locator(".alert")).to_contain_text("not a member of this room")

    # bob leaves; declining the question first changes nothing.
    bob.once("dialog", lambda d: d.dismiss())
    bob.get_by_role("button", name="Leave room").click()
    expect(bob.locator("#conn")).to_have_attribute("data-state", "open")
    bob.once("dialog", lambda d: d.accept())
    bob.get_by_role("button", name="Leave room").click()
    expect(bob).to_have_url(f"{daphne.http_url}/")
    expect(bob.locator("#public-rooms")).to_contain_text("Design review")  # to join again
    expect(bob.locator("#my-rooms")).not_to_contain_text("Design review")
    ann.reload()
    expect(ann.locator("#members li")).to_have_count(1)


# --- a voice room offers the speaker ----------------------------------------------------------


def test_a_voice_room_offers_the_speaker_and_remembers_the_choice(
    daphne,
    contexts,
    trio,
    make_room,
):
    plain, _ = trio
    ann = plain.owner
    radio = make_room(ann, "Radio", voice="streaming")
    bob_user = type(ann).objects.get(username="bob")
    room_join(room=radio, user=bob_user)

    bob = user_in(daphne, contexts, "bob", radio.slug)
    expect(bob.locator("#room-voice")).to_have_text("Spoken: sentence by sentence")
    offer = bob.get_by_role("region", name="Speaker")
    expect(offer).to_be_visible()
    expect(offer).to_contain_text("Replies in this room are spoken (sentence by sentence)")
    expect(bob.get_by_role("button", name="Speaker off")).to_be_visible()
    shot(bob, "room-voice-offer")
    offer.get_by_role("button", name="Turn on speaker").click()
    expect(offer).to_be_hidden()
    expect(bob.get_by_role("button", name="Speaker on")).to_have_attribute("aria-pressed", "true")
    wait_js(bob, "window.parley.player.debugState().context === 'running'")

    # The choice survives a reload, and the offer is not made again.
    bob.reload()
    expect(bob.locator("#conn")).to_have_attribute("data-state", "open")
    expect(bob.get_by_role("button", name="Speaker on")).to_have_attribute("aria-pressed", "true")
    expect(offer).to_be_hidden()

    # Per room: a room without voice makes no offer and says its voice is off.
    open_room(bob, daphne, plain.slug)
    expect(bob.locator("#room-voice")).to_have_text("Voice off")
    expect(bob.get_by_role("region", name="Speaker")).to_have_count(0)
    expect(bob.get_by_role("button", name="Speaker off")).to_be_visible()

    # "Not now" is a choice too: kept, and not asked again.
    owner = user_in(daphne, contexts, "ann", radio.slug)
    owner.get_by_role("region", name="Speaker").get_by_role("button", name="Not now").click()
    expect(owner.get_by_role("region", name="Speaker")).to_be_hidden()
    owner.reload()
    expect(owner.locator("#conn")).to_have_attribute("data-state", "open")
    expect(owner.get_by_role("region", name="Speaker")).to_be_hidden()
    expect(owner.get_by_role("button", name="Speaker off")).to_be_visible()


# --- the composer's small rules -----------------------------------------------------------


def test_send_is_disabled_over_the_limit_with_the_reason_shown(daphne, contexts, trio):
    room, _ = trio
    ann = user_in(daphne, contexts, "ann", room.slug)
    limit = ann.evaluate("JSON.parse(document.getElementById('parley-config').textContent)")[
        "max_chars"
    ]
    box = ann.get_by_label("Message", exact=True)
    send_button = ann.get_by_role("button", name="Send", exact=True)
    box.fill("a" * (limit + 2))
    expect(send_button).to_be_disabled()
    expect(ann.locator("#counter")).to_have_text(f"2 characters over the limit of {limit}")
    expect(send_button).to_have_accessible_description(f"2 characters over the limit of {limit}")
    box.press("Enter")  # Enter does not send it either
    expect(ann.locator(".alert")).to_contain_text(f"at most {limit} characters")
    expect(ann.locator("article.msg")).to_have_count(0)
    box.press("Backspace")
    expect(ann.locator("#counter")).to_have_text(f"1 character over the limit of {limit}")
    box.press("Backspace")
    expect(send_button).to_be_enabled()
    expect(ann.locator("#counter")).to_have_text("0")


def test_ask_the_assistant_resets_after_a_send(daphne, llm, contexts, make_user, make_room):
    llm.set_default(Scenario.normal(["Sure."]))
    ann, _ = make_user("ann")
    room = make_room(ann, "Quiet", assistant="mention")
    page = user_in(daphne, contexts, "ann", room.slug)
    ask = page.get_by_label("Ask the assistant")
    ask.check()
    send(page, "first, asked")
    expect(ask).not_to_be_checked()
    replies = page.locator("article.msg--assistant[data-id]")
    expect(replies).to_have_count(1)
    expect(replies.first).to_have_attribute("data-status", "complete")
    send(page, "second, not asked")
    expect(page.locator("article.msg--mine[data-id]")).to_have_count(2)
    # A third message that does ask: once its reply is in, the second one's would be too.
    send(page, "third @assistant")
    expect(page.locator("article.msg--mine[data-id]")).to_have_count(3)
    expect(replies).to_have_count(2)
    expect(replies.last).to_have_attribute("data-status", "complete")
    texts = page.locator("article.msg[data-id] .msg__body").all_inner_texts()
    assert texts == ["first, asked", "Sure.", "second, not asked", "third @assistant", "Sure."]


def test_a_failed_message_can_be_dismissed(daphne_factory, llm, contexts, trio):
    room, _ = trio
    llm.set_default(Scenario.normal(["ok"]))
    # One send, and then none for a long while: the second send really fails (rate_limited).
    server = daphne_factory(PARLEY_SEND_BURST="1", PARLEY_SEND_PER_SECOND="0.001")
    ann = user_in(server, contexts, "ann", room.slug)
    send(ann, "this one goes")
    expect(ann.locator("article.msg--mine[data-id]")).to_have_count(1)
    send(ann, "this one cannot")
    failed = ann.locator("article.msg--pending")
    expect(failed).to_have_attribute("data-status", "failed")
    expect(failed.locator(".msg__note")).to_contain_text("Not sent:")
    expect(failed.get_by_role("button", name="Retry")).to_be_visible()
    shot(ann, "room-failed-pending")
    failed.get_by_role("button", name="Dismiss").click()
    expect(ann.locator("article.msg--pending")).to_have_count(0)
    expect(ann.locator("article.msg--mine")).to_have_count(1)
    assert ann.evaluate("window.parley.store.pending.size") == 0


def test_selects_are_whole_and_labelled_at_both_widths(daphne, contexts, trio):
    room, _ = trio
    fits = """(el) => {
      const style = getComputedStyle(el);
      const probe = document.createElement("span");
      probe.style.font = style.font;
      probe.style.position = "absolute";
      probe.style.whiteSpace = "nowrap";
      document.body.append(probe);
      const room = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
      const widest = Math.max(...[...el.options].map((o) => {
        probe.textContent = o.text;
        return probe.getBoundingClientRect().width;
      }));
      probe.remove();
      return room + 0.5 >= widest;
    }"""
    wide = user_in(daphne, contexts, "ann", room.slug)
    voice = wide.get_by_label("Voice mode for your messages")
    voice.select_option("streaming")
    assert voice.evaluate(fits), "the voice select cuts its options at 1280 px"
    phone = on_phone(daphne, contexts, "bob", room.slug)
    label = phone.locator("label[for=voice-mode] .tool__label")
    expect(label).to_be_visible()
    expect(label).to_have_text("Voice")
    assert phone.get_by_label("Voice mode for your messages").evaluate(fits)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone.get_by_role("button", name=re.compile("online, room details")).click()
    expect(phone.locator("label[for=transport] .tool__label")).to_be_visible()


def test_rooms_with_the_same_name_can_be_told_apart(daphne, contexts, trio, make_room):
    room, _ = trio
    bob_user = type(room.owner).objects.get(username="bob")
    twin = make_room(bob_user, room.name)
    assert twin.slug != room.slug
    bob = login(contexts(), daphne, "bob")
    cards = bob.locator("#my-rooms .room-card").filter(has_text=room.name)
    expect(cards).to_have_count(2)
    expect(cards.filter(has_text=f"/rooms/{room.slug}/")).to_contain_text("by ann")
    expect(cards.filter(has_text=f"/rooms/{twin.slug}/")).to_contain_text("you own it")
