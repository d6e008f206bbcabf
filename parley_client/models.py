"""The contract's objects and events as typed, immutable dataclasses (docs/protocol.md
"Objects", "The event stream", "Audio frames").

Each event keeps the wire dict it came from in ``raw`` (for logging and for comparing
what two clients saw); the typed fields are what programs read. A frame of a type this
client does not know becomes an :class:`UnknownEvent`, so a newer server never breaks it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

logger = logging.getLogger(__name__)

__all__ = [
    "TERMINAL_STATES",
    "Assistant",
    "AudioCancel",
    "AudioChunk",
    "AudioEnd",
    "AudioStart",
    "DeleteEvent",
    "Delta",
    "DurableEvent",
    "EditEvent",
    "ErrorEvent",
    "Event",
    "Generation",
    "Hello",
    "Message",
    "MessageEvent",
    "Metrics",
    "ModelChoice",
    "Models",
    "Place",
    "Pong",
    "Presence",
    "QueuePlaces",
    "RatingCounts",
    "RatingEvent",
    "Reconnecting",
    "ReplyAssistant",
    "Room",
    "RoomEvent",
    "SearchHit",
    "SearchPage",
    "Sent",
    "Snapshot",
    "Typing",
    "UnknownEvent",
    "mentions",
    "parse_event",
]

#: Generation states after which a reply changes no more.
TERMINAL_STATES = frozenset({"complete", "stopped", "failed", "interrupted"})


class MalformedEvent(ValueError):
    """A frame from the server that does not match the contract."""


def _str(d: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise MalformedEvent(f"{key!r} must be a string, not {type(value).__name__}")
    return value


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise MalformedEvent(f"{key!r} must be a string or null")
    return value


def _int(d: Mapping[str, Any], key: str) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedEvent(f"{key!r} must be an integer")
    return value


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


# A mention as the server counts one (docs/protocol.md "Assistants answer"): ``@handle``
# as a word of its own, any case; ``bob@coder.io`` mentions nobody.
_MENTION = re.compile(r"(?<![\w.@])@([A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)(?![\w@-]|\.\w)")


def mentions(text: str) -> list[str]:
    """The handles ``text`` mentions, lowercased, each once, in the order they first appear."""
    return list(dict.fromkeys(m.group(1).lower() for m in _MENTION.finditer(text)))


def _opt_num(d: Mapping[str, Any], key: str) -> float | None:
    value = d.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True, slots=True)
class Assistant:
    """An assistant of a room (extension, docs/protocol.md "Assistants"): ``handle`` (what
    ``@`` mentions), ``name`` and ``avatar`` (an emoji, ``"#rrggbb"``, or ``""``), ``model``
    as ``"<provider>/<model id>"``, ``mode`` (``"always"`` answers every message,
    ``"mention"`` only when mentioned) and ``shared`` (staff's, added to the room).

    The settings fields are what ``GET /api/rooms/<slug>/assistants`` adds (None from a
    room object, which leaves them out)."""

    handle: str
    name: str
    avatar: str = ""
    model: str = ""
    mode: str = "mention"
    shared: bool = False
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    voice: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Assistant:
        if not isinstance(d, Mapping):
            raise MalformedEvent("an assistant must be a JSON object")
        handle = _str(d, "handle")
        max_tokens = d.get("max_tokens")
        prompt = d.get("system_prompt")
        voice = d.get("voice")
        return cls(
            handle=handle,
            name=_str(d, "name", handle),
            avatar=_str(d, "avatar", ""),
            model=_str(d, "model", ""),
            mode=_str(d, "mode", "mention"),
            shared=d.get("shared") is True,
            system_prompt=prompt if isinstance(prompt, str) else None,
            temperature=_opt_num(d, "temperature"),
            max_tokens=max_tokens
            if isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
            else None,
            voice=voice if isinstance(voice, str) else None,
        )

    @property
    def provider(self) -> str:
        """The provider part of ``model`` (``"default"`` if it names none)."""
        provider, sep, _ = self.model.partition("/")
        return provider if sep else "default"


def _assistants(value: Any) -> tuple[Assistant, ...]:
    """A room's assistants (none from a server before the extension)."""
    if not isinstance(value, list):
        return ()
    return tuple(Assistant.from_dict(a) for a in value)


@dataclass(frozen=True, slots=True)
class ReplyAssistant:
    """Which assistant wrote a reply, as it was then: ``{"handle", "name", "model"}``."""

    handle: str
    name: str
    model: str = ""

    @classmethod
    def from_dict(cls, d: Any) -> ReplyAssistant | None:
        if not isinstance(d, Mapping) or not isinstance(d.get("handle"), str):
            return None
        return cls(
            handle=d["handle"], name=_str(d, "name", d["handle"]), model=_str(d, "model", "")
        )


@dataclass(frozen=True, slots=True)
class Room:
    """A room: ``{"slug", "name", "owner", "visibility", "assistant", "voice", "head"}``,
    and (extension) ``assistants``, empty from an older server."""

    slug: str
    name: str
    owner: str
    visibility: str
    assistant: str
    voice: str
    head: int
    assistants: tuple[Assistant, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Room:
        if not isinstance(d, Mapping):
            raise MalformedEvent("a room must be a JSON object")
        return cls(
            slug=_str(d, "slug"),
            name=_str(d, "name", ""),
            owner=_str(d, "owner", ""),
            visibility=_str(d, "visibility", "public"),
            assistant=_str(d, "assistant", "always"),
            voice=_str(d, "voice", "off"),
            head=int(d.get("head") or 0),
            assistants=_assistants(d.get("assistants")),
        )

    def assistant_named(self, handle: str) -> Assistant | None:
        """The room's assistant with this handle, if it has one."""
        return next((a for a in self.assistants if a.handle == handle), None)

    def answering(self, text: str) -> list[Assistant]:
        """The room's assistants ``text`` mentions, in the order they will answer (the
        server asks at most a few: docs/protocol.md "Assistants answer")."""
        by_handle = {a.handle.lower(): a for a in self.assistants}
        return [by_handle[h] for h in mentions(text) if h in by_handle]

    def answers(self, text: str, *, ask_ai: bool = False) -> bool:
        """Whether an assistant will answer ``text`` here (docs/protocol.md "Objects" and
        "Assistants answer"): one is mentioned, one answers every message, or ``ask_ai``."""
        if not self.assistants:  # a server before assistants: the one, as it was
            return self.assistant == "always" or ask_ai or "@assistant" in text.lower()
        if ask_ai or any(a.mode == "always" for a in self.assistants):
            return True
        return bool(self.answering(text))


def _opt_count(d: Mapping[str, Any], key: str) -> int:
    value = d.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _versions_count(value: Any) -> int:
    """``versions``: a count on a message, a list on ``GET /api/messages/<id>``."""
    if isinstance(value, list):
        return max(1, len(value))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a reply, as ``GET /api/messages/<id>`` lists them."""

    id: str
    version: int
    text: str
    status: str

    @classmethod
    def list_from(cls, value: Any) -> tuple[VersionInfo, ...]:
        if not isinstance(value, list):
            return ()
        found = []
        for entry in value:
            if not isinstance(entry, Mapping):
                continue
            try:
                found.append(
                    cls(
                        id=_opt_str(entry, "id") or "",
                        version=_opt_count(entry, "version"),
                        text=_str(entry, "text", ""),
                        status=_str(entry, "status", ""),
                    )
                )
            except MalformedEvent:
                continue
        return tuple(v for v in found if v.id)


@dataclass(frozen=True, slots=True)
class RatingCounts:
    """Extension: how many members rated a reply up and down."""

    up: int = 0
    down: int = 0

    @classmethod
    def from_dict(cls, d: Any) -> RatingCounts | None:
        if not isinstance(d, Mapping):
            return None
        return cls(up=_count(d, "up"), down=_count(d, "down"))


def _count(d: Mapping[str, Any], key: str) -> int:
    value = d.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(frozen=True, slots=True)
class Message:
    """A message. ``id`` is opaque: pass it back as given."""

    id: str
    room: str
    role: Literal["user", "assistant"] | str
    author: str | None
    text: str
    status: str
    reply_to: str | None
    client_id: str | None
    created: str
    # Extension: "speech" for the transcript of a spoken message, else "text".
    input: str = "text"
    # Extension, on an assistant's message: which assistant wrote it (None from an
    # older server, or on a person's message).
    assistant: ReplyAssistant | None = None
    # Extension, versions of a reply (docs/protocol.md "Versions of a reply"): a later
    # version names the reply it is a version of (``version_of``) and its ``version``;
    # the reply itself, once regenerated, ``version`` 1, how many ``versions`` it has and
    # which is ``current`` (a message id). ``version_list``: each version's id, number,
    # text and status, as ``GET /api/messages/<id>`` gives them (else empty).
    version_of: str | None = None
    version: int = 1
    versions: int = 1
    current: str | None = None
    version_list: tuple[VersionInfo, ...] = ()
    # Extensions (issue 19): edited by its author; deleted (a tombstone: ``text`` is "");
    # a reply's rating counts once rated.
    edited: bool = False
    deleted: bool = False
    rating: RatingCounts | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Message:
        if not isinstance(d, Mapping):
            raise MalformedEvent("a message must be a JSON object")
        message_id = _opt_str(d, "id")
        if message_id is None:
            raise MalformedEvent("a message needs an id")
        return cls(
            id=message_id,
            room=_str(d, "room", ""),
            role=_str(d, "role", "user"),
            author=_opt_str(d, "author"),
            text=_str(d, "text", ""),
            status=_str(d, "status", "complete"),
            reply_to=_opt_str(d, "reply_to"),
            client_id=_opt_str(d, "client_id"),
            created=_str(d, "created", ""),
            input=_str(d, "input", "text"),
            assistant=ReplyAssistant.from_dict(d.get("assistant")),
            version_of=_opt_str(d, "version_of"),
            version=_opt_count(d, "version"),
            versions=_versions_count(d.get("versions")),
            current=_opt_str(d, "current"),
            version_list=VersionInfo.list_from(d.get("versions")),
            edited=d.get("edited") is True,
            deleted=d.get("deleted") is True,
            rating=RatingCounts.from_dict(d.get("rating")),
        )

    @property
    def assistant_name(self) -> str | None:
        """The name an assistant's reply is shown under ("Assistant" from an older
        server); None for a person's message."""
        if self.role != "assistant":
            return None
        return self.assistant.name if self.assistant is not None else "Assistant"

    @property
    def spoken(self) -> bool:
        """True for the transcript of a spoken message (``input`` "speech")."""
        return self.input == "speech"

    @property
    def created_at(self) -> datetime | None:
        """``created`` as an aware datetime (None if the server sent none)."""
        if not self.created:
            return None
        try:
            return datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except ValueError:
            return None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class Sent:
    """What :meth:`RoomSession.send` returns: your message and the reply it asked for.

    ``id`` is the reply's id when there is one (what ``pause``, ``resume``, ``stop`` and
    ``wait_reply`` take), otherwise your message's.
    """

    message: Message
    reply: Message | None
    #: Extension: every reply the send queued, in the order they answer (``reply`` is the
    #: first); from an older server, or over the WebSocket, just ``reply``.
    replies: tuple[Message, ...] = ()

    def __post_init__(self) -> None:
        if not self.replies and self.reply is not None:
            object.__setattr__(self, "replies", (self.reply,))

    @property
    def id(self) -> str:
        return (self.reply or self.message).id


@dataclass(frozen=True, slots=True)
class SearchHit:
    """Extension: one result of a room search (docs/protocol.md "Search"): the message,
    a plain-text ``snippet`` around the match (never HTML), and the ``[start, end)``
    offsets of the matched words in the snippet."""

    message: Message
    snippet: str
    highlights: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_dict(cls, d: Any) -> SearchHit:
        if not isinstance(d, Mapping):
            raise MalformedEvent("a search result must be a JSON object")
        found = d.get("message")
        if not isinstance(found, Mapping):
            raise MalformedEvent("a search result needs its message")
        message = Message.from_dict(found)
        snippet = d.get("snippet")
        if not isinstance(snippet, str):
            snippet = message.text
        spans: list[tuple[int, int]] = []
        raw = d.get("highlights")
        for span in raw if isinstance(raw, list) else []:
            # Offsets the snippet cannot hold are dropped, not trusted.
            if (
                isinstance(span, list)
                and len(span) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) for n in span)
                and 0 <= span[0] < span[1] <= len(snippet)
            ):
                spans.append((span[0], span[1]))
        return cls(message=message, snippet=snippet, highlights=tuple(sorted(spans)))

    def parts(self) -> list[tuple[str, bool]]:
        """The snippet cut at its highlights: ``(text, matched)`` pieces in order."""
        pieces: list[tuple[str, bool]] = []
        at = 0
        for start, end in self.highlights:
            if start < at:  # overlapping spans: the part not yet shown
                start = at
            if start >= end:
                continue
            if start > at:
                pieces.append((self.snippet[at:start], False))
            pieces.append((self.snippet[start:end], True))
            at = end
        if at < len(self.snippet):
            pieces.append((self.snippet[at:], False))
        return pieces


