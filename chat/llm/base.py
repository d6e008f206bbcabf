"""The model interface: a conversation in, an async stream of text deltas out.

Shape after simonw/llm: one abstract method that yields chunks. A backend's stream is an
async generator; the caller stops it by cancelling the task that iterates it or by calling
``aclose()``, and either must release the model at once (close the upstream HTTP
connection, stop the local sampler between tokens). Every failure a user can hit is raised
as :class:`LLMError` with a reason the UI can show.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

ChatRole = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: ChatRole
    content: str


@dataclass(slots=True)
class Usage:
    """Token counts, filled in by the backend when it learns them (None if unknown)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Prompt tokens the model already held and did not read again (the bundled model's
    # kept state; OpenAI calls these cached tokens). None if unknown.
    cached_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Options:
    """One reply's model and sampling, where they differ from the backend's own (an
    assistant's settings, chat/assistants/): one backend per provider serves them all, so
    its connection pool is shared by every assistant on it. None keeps the backend's."""

    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    # Sequences that end the reply where the model writes them (the OpenAI-compatible API's
    # ``stop``); a backend that cannot honour them ignores them (the bundled model).
    stop: tuple[str, ...] = ()


class LLMError(Exception):
    """A model failure, with a machine code and a reason a room member can read.

    Codes: ``refused`` (cannot connect), ``timeout`` (no byte within the read timeout),
    ``upstream_status`` (HTTP error from the server), ``malformed`` (a stream we cannot
    parse), ``disconnected`` (the server closed mid-reply), ``unavailable`` (the backend
    cannot run here, e.g. the bundled model failed to load).
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class LLMBackend(ABC):
    #: Short name stored in each reply's generation record.
    name: ClassVar[str]

    def __init__(self, *, model: str) -> None:
        self.model = model

    @abstractmethod
    def stream(
        self, messages: Sequence[ChatMessage], usage: Usage, options: Options | None = None
    ) -> AsyncGenerator[str, None]:
        """Yield the reply's text deltas in order; fill ``usage`` when known. ``options``
        overrides the backend's model and sampling for this reply.

        Raises :class:`LLMError`. ``asyncio.CancelledError`` always propagates.
        """

    def model_position(self, usage: Usage) -> int | None:
        """Where the stream that fills ``usage`` stands in this backend's own line: 1 while
        the model writes it (or reads its prompt), 2 for the next, and so on; None when it
        is not in a line. Only a backend that runs one reply at a time for the whole
        process (the bundled model) has a line; a remote server's queue is not visible."""
        return None

    def watch_line(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (in the caller's event loop) whenever the line changes; the
        result stops watching."""
        return lambda: None

    async def warm(self) -> None:  # noqa: B027 - optional hook
        """Pay the one-time costs now (at server start), not in the first reply."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release long-lived resources (connection pools, threads)."""
