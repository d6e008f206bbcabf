"""Turn a room's recent conversation into the messages a model sees."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chat.llm.base import ChatMessage

DEFAULT_SYSTEM_PROMPT = (
    "You are Parley's assistant, a helpful participant in a group chat. "
    "Several people may be talking; each user message starts with the author's name. "
    "Answer the latest message concisely."
)


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored message as the prompt builder needs it."""

    role: str  # "user" or "assistant"
    author: str  # username; "assistant" for replies
    text: str


def build_messages(
    *,
    system_prompt: str,
    turns: Sequence[Turn],
    max_chars: int,
    max_messages: int,
) -> list[ChatMessage]:
    """The system prompt, then the newest turns that fit the budget, oldest first.

    User turns carry their author's name ("alice: hi") because a room has several people
    and OpenAI-compatible servers disagree on the ``name`` field. The newest turn is always
    kept (cut from the front if it alone exceeds the budget); empty replies are dropped.
    """
    picked: list[ChatMessage] = []
    used = 0
    for turn in reversed(turns[-max_messages:] if max_messages > 0 else []):
        if not turn.text.strip():
            continue
        content = turn.text if turn.role == "assistant" else f"{turn.author}: {turn.text}"
        if used + len(content) > max_chars:
            if not picked:
                picked.append(_message(turn.role, content[-max_chars:]))
            break
        picked.append(_message(turn.role, content))
        used += len(content)
    picked.reverse()
    system = system_prompt.strip() or DEFAULT_SYSTEM_PROMPT
    return [ChatMessage("system", system), *picked]


def _message(role: str, content: str) -> ChatMessage:
    return ChatMessage("assistant" if role == "assistant" else "user", content)
