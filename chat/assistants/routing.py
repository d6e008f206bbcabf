"""Which of a room's assistants answer a message (docs/protocol.md "Assistants answer").

The rule: the room assistants whose ``@handle`` the message mentions answer it, one after
the other in mention order; a message that mentions none is answered by the room's
``always`` assistant if it has one (or, with ``ask_ai``, by the ``assistant`` handle, else
the room's first placement). Pure functions: the caller reads the placements.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, TypeVar

DEFAULT_HANDLE = "assistant"

# A mention: "@" not preceded by a word character, a dot or another "@" (so "bob@coder.io"
# and "a.@b" are not mentions), then the handle, which ends where the word does and is not
# the first part of an e-mail address or a domain ("@coder@x.io", "@coder.io"). A
# sentence's full stop after it ("ask @coder.") still ends the handle.
_MENTION = re.compile(r"(?<![\w.@])@([A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)(?![\w@-]|\.\w)")


class Placement(Protocol):
    """What routing needs of a room's placement (chat.models.RoomAssistant)."""

    handle: str
    mode: str


P = TypeVar("P", bound=Placement)


def mentions(text: str) -> list[str]:
    """The handles ``text`` mentions, lowercased, each once, in the order they first appear."""
    seen: dict[str, None] = {}
    for match in _MENTION.finditer(text):
        seen.setdefault(match.group(1).lower(), None)
    return list(seen)


def mentioned(text: str, placements: Sequence[P], *, exclude: str = "") -> list[P]:
    """The placements whose handles ``text`` mentions, in mention order (``exclude``: a
    handle that does not count, an assistant's own in its reply)."""
    by_handle = {p.handle.lower(): p for p in placements}
    skip = exclude.lower()
    return [by_handle[h] for h in mentions(text) if h in by_handle and h != skip]


def route(text: str, placements: Sequence[P], *, ask_ai: bool) -> list[P]:
    """The placements that answer a member's message, in the order they answer."""
    named = mentioned(text, placements)
    if named:
        return named
    always = [p for p in placements if p.mode == "always"]
    if always:
        return always[:1]
    if ask_ai and placements:
        default = [p for p in placements if p.handle.lower() == DEFAULT_HANDLE]
        return default[:1] or [placements[0]]
    return []
