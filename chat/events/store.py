"""The event store interface: seq assignment, the replay log, and the live reply view."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

from chat.errors import Busy
from chat.models import TERMINAL_STATUSES, Room

# The visible (text, status) of a live reply right after the event being appended, as its
# owner knows it: the store asks for it only when it lost its own copy (a restart).
LiveState = Callable[[], tuple[str, str]]

# The room's snapshot, for a store whose log was emptied under it (a restart): the log
# opens with it, so members resynchronising across the loss replay every event after it.
Opening = Callable[[], Awaitable[Mapping[str, Any]]]


class StoreUnavailable(Busy):
    """The store cannot be reached (Redis restarting); the caller may retry.

    A ``busy`` error on the wire: the client retries in a moment.
    """

    def __init__(self, cause: str) -> None:
        super().__init__("the server is reconnecting to its event store; try again shortly")
        self.cause = cause


def live_change(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """How an event changes a live reply's visible state: (message id, kind, value).

    kinds: ``init`` (value = status; text starts empty), ``append`` (value = text),
    ``status`` (value = status), ``end`` (the reply is terminal; its state is in the
    database from now on).
    """
    kind = body.get("type")
    if kind == "message":
        message = body["message"]
        if message["role"] == "assistant":
            return message["id"], "init", message["status"]
        return None
    if kind == "delta":
        return body["message_id"], "append", body["text"]
    if kind == "generation":
        if body["state"] in TERMINAL_STATUSES:
            return body["message_id"], "end", body["state"]
        return body["message_id"], "status", body["state"]
    return None


class EventStore(ABC):
    """Assigns seqs and keeps each room's recent events and its live replies' text.

    Implementations: in process memory (one process), or Redis (any number).
    """

    # True when an append can be recorded and its answer lost (a network between): the
    # hub then retries with the same key, and the store must not record it twice.
    answers_can_be_lost: ClassVar[bool] = False

    @abstractmethod
    async def append(
        self,
        room_id: int,
        body: Mapping[str, Any],
        *,
        key: str,
        live: LiveState | None = None,
        opening: Opening | None = None,
    ) -> dict[str, Any]:
        """Give ``body`` the room's next seq and record it; return the event.

        ``key`` is the emit's idempotency key: a store whose answer can be lost after it
        recorded the event (``answers_can_be_lost``: Redis over a network) must return the
        first append's event when the same key is appended again (the hub's retry), not
        record a second one. An in-process store cannot lose its answer and may ignore it.
        ``live`` gives the reply's whole visible state, for a store that lost its copy.
        ``opening`` gives the room's snapshot, for a store whose log was emptied under the
        room (a restart): the log then opens with it (``since``).
        """

    @abstractmethod
    async def head(self, room_id: int) -> int:
        """The room's latest seq."""

    @abstractmethod
    async def since(self, room_id: int, after: int) -> list[dict[str, Any]] | None:
        """Every event after ``after``, or None when they are no longer all held.

        Or, when a restart lost them and the log opens with a snapshot past ``after``:
        that snapshot and the events after it without a gap, which may stop short of the
        head (``EventHub.replay`` then adds a fresh snapshot).
        """

    @abstractmethod
    async def live_view(
        self, room_id: int, message_ids: Iterable[str]
    ) -> tuple[int, dict[str, tuple[str, str]]]:
        """The head and, at exactly that head, the (text, status) of the live replies
        among ``message_ids``."""

    @abstractmethod
    def head_sync(self, room: Room) -> int:
        """The room's latest seq, from synchronous code (JSON views in worker threads)."""

    def saw(self, room_id: int, seq: int) -> None:  # noqa: B027 - most stores need not know
        """``seq`` of the room reached this process's members: a store that can lose writes
        already published (a Redis Cluster failover) must never hand it out again."""

    def forget(self, room_id: int) -> None:  # noqa: B027 - most stores keep no cache
        """The room went idle in this process: drop caches kept for it (never the record)."""

    async def aclose(self) -> None:  # noqa: B027 - most stores hold nothing of their own
        """Release what the store holds (its connections belong to the loop's client)."""
