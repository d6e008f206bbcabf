"""Mention parsing and the routing rule (chat/assistants/routing.py), and how a prompt
labels each assistant's replies (chat/llm/prompt.py)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from chat.assistants.routing import mentioned, mentions, route
from chat.llm.prompt import Turn, build_messages, system_text

HANDLE = st.from_regex(r"[a-z][a-z0-9_]{0,10}[a-z0-9]", fullmatch=True)
WORD = st.from_regex(r"[A-Za-z0-9,!?]{1,8}", fullmatch=True)


@dataclass
class P:
    handle: str
    mode: str = "mention"


@given(st.lists(st.one_of(HANDLE.map(lambda h: "@" + h), WORD), max_size=12))
def test_mentions_are_the_handles_in_text_order_each_once(parts):
    text = " ".join(parts)
    expected: list[str] = []
    for part in parts:
        if part.startswith("@") and part[1:].lower() not in expected:
            expected.append(part[1:].lower())
    assert mentions(text) == expected


@given(HANDLE, HANDLE, st.sampled_from(["io", "example.com", "x"]))
def test_an_email_address_mentions_nobody(user, domain, tld):
    assert mentions(f"write to {user}@{domain}.{tld} today") == []
    assert mentions(f"mail @{domain}@{tld}.org") == []


@given(HANDLE)
def test_mentions_are_case_insensitive_and_punctuation_ends_them(handle):
    upper = handle.upper()
    assert mentions(f"(@{upper}, please.) @{handle}!") == [handle]
    assert mentions(f"ask @{handle}.") == [handle]
    assert mentions(f"x@{handle} word@{handle}") == []


def test_only_the_rooms_handles_count_in_mention_order():
    room = [P("coder"), P("poet"), P("assistant")]
    picked = mentioned("@alice asks @Poet and @coder, then @poet again", room)
    assert [p.handle for p in picked] == ["poet", "coder"]
    assert [p.handle for p in mentioned("@coder @poet", room, exclude="CODER")] == ["poet"]


def test_the_routing_rule():
    always = [P("assistant"), P("critic", "always"), P("poet")]
    # Mentions win, in their order; the always assistant answers only when none is named.
    assert [p.handle for p in route("@poet hi", always, ask_ai=False)] == ["poet"]
    assert [p.handle for p in route("hi all", always, ask_ai=False)] == ["critic"]
    assert [p.handle for p in route("hi all", always, ask_ai=True)] == ["critic"]
    mention_only = [P("coder"), P("assistant"), P("poet")]
    assert route("hi all", mention_only, ask_ai=False) == []
    # ask_ai: the `assistant` handle, else the first placement.
    assert [p.handle for p in route("hi", mention_only, ask_ai=True)] == ["assistant"]
    assert [p.handle for p in route("hi", [P("poet"), P("coder")], ask_ai=True)] == ["poet"]
    assert route("hi @nobody", [], ask_ai=True) == []


def test_each_assistant_sees_its_own_replies_as_its_own_and_the_others_labelled():
    turns = [
        Turn("user", "ann", "@coder @critic look"),
        Turn("assistant", "coder", "looks fine"),
        Turn("assistant", "critic", "it does not"),
    ]
    for_critic = build_messages(
        system_prompt="s", turns=turns, max_chars=10_000, max_messages=10, me="critic"
    )
    assert [(m.role, m.content) for m in for_critic] == [
        ("system", "s"),
        ("user", "ann: @coder @critic look"),
        ("user", "@coder: looks fine"),
        ("assistant", "it does not"),
    ]


def test_the_system_text_names_the_assistant_the_room_its_people_and_the_others():
    text = system_text(
        own="",
        name="Coder",
        handle="coder",
        room="Team",
        members=["ann", "bob"],
        more_members=True,
        others=[("critic", "Critic")],
    )
    lines = text.splitlines()
    assert lines[0].startswith("You are Parley's assistant")
    assert lines[2:] == [
        'You are Coder (@coder), an AI assistant in the chat room "Team".',
        "People in the room: ann, bob, and others.",
        "Other AI assistants in the room: @critic (Critic). Their messages start with their "
        "@handle. Writing an @handle in your reply asks that assistant to answer too.",
    ]
    own = system_text(own="Review code.", name="C", handle="c", room="R", members=[])
    assert own.splitlines() == [
        "Review code.",
        "",
        'You are C (@c), an AI assistant in the chat room "R".',
    ]
