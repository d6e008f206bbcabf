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
    author: str  # username; for replies, the handle of the assistant that wrote it
    text: str


def system_text(
    *,
    own: str,
    name: str,
    handle: str,
    room: str,
    members: Sequence[str],
    more_members: bool = False,
    others: Sequence[tuple[str, str]] = (),
) -> str:
    """The system prompt of an assistant's reply: its own prompt (or the default), then who
    it is, where, with whom, and which other assistants it can ask.

    Only facts that change when the room's setup does (not per message), so a room's
    prompts share one prefix from reply to reply (the bundled model reads only what is
    new: chat/llm/local.py)."""
    lines = [
        own.strip() or DEFAULT_SYSTEM_PROMPT,
        "",
        f'You are {name} (@{handle}), an AI assistant in the chat room "{room}".',
    ]
    if members:
        listed = ", ".join(members) + (", and others" if more_members else "")
        lines.append(f"People in the room: {listed}.")
    if others:
        listed = ", ".join(f"@{h} ({n})" for h, n in others)
        lines.append(
            f"Other AI assistants in the room: {listed}. Their messages start with their "
            "@handle. Writing an @handle in your reply asks that assistant to answer too."
        )
    return "\n".join(lines)


def build_messages(
    *,
    system_prompt: str,
    turns: Sequence[Turn],
    max_chars: int,
    max_messages: int,
    me: str = "assistant",
) -> list[ChatMessage]:
    """The system prompt, then the newest turns that fit the budget, oldest first.

    User turns carry their author's name ("alice: hi") because a room has several people
    and OpenAI-compatible servers disagree on the ``name`` field. Replies by the assistant
    ``me`` (the one being asked) are its own (role ``assistant``); other assistants'
    replies are role ``user``, labelled with their handle ("@coder: ..."). The newest turn is always
    kept (cut from the front if it alone exceeds the budget); empty replies are dropped.
    """
    picked: list[ChatMessage] = []
    used = 0
    for turn in reversed(turns[-max_messages:] if max_messages > 0 else []):
        if not turn.text.strip():
            continue
        role = turn.role
        if role == "assistant" and turn.author.lower() == me.lower():
            content = turn.text
        elif role == "assistant":
            role, content = "user", f"@{turn.author}: {turn.text}"
        else:
            content = f"{turn.author}: {turn.text}"
        if used + len(content) > max_chars:
            if not picked:
                picked.append(_message(role, content[-max_chars:]))
            break
        picked.append(_message(role, content))
        used += len(content)
    picked.reverse()
    system = system_prompt.strip() or DEFAULT_SYSTEM_PROMPT
    return [ChatMessage("system", system), *picked]


def _message(role: str, content: str) -> ChatMessage:
    return ChatMessage("assistant" if role == "assistant" else "user", content)
