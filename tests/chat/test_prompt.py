from __future__ import annotations

from chat.llm.prompt import DEFAULT_SYSTEM_PROMPT, Turn, build_messages


def test_recent_turns_fit_the_budget_with_authors():
    turns = [
        Turn("user", "ann", "a" * 50),
        Turn("assistant", "assistant", "b" * 50),
        Turn("user", "ben", "hello there"),
    ]
    msgs = build_messages(system_prompt="", turns=turns, max_chars=80, max_messages=10)
    assert msgs[0].role == "system"
    assert msgs[0].content == DEFAULT_SYSTEM_PROMPT
    # The oldest turn no longer fits: the newest two do, in order.
    assert [(m.role, m.content) for m in msgs[1:]] == [
        ("assistant", "b" * 50),
        ("user", "ben: hello there"),
    ]


def test_newest_turn_kept_even_when_too_long_and_empty_replies_dropped():
    turns = [
        Turn("user", "ann", "old"),
        Turn("assistant", "assistant", ""),
        Turn("user", "ann", "x" * 100),
    ]
    msgs = build_messages(system_prompt="Be brief.", turns=turns, max_chars=20, max_messages=10)
    assert msgs[0].content == "Be brief."
    assert len(msgs) == 2
    assert len(msgs[1].content) == 20


def test_message_count_limit():
    turns = [Turn("user", "u", str(i)) for i in range(10)]
    msgs = build_messages(system_prompt="s", turns=turns, max_chars=10_000, max_messages=3)
    assert [m.content for m in msgs[1:]] == ["u: 7", "u: 8", "u: 9"]
