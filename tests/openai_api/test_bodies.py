"""The request bodies, parsed in process (chat/openai_api/bodies.py), and how a request's
sampling meets its assistant's (chat/replies/db.py ``Sampling``)."""

from __future__ import annotations

from typing import Any

import pytest

from chat.assistants.providers import ProviderConfig
from chat.openai_api import bodies
from chat.openai_api.errors import OpenAIError
from chat.replies.db import Sampling, Speaker


def test_the_last_user_message_is_the_question():
    ask = bodies.chat_completion(
        {
            "model": "parley/team",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": None, "tool_calls": []},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}],
                },
                {"role": "assistant", "content": "an earlier answer"},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "max_completion_tokens": 7,
            "stop": "END",
            "top_p": 0.5,  # accepted, not used
        }
    )
    assert (ask.model, ask.text, ask.stream, ask.include_usage) == (
        "parley/team",
        "second",
        True,
        True,
    )
    assert ask.sampling == Sampling(temperature=0.0, max_tokens=7, stop=("END",))


def test_responses_input_string_or_messages():
    assert bodies.response_create({"model": "m", "input": "hi"}).text == "hi"
    items = [{"role": "user", "content": [{"type": "input_text", "text": "yo"}]}]
    ask = bodies.response_create({"model": "m", "input": items, "background": True})
    assert (ask.text, ask.background, ask.stream) == ("yo", True, False)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "no user"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "a"}], "n": 3}, "n"),
        ({"messages": [{"role": "user", "content": "a"}], "n": True}, "n"),
        ({"messages": [{"role": "user", "content": "a"}], "stream": "yes"}, "stream"),
        (
            {"messages": [{"role": "user", "content": "a"}], "temperature": float("nan")},
            "temperature",
        ),
        ({"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, "max_tokens"),
        (
            {"messages": [{"role": "user", "content": "a"}], "stop": ["a", "b", "c", "d", "e"]},
            "stop",
        ),
        ({"messages": [{"role": "user", "content": "a"}], "stop": ["\x00"]}, "stop"),
        ({"messages": [{"role": "user", "content": "a"}], "functions": [{}]}, "functions"),
        ({"messages": [{"role": 1, "content": "a"}]}, "messages[0]"),
        ({"messages": ["hi"]}, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content",
        ),
        ({"messages": [{"role": "user", "content": "a"}], "model": 5}, "model"),
    ],
)
def test_refusals_name_the_field(body, param):
    body.setdefault("model", "parley/team")
    with pytest.raises(OpenAIError) as refused:
        bodies.chat_completion(body)
    assert (refused.value.status, refused.value.param) == (400, param)


def _speaker(**kw) -> Speaker:
    fields: dict[str, Any] = {
        "assistant_id": 1,
        "handle": "coder",
        "name": "Coder",
        "config": ProviderConfig("default", "openai"),
        "model": "m",
        "temperature": 0.7,
        "max_tokens": 100,
        "voice": "",
    }
    fields.update(kw)
    return Speaker(**fields)


def test_sampling_lowers_the_assistants_cap_never_raises_it():
    speaker = Sampling(temperature=0.1, max_tokens=500, stop=("x",)).apply(_speaker())
    assert (speaker.temperature, speaker.max_tokens, speaker.stop) == (0.1, 100, ("x",))
    assert Sampling(max_tokens=20).apply(_speaker()).max_tokens == 20
    assert Sampling(max_tokens=20).apply(_speaker(max_tokens=None)).max_tokens == 20
    unchanged = Sampling().apply(_speaker())
    assert (unchanged.temperature, unchanged.max_tokens, unchanged.options.stop) == (0.7, 100, ())