@dataclass(frozen=True, slots=True)
class SearchPage:
    """Extension: a page of search results, newest first. ``more``: older matches
    remain; ask again with ``before=page.next_before``."""

    hits: tuple[SearchHit, ...]
    more: bool

    @property
    def next_before(self) -> str | None:
        """The ``before`` that asks for the next (older) page; None on the last page."""
        return self.hits[-1].message.id if self.more and self.hits else None


@dataclass(frozen=True, slots=True)
class Metrics:
    """A finished reply's metrics (``generation.metrics``); None where the server had none."""

    ttft_ms: float | None = None
    duration_ms: float | None = None
    tokens: int | None = None
    tokens_per_second: float | None = None
    paused_ms: float | None = None

    @classmethod
    def from_dict(cls, d: Any) -> Metrics | None:
        if not isinstance(d, Mapping):
            return None

        def num(key: str) -> float | None:
            v = d.get(key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        tokens = d.get("tokens")
        return cls(
            ttft_ms=num("ttft_ms"),
            duration_ms=num("duration_ms"),
            tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
            tokens_per_second=num("tokens_per_second"),
            paused_ms=num("paused_ms"),
        )


# --- Durable events (they carry seq) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """``message``: a new message (an assistant reply starts with ``text == ""``)."""

    seq: int
    message: Message
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["message"] = "message"


@dataclass(frozen=True, slots=True)
class Delta:
    """``delta``: text appended to assistant message ``message_id``."""

    seq: int
    message_id: str
    text: str
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["delta"] = "delta"


@dataclass(frozen=True, slots=True)
class Generation:
    """``generation``: a reply changed state; terminal states carry usage and metrics."""

    seq: int
    message_id: str
    state: str
    by: str | None
    reason: str | None
    usage: dict[str, Any] | None
    metrics: Metrics | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["generation"] = "generation"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class Snapshot:
    """``snapshot``: the room's latest messages, sent instead of a replay the server can no
    longer give. Rebuild your view from ``messages``; ``seq`` is the head it is exact at."""

    seq: int
    messages: tuple[Message, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["snapshot"] = "snapshot"


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """``room`` (extension): the room's settings, members' roles or assistants changed;
    ``room`` is the whole room as it is now."""

    seq: int
    room: Room
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["room"] = "room"


@dataclass(frozen=True, slots=True)
class VersionEvent:
    """``version`` (extension): reply ``message_id`` got a new version, or another of its
    versions was picked. ``current`` is the id of the version now shown, ``versions`` how
    many it has, ``by`` who asked."""

    seq: int
    message_id: str
    current: str
    versions: int
    by: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["version"] = "version"


@dataclass(frozen=True, slots=True)
class EditEvent:
    """``edit`` (extension): a member edited their message; ``text`` is its text now."""

    seq: int
    message_id: str
    text: str
    by: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["edit"] = "edit"


@dataclass(frozen=True, slots=True)
class DeleteEvent:
    """``delete`` (extension): the message is a tombstone now ("message deleted")."""

    seq: int
    message_id: str
    by: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["delete"] = "delete"


@dataclass(frozen=True, slots=True)
class RatingEvent:
    """``rating`` (extension): a reply's rating counts as they are now."""

    seq: int
    message_id: str
    up: int
    down: int
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["rating"] = "rating"


# --- Live-only events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """``hello``: the first event of every (re)connection."""

    room: Room
    you: str
    head: int
    online: tuple[str, ...]
    transport: str = "websocket"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    type: Literal["hello"] = "hello"


@dataclass(frozen=True, slots=True)
class Presence:
    online: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["presence"] = "presence"


@dataclass(frozen=True, slots=True)
class Typing:
    username: str
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["typing"] = "typing"


@dataclass(frozen=True, slots=True)
class Pong:
    id: Any
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["pong"] = "pong"


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An ``error`` frame that answered no request of this client (requests raise theirs)."""

    code: str
    detail: str
    id: Any
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["error"] = "error"


@dataclass(frozen=True, slots=True)
class AudioStart:
    """A reply starts being spoken: PCM chunks of ``stream`` follow."""

    stream: int
    message_id: str
    format: str
    sample_rate: int
    channels: int
    mode: str
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["audio_start"] = "audio_start"


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """PCM of ``stream`` (``pcm_s16le`` at the stream's sample rate), chunk ``index``."""

    stream: int
    index: int
    pcm: bytes = field(repr=False)
    message_id: str | None = None
    format: str = "pcm_s16le"
    sample_rate: int = 0
    channels: int = 1
    type: Literal["audio_chunk"] = "audio_chunk"


@dataclass(frozen=True, slots=True)
class AudioEnd:
    stream: int
    chunks: int
    message_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    type: Literal["audio_end"] = "audio_end"


@dataclass(frozen=True, slots=True)
class AudioCancel:
    """The reply was stopped: drop what is queued of ``stream``."""

    stream: int
    message_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    type: Literal["audio_cancel"] = "audio_cancel"


@dataclass(frozen=True, slots=True)
class Place:
    """Where a waiting reply stands: ``position`` in its room's line (1: the reply the room
    is on now) and, for the bundled model, ``model_position`` in the model's line across
    the server (1: the reply it is writing; None before its turn in the room)."""

    message_id: str
    position: int
    model_position: int | None = None


@dataclass(frozen=True, slots=True)
class QueuePlaces:
    """``queue`` (extension, live-only): where some waiting replies stand now. A reply's
    place holds until the next one names it, its text starts, or it ends."""

    replies: tuple[Place, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)
    type: Literal["queue"] = "queue"


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event type this client does not know (a newer server); ``seq`` if durable."""

    type: str
    seq: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """Client-side: the connection dropped and the session will reconnect in ``delay`` s,
    resuming after ``after`` (the last seq it delivered). Nothing durable is lost."""

    reason: Exception
    attempt: int
    delay: float
    after: int | None
    type: Literal["reconnecting"] = "reconnecting"


DurableEvent: TypeAlias = (
    MessageEvent
    | Delta
    | Generation
    | Snapshot
    | RoomEvent
    | VersionEvent
    | EditEvent
    | DeleteEvent
    | RatingEvent
)
Event: TypeAlias = (
    MessageEvent
    | Delta
    | Generation
    | Snapshot
    | RoomEvent
    | VersionEvent
    | EditEvent
    | DeleteEvent
    | RatingEvent
    | Hello
    | Presence
    | Typing
    | Pong
    | ErrorEvent
    | AudioStart
    | AudioChunk
    | AudioEnd
    | AudioCancel
    | QueuePlaces
    | UnknownEvent
    | Reconnecting
)


def parse_event(raw: Any, *, transport: str = "websocket") -> Event:
    """The typed event for one JSON frame; :class:`MalformedEvent` if it breaks the contract."""
    if not isinstance(raw, dict):
        raise MalformedEvent("an event must be a JSON object")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise MalformedEvent("an event needs a type")
    if kind == "message":
        return MessageEvent(_int(raw, "seq"), Message.from_dict(raw.get("message") or {}), raw)
    if kind == "delta":
        message_id = _opt_str(raw, "message_id")
        if message_id is None:
            raise MalformedEvent("a delta needs a message_id")
        return Delta(_int(raw, "seq"), message_id, _str(raw, "text"), raw)
    if kind == "generation":
        message_id = _opt_str(raw, "message_id")
        if message_id is None:
            raise MalformedEvent("a generation event needs a message_id")
        usage = raw.get("usage")
        return Generation(
            seq=_int(raw, "seq"),
            message_id=message_id,
            state=_str(raw, "state"),
            by=_opt_str(raw, "by"),
            reason=_opt_str(raw, "reason"),
            usage=usage if isinstance(usage, dict) else None,
            metrics=Metrics.from_dict(raw.get("metrics")),
            raw=raw,
        )
    if kind == "snapshot":
        messages = raw.get("messages")
        if not isinstance(messages, list):
            raise MalformedEvent("a snapshot needs a list of messages")
        return Snapshot(_int(raw, "seq"), tuple(Message.from_dict(m) for m in messages), raw)
    if kind == "room":
        return RoomEvent(_int(raw, "seq"), Room.from_dict(raw.get("room") or {}), raw)
    if kind == "version":
        message_id = _opt_str(raw, "message_id")
        current = _opt_str(raw, "current")
        if message_id is None or current is None:
            raise MalformedEvent("a version event needs a message_id and current")
        return VersionEvent(
            seq=_int(raw, "seq"),
            message_id=message_id,
            current=current,
            versions=_int(raw, "versions"),
            by=_opt_str(raw, "by"),
            raw=raw,
        )
    if kind in ("edit", "delete", "rating"):
        return _parse_lifecycle(kind, raw)
    if kind == "hello":
        room = Room.from_dict(raw.get("room") or {})
        return Hello(
            room=room,
            you=_str(raw, "you"),
            head=int(raw.get("head") or room.head),
            online=_names(raw.get("online")),
            transport=transport,
            raw=raw,
        )
    if kind == "presence":
        return Presence(_names(raw.get("online")), raw)
    if kind == "typing":
        return Typing(_str(raw, "username"), raw)
    if kind == "pong":
        return Pong(raw.get("id"), raw)
    if kind == "error":
        return ErrorEvent(
            _str(raw, "code", "internal"), _str(raw, "detail", ""), raw.get("id"), raw
        )
    if kind == "audio":
        return _parse_audio(raw)
    if kind == "queue":
        return QueuePlaces(_places(raw.get("replies")), raw)
    seq = raw.get("seq")
    return UnknownEvent(
        kind, seq if isinstance(seq, int) and not isinstance(seq, bool) else None, raw
    )


def _parse_lifecycle(kind: str, raw: dict[str, Any]) -> EditEvent | DeleteEvent | RatingEvent:
    message_id = _opt_str(raw, "message_id")
    if message_id is None:
        raise MalformedEvent(f"a {kind} event needs a message_id")
    seq = _int(raw, "seq")
    if kind == "edit":
        return EditEvent(seq, message_id, _str(raw, "text"), _opt_str(raw, "by"), raw)
    if kind == "delete":
        return DeleteEvent(seq, message_id, _opt_str(raw, "by"), raw)
    return RatingEvent(seq, message_id, _count(raw, "up"), _count(raw, "down"), raw)


def _places(value: Any) -> tuple[Place, ...]:
    """The well-formed entries of a ``queue`` event (a newer server may add fields)."""
    places = []
    for entry in value if isinstance(value, list) else ():
        if not isinstance(entry, Mapping):
            continue
        try:
            model = entry.get("model_position")
            places.append(
                Place(
                    message_id=_opt_str(entry, "message_id") or "",
                    position=_int(entry, "position"),
                    model_position=model if isinstance(model, int) else None,
                )
            )
        except MalformedEvent:
            continue
    return tuple(p for p in places if p.message_id)


def _parse_audio(raw: dict[str, Any]) -> Event:
    state = raw.get("state")
    stream = _int(raw, "stream")
    if state == "start":
        return AudioStart(
            stream=stream,
            message_id=_opt_str(raw, "message_id") or "",
            format=_str(raw, "format", "pcm_s16le"),
            sample_rate=_int(raw, "sample_rate"),
            channels=int(raw.get("channels") or 1),
            mode=_str(raw, "mode", ""),
            raw=raw,
        )
    if state == "end":
        return AudioEnd(stream, int(raw.get("chunks") or 0), _opt_str(raw, "message_id"), raw)
    if state == "cancel":
        return AudioCancel(stream, _opt_str(raw, "message_id"), raw)
    if state == "chunk":  # SSE carries each PCM chunk as base64 in JSON
        try:
            pcm = base64.b64decode(_str(raw, "data"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedEvent("an audio chunk's data is not base64") from exc
        return AudioChunk(stream=stream, index=_int(raw, "index"), pcm=pcm)
    return UnknownEvent("audio", None, raw)


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """A model a provider lists (``GET /api/models``): ``id`` is ``"<provider>/<model>"``,
    what an assistant's ``model`` takes."""

    id: str
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class Models:
    """``GET /api/models``: the models on offer, and the providers that could not be read
    (``errors``: provider name -> the reason, never a key)."""

    models: tuple[ModelChoice, ...]
    errors: dict[str, str]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Models:
        models = []
        for entry in d.get("models") or ():
            if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
                provider, _, model = entry["id"].partition("/")
                models.append(
                    ModelChoice(
                        id=entry["id"],
                        provider=_str(entry, "provider", provider),
                        model=_str(entry, "model", model),
                    )
                )
        errors = {
            e["provider"]: str(e.get("error", ""))
            for e in d.get("errors") or ()
            if isinstance(e, Mapping) and isinstance(e.get("provider"), str)
        }
        return cls(tuple(models), errors)
