"""The terminal chat: one room, live, in the shell you already have open.

Built on prompt_toolkit (3.0), not textual, because the chat belongs *in* the terminal's
scrollback rather than in a full-screen app: finished messages are printed above the
prompt and stay in the terminal's history (searchable, copyable, still there after you
quit), while prompt_toolkit keeps a small live area at the bottom (the reply that is
streaming, then the input line) and a status line, redrawing only those. It is asyncio
native (the room's events and the keyboard share one loop), handles line editing,
history, wide characters and terminal resizing, and needs only ``wcwidth``. textual is
a fine framework for full-screen apps, but it would take over the screen, lose the
scrollback on exit, and bring rich and markdown-it for a line-oriented chat.

Keys: Enter sends; Ctrl-C stops the reply being generated (twice quits); Ctrl-D quits.
Commands: ``/help`` lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.styles import Style

from parley_client.client import Client
from parley_client.errors import NotMember, ParleyError
from parley_client.models import (
    Assistant,
    AudioCancel,
    AudioEnd,
    DeleteEvent,
    Delta,
    EditEvent,
    ErrorEvent,
    Event,
    Generation,
    Hello,
    Message,
    MessageEvent,
    Metrics,
    Place,
    Presence,
    QueuePlaces,
    RatingEvent,
    Reconnecting,
    Room,
    RoomEvent,
    SearchHit,
    Snapshot,
    Typing,
    VersionEvent,
)
from parley_client.room import RoomSession, Transport

# Two Ctrl-C presses within this many seconds quit.
DOUBLE_PRESS_SECONDS = 2.0
# A typing indicator shows this long after the last "typing" event (the server relays at
# most one a second per member, so 4 s survives a missed one).
TYPING_SHOWN_SECONDS = 4.0
# We tell the room we are typing at most this often (the server drops more anyway).
TYPING_SEND_INTERVAL = 1.0
# The live area shows at most this many lines of a streaming reply (its tail), so a long
# reply never pushes the input line off the screen.
LIVE_LINES = 8
# The status line redraws this often so typing indicators expire on time.
REFRESH_SECONDS = 1.0
# A note in the status line ("reconnected", "Ctrl-C again quits") shows this long.
NOTE_SECONDS = 6.0
# Messages shown from before you joined.
DEFAULT_HISTORY = 10

VOICE_MODES = ("normal", "streaming", "realtime", "off")

# Stop reasons the server sends as codes, in words ("" hides the obvious one).
REASONS = {"user": "", "pause_timeout": "paused for too long"}

# After the author of a spoken message (its text is the transcript), as the page's
# microphone mark.
SPOKEN_MARK = " (spoken)"

STYLE = Style.from_dict(
    {
        "time": "#888888",
        "author": "bold",
        "me": "bold ansigreen",
        "assistant": "bold ansicyan",
        "state": "italic #888888",
        "spoken": "italic #888888",
        "note": "#888888",
        "match": "bold underline",
        "error": "ansired",
        "prompt": "bold",
        "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
    }
)

HELP = """\
/pause /resume /stop    control the reply being generated (Ctrl-C stops it too)
/regen [ID]             another answer: a new version of the last reply (or reply ID)
/voice MODE             speak the next reply: normal, streaming, realtime or off
/audio FILE.wav         save spoken replies (FILE-<id>.wav each); /audio off stops
/edit [#ID] TEXT         edit your last message (or message ID) to read TEXT
/delete [ID]            delete your last message (or message ID; owners: any)
/search WORDS           find this room's messages with WORDS, newest first
/more                   the next, older page of the last /search
/assistants             list the room's assistants (mention one with @handle)
/rooms                  list the rooms you can see
/join SLUG              go to another room (joining it if it is public)
/help                   this list
/quit                   leave (also Ctrl-D, or Ctrl-C twice)"""


@dataclass(slots=True)
class LiveReply:
    message: Message
    text: str = ""
    state: str = "queued"
    by: str | None = None
    stopping: bool = False
    # True when this chat saw the reply from its first event, so ``text`` is all of it.
    whole: bool = False
    started: float = field(default_factory=time.monotonic)
    # Where it waits (the ``queue`` event), while it waits.
    place: Place | None = None

    def state_text(self) -> str:
        """``queued · 2nd in line``, ``streaming · waiting for the model · 3rd in line``."""
        place, state = self.place, self.state
        if place is not None and state == "queued" and place.position > 1:
            return f"{state} · {ordinal(place.position)} in line"
        if place is not None and state == "streaming" and not self.text:
            if place.model_position is not None and place.model_position > 1:
                return f"waiting for the model · {ordinal(place.model_position)} in line"
        return state


def speaker(message: Message) -> str:
    """Who a message is shown under: a person's username; an assistant's name, with its
    handle when the name does not already say it ("Coder (@coder)", "Assistant"); a
    reply from a server before assistants, "assistant"."""
    if message.role != "assistant":
        return message.author or "?"
    who = message.assistant
    if who is None:
        return message.author or "assistant"
    if who.name.casefold() == who.handle.casefold():
        return who.name
    return f"{who.name} (@{who.handle})"


def describe_assistants(room: Room) -> list[str]:
    """``/assistants``: one line per assistant of ``room``, as ``@handle`` can ask it."""
    if not room.assistants:
        return ["  no assistants in this room"]
    width = max(len(a.handle) for a in room.assistants) + 1
    lines = []
    for a in room.assistants:
        answers = "answers every message" if a.mode == "always" else "answers when mentioned"
        shared = " · shared" if a.shared else ""
        lines.append(f"  @{a.handle:<{width}} {a.name} · {a.model} · {answers}{shared}")
    return lines


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th ... 11th, 12th, 13th ... 21st."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def clock(message: Message) -> str:
    created = message.created_at
    if created is None:
        return datetime.now().strftime("%H:%M")  # noqa: DTZ005 (the reader's own clock)
    return created.astimezone().strftime("%H:%M")


def when(message: Message, today: datetime | None = None) -> str:
    """``14:05`` for a message of today, ``2025-03-04 14:05`` for an older one (a search
    finds last week's messages too)."""
    created = message.created_at
    if created is None:
        return "?"
    local = created.astimezone()
    now = today or datetime.now().astimezone()
    return local.strftime("%H:%M" if local.date() == now.date() else "%Y-%m-%d %H:%M")


def describe_hit(hit: SearchHit) -> list[tuple[str, str]]:
    """One search result as a line: when, who, the snippet with the matched words marked
    (on one line), and the id that /edit #ID and /delete ID take."""
    message = hit.message
    style = "class:assistant" if message.role == "assistant" else "class:author"
    fragments = [("class:time", f"  [{when(message)}] "), (style, speaker(message)), ("", ": ")]
    for text, matched in hit.parts():
        fragments.append(("class:match" if matched else "", " ".join(text.splitlines())))
    fragments.append(("class:note", f"  #{message.id}"))
    return fragments


def describe_end(event: Generation) -> str:
    """``complete · 12 tokens · first token 180 ms · 7.8 tokens/s`` and the like."""
    parts = [event.state if not event.by else f"{event.state} by {event.by}"]
    reason = REASONS.get(event.reason or "", event.reason)
    if reason and event.state != "complete":
        parts[0] += f": {reason}"
    m: Metrics | None = event.metrics
    if m is not None:
        if m.tokens is not None:
            parts.append(f"{m.tokens} tokens")
        if m.ttft_ms is not None:
            parts.append(f"first token {m.ttft_ms:.0f} ms")
        if m.tokens_per_second:
            parts.append(f"{m.tokens_per_second:.1f} tokens/s")
    return " · ".join(parts)


class ChatApp:
    """The chat's state and screen. ``run()`` returns the process exit code."""

    def __init__(
        self,
        client: Client,
        slug: str,
        *,
        transport: Transport = "auto",
        join: bool = False,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self.client = client
        self.slug = slug
        self.transport: Transport = transport
        self.join_public = join
        self.history = history
        self.room: RoomSession | None = None
        self.live: dict[str, LiveReply] = {}
        # The room's assistants as last known (what a `room` event is compared with).
        self.assistants: tuple[Assistant, ...] = ()
        self.typing_until: dict[str, float] = {}
        self._note = ""
        self._note_until: float | None = 0.0
        self.voice_next: str | None = None
        self.audio_path: Path | None = None
        self.printed: set[str] = set()
        # The newest assistant reply seen: what a bare /regen asks again.
        self.last_reply: str | None = None
        # Who wrote each printed message (edits and deletes name them), and this member's
        # own messages, newest last (what /edit and /delete address by default).
        self.authors: dict[str, str] = {}
        self.mine: list[str] = []
        # The last /search: its words and the ``before`` of its next page (None: no more).
        self.search_q: str | None = None
        self.search_before: str | None = None
        self.last_ctrl_c = 0.0
        self.last_typing_sent = 0.0
        self.exit_code = 0
        self.fatal: ParleyError | None = None
        self.pump: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.prompt: PromptSession[str] = PromptSession(
            message=self._prompt_message,
            bottom_toolbar=self._status_line,
            key_bindings=self._keys(),
            style=STYLE,
            erase_when_done=True,
            refresh_interval=REFRESH_SECONDS,
        )
        self.prompt.default_buffer.on_text_changed += self._typed

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Join, then read lines until quit; errors that end the session end the chat."""
        await self.enter(self.slug)  # errors here reach the caller as one line
        try:
            while self.fatal is None:
                try:
                    line = await self.prompt.prompt_async()
                except EOFError:
                    break
                if self.fatal is not None:
                    break
                if not await self.handle(line.strip()):
                    break
        finally:
            await self.leave()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.fatal is not None:
            raise self.fatal
        return self.exit_code

    async def enter(self, slug: str) -> None:
        """Open ``slug`` (after showing its latest messages), replacing the current room."""
        try:
            page = await self.client.messages(slug, limit=self.history) if self.history else None
        except NotMember:
            if not self.join_public:
                raise
            await self.client.join(slug)
            page = await self.client.messages(slug, limit=self.history)
        room = self.client.room(
            slug,
            transport=self.transport,
            after=page.head if page else None,
            audio=bool(self.audio_path),
        )
        await room.open()
        await self.leave()
        self.room, self.slug = room, slug
        self.assistants = room.room.assistants
        self.live.clear()
        self.typing_until.clear()
        r = room.room
        self.say(
            ("class:note", f"joined {r.name} ({r.slug}) · {r.visibility} · owner {r.owner} · "),
            ("class:note", f"over {room.transport} · /help for commands"),
        )
        for message in page.messages if page else []:
            if message.is_terminal or message.role == "user":
                self.print_message(message)
            else:
                self.live[message.id] = LiveReply(message, message.text, message.status)
        self.pump = asyncio.create_task(self._pump(room))

    async def leave(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pump
            self.pump = None
        if self.room is not None:
            await self.room.close()
            self.room = None

    async def _pump(self, room: RoomSession) -> None:
        try:
            async for event in room.events():
                await self.on_event(event)
        except ParleyError as exc:
            self.fatal = exc
            self._exit_prompt()

    def _exit_prompt(self) -> None:
        app = self.prompt.app
        if app.is_running and app.future is not None and not app.future.done():
            app.exit(exception=EOFError())

    # --- events ----------------------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        if isinstance(event, MessageEvent):
            message = event.message
            if message.role == "assistant":
                self.live[message.id] = LiveReply(message, message.text, message.status, whole=True)
                self.last_reply = message.id
            else:
                self.print_message(message)
        elif isinstance(event, Delta):
            reply = self.live.get(event.message_id)
            if reply is not None:
                reply.text += event.text
                reply.state = "streaming" if reply.state == "queued" else reply.state
        elif isinstance(event, Generation):
            await self.on_generation(event)
        elif isinstance(event, Snapshot):
            self.say(("class:note", "(the server could not replay everything: resynced)"))
            self.live.clear()
            for message in event.messages:
                if message.id in self.printed:
                    continue
                if message.is_terminal or message.role == "user":
                    self.print_message(message)
                else:
                    self.live[message.id] = LiveReply(message, message.text, message.status)
        elif isinstance(event, RoomEvent):
            self.on_room(event.room)
        elif isinstance(event, VersionEvent):
            who = f" by {event.by}" if event.by else ""
            self.say(
                (
                    "class:note",
                    f"(reply {event.message_id} has {event.versions} versions; "
                    f"#{event.current} is current{who})",
                )
            )
        elif isinstance(event, EditEvent):
            who = self.authors.get(event.message_id, event.by or "someone")
            self.say(("class:note", f"({who} edited message {event.message_id}:)"))
            self.say(("", f"  {event.text}"))
        elif isinstance(event, DeleteEvent):
            self._forget_mine(event.message_id)
            author = self.authors.get(event.message_id)
            whose = f"{author}'s message" if author else "a message"
            self.say(("class:note", f"({whose} {event.message_id} was deleted by {event.by})"))
        elif isinstance(event, RatingEvent):
            self.set_note(f"reply {event.message_id}: {event.up} up, {event.down} down")
        elif isinstance(event, QueuePlaces):
            for place in event.replies:
                if (waiting := self.live.get(place.message_id)) is not None:
                    waiting.place = place
        elif isinstance(event, Typing):
            self.typing_until[event.username] = time.monotonic() + TYPING_SHOWN_SECONDS
        elif isinstance(event, Presence):
            pass  # the status line reads room.online
        elif isinstance(event, Reconnecting):
            self.set_note(f"reconnecting (attempt {event.attempt}): {event.reason}", sticky=True)
        elif isinstance(event, Hello):
            if self.room is not None and self.room.connects > 1:
                self.set_note(f"reconnected over {event.transport}")
        elif isinstance(event, ErrorEvent):
            self.say(("class:error", f"server: {event.detail or event.code}"))
        elif isinstance(event, AudioEnd | AudioCancel) and self.audio_path and event.message_id:
            self._spawn(self.save_audio(event.message_id))
        self.refresh()

    def on_room(self, room: Room) -> None:
        """The room's settings or assistants changed: say what changed in its assistants
        (the session now lists them so; ``/assistants`` shows them)."""
        before = {a.handle: a for a in self.assistants}
        after = {a.handle: a for a in room.assistants}
        for handle in after.keys() - before.keys():
            self.say(("class:note", f"@{handle} ({after[handle].name}) joined the room"))
        for handle in before.keys() - after.keys():
            self.say(("class:note", f"@{handle} ({before[handle].name}) left the room"))
        for handle in after.keys() & before.keys():
            if after[handle] != before[handle]:
                self.say(("class:note", f"@{handle} ({after[handle].name}) was changed"))
        self.assistants = room.assistants

    async def on_generation(self, event: Generation) -> None:
        reply = self.live.get(event.message_id)
        if reply is None:
            return
        reply.state, reply.by = event.state, event.by
        if not event.is_terminal:
            return
        del self.live[event.message_id]
        text = reply.text
        if not reply.whole:  # joined mid-reply: the server has the whole text
            with contextlib.suppress(ParleyError):
                text = (await self.client.message(event.message_id)).text
        self.print_message(reply.message, text=text)
        self.say(("class:state", f"  ({describe_end(event)})"))

    async def save_audio(self, message_id: str) -> None:
        if self.room is None or self.audio_path is None:
            return
        clip = await self.room.wait_audio(message_id)
        if not clip.chunks:
            return
        path = self.audio_path.with_name(
            f"{self.audio_path.stem}-{message_id}{self.audio_path.suffix or '.wav'}"
        )
        await asyncio.to_thread(clip.write_wav, path)
        self.say(("class:note", f"saved {clip.seconds:.1f} s of audio to {path}"))

    # --- input -----------------------------------------------------------------------------

    async def handle(self, line: str) -> bool:
        """Act on one input line; False to quit."""
        if not line:
            return True
        if line.startswith("/"):
            command, _, arg = line[1:].partition(" ")
            return await self.command(command.lower(), arg.strip())
        await self.send(line)
        return True

    async def send(self, text: str) -> None:
        assert self.room is not None
        voice, self.voice_next = self.voice_next, None
        try:
            await self.room.send(text, voice=voice)
        except ParleyError as exc:
            self.say(("class:error", f"not sent: {exc}"))

    async def command(self, name: str, arg: str) -> bool:
        room = self.room
        assert room is not None
        try:
            if name in ("quit", "exit", "q"):
                return False
            if name == "help":
                self.say(("", HELP))
            elif name in ("pause", "resume", "stop"):
                await self.control(name, arg or None)
            elif name in ("regen", "regenerate"):
                target = arg or self.last_reply
                if target is None:
                    self.say(("class:note", "no reply to regenerate yet"))
                else:
                    await room.regenerate(target)
            elif name == "edit":
                await self.edit(arg)
            elif name == "delete":
                await self.delete(arg or None)
            elif name == "search":
                await self.search(arg)
            elif name == "more":
                await self.search_more()
            elif name == "voice":
                if arg not in VOICE_MODES:
                    self.say(("class:error", "usage: /voice normal|streaming|realtime|off"))
                else:
                    self.voice_next = arg
                    self.say(("class:note", f"the next reply: voice {arg}"))
            elif name == "audio":
                await self.set_audio(arg)
            elif name == "assistants":
                for line in describe_assistants(room.room):
                    self.say(("", line))
            elif name == "rooms":
                await self.list_rooms()
            elif name == "join":
                if not arg:
                    self.say(("class:error", "usage: /join SLUG"))
                else:
                    self.join_public = True
                    await self.enter(arg)
            else:
                self.say(("class:error", f"unknown command /{name}; /help lists them"))
        except ParleyError as exc:
            self.say(("class:error", f"/{name}: {exc}"))
        return True

    async def control(self, action: str, message_id: str | None = None) -> None:
        assert self.room is not None
        target = message_id or self.current_reply()
        if target is None:
            self.say(("class:note", "no reply is being generated"))
            return
        if action == "stop" and target in self.live:
            self.live[target].stopping = True
        await getattr(self.room, action)(target)

    async def edit(self, arg: str) -> None:
        """``/edit TEXT`` edits your last message; ``/edit #ID TEXT`` message ID."""
        assert self.room is not None
        target: str | None
        if arg.startswith("#"):
            target, _, text = arg[1:].partition(" ")
        else:
            target, text = (self.mine[-1] if self.mine else None), arg
        text = text.strip()
        if not text:
            self.say(("class:error", "usage: /edit TEXT, or /edit #ID TEXT"))
            return
        if not target:
            self.say(("class:note", "you have sent no message here to edit"))
            return
        await self.room.edit(target, text)

    async def delete(self, message_id: str | None) -> None:
        """``/delete`` deletes your last message; ``/delete ID`` message ID."""
        assert self.room is not None
        target = message_id.lstrip("#") if message_id else (self.mine[-1] if self.mine else None)
        if not target:
            self.say(("class:note", "you have sent no message here to delete"))
            return
        await self.room.delete(target)

    async def search(self, words: str) -> None:
        """``/search WORDS``: the first page of this room's messages with WORDS."""
        if not words:
            self.say(("class:error", "usage: /search WORDS (then /more for older matches)"))
            return
        self.search_q, self.search_before = words, None
        await self._search_page()

    async def search_more(self) -> None:
        """``/more``: the next page of the last search."""
        if self.search_q is None:
            self.say(("class:note", "nothing searched yet: /search WORDS"))
        elif self.search_before is None:
            self.say(("class:note", f"no older matches for {self.search_q!r}"))
        else:
            await self._search_page()

    async def _search_page(self) -> None:
        assert self.search_q is not None
        first = self.search_before is None
        page = await self.client.search(self.slug, self.search_q, before=self.search_before)
        if first:
            found = "no messages match" if not page.hits else "messages matching"
            self.say(("class:note", f"{found} {self.search_q!r}, newest first:"))
        for hit in page.hits:
            self.say(*describe_hit(hit))
        self.search_before = page.next_before
        if page.more:
            self.say(("class:note", "  (older matches: /more)"))
        elif page.hits:
            self.say(("class:note", "  (no older matches)"))

    def _forget_mine(self, message_id: str) -> None:
        with contextlib.suppress(ValueError):
            self.mine.remove(message_id)

    async def set_audio(self, arg: str) -> None:
        assert self.room is not None
        if not arg:
            self.say(("class:error", "usage: /audio FILE.wav, or /audio off"))
            return
        if arg == "off":
            self.audio_path = None
            await self.room.set_audio(False)
            self.say(("class:note", "audio off"))
            return
        self.audio_path = _expand(arg)
        await self.room.set_audio(True)
        self.say(("class:note", f"spoken replies will be saved as {self.audio_path}"))

    async def list_rooms(self) -> None:
        rooms = await self.client.rooms()
        for r in rooms:
            here = " (here)" if r.slug == self.slug else ""
            self.say(("", f"  {r.slug:<24} {r.name} · {r.visibility} · owner {r.owner}{here}"))

    def current_reply(self) -> str | None:
        """The reply a bare /stop or Ctrl-C means: the one streaming, else the newest."""
        for reply_id, reply in reversed(self.live.items()):
            if reply.state in ("streaming", "paused"):
                return reply_id
        return next(reversed(self.live), None) if self.live else None

    def _keys(self) -> KeyBindings:
        keys = KeyBindings()

        @keys.add("c-c")
        def _(event: KeyPressEvent) -> None:
            now = time.monotonic()
            if now - self.last_ctrl_c < DOUBLE_PRESS_SECONDS:
                event.app.exit(exception=EOFError())
                return
            self.last_ctrl_c = now
            target = self.current_reply()
            if target is not None and not self.live[target].stopping:
                self._spawn(self.command("stop", ""))
                self.set_note("stopping the reply (Ctrl-C again quits)")
            elif event.current_buffer.text:
                event.current_buffer.reset()
            else:
                self.set_note("Ctrl-C again quits")
            self.refresh()

        return keys

    def _typed(self, _: object) -> None:
        now = time.monotonic()
        room = self.room
        if room is None or not self.prompt.default_buffer.text:
            return
        if now - self.last_typing_sent >= TYPING_SEND_INTERVAL:
            self.last_typing_sent = now
            self._spawn(room.typing())

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- drawing ---------------------------------------------------------------------------

    def say(self, *fragments: tuple[str, str]) -> None:
        """Print a line above the prompt (into the terminal's scrollback)."""
        print_formatted_text(FormattedText(list(fragments)), style=STYLE)

    def print_message(self, message: Message, *, text: str | None = None) -> None:
        """Print ``message`` wrapped at word boundaries to the terminal's width, its later
        lines indented under the first (the terminal's own wrap would cut words)."""
        self.printed.add(message.id)
        if message.role == "assistant":
            self.last_reply = message.id
        you = self.room.you if self.room else ""
        author = speaker(message)
        self.authors[message.id] = author
        if message.role == "user" and author == you and not message.deleted:
            self.mine.append(message.id)
        if message.deleted:
            text = "(message deleted)"
        elif message.edited and text is None:
            text = f"{message.text} (edited)"
        style = (
            "class:assistant"
            if message.role == "assistant"
            else ("class:me" if author == you else "class:author")
        )
        stamp = f"[{clock(message)}] "
        mark = SPOKEN_MARK if message.spoken else ""
        head = f"{stamp}{author}{mark}: "
        width = max(20, self.prompt.app.output.get_size().columns)
        lines = _wrap(
            message.text if text is None else text,
            width,
            first=len(head),
            indent=len(stamp),
        )
        fragments = [("class:time", stamp), (style, author)]
        if mark:
            fragments.append(("class:spoken", mark))
        fragments.append(("", ": " + lines[0]))
        for line in lines[1:]:
            fragments.append(("", "\n" + " " * len(stamp) + line))
        self.say(*fragments)

    def set_note(self, text: str, *, sticky: bool = False) -> None:
        """Show ``text`` in the status line for a while (``sticky``: until replaced)."""
        self._note = text
        self._note_until = None if sticky else time.monotonic() + NOTE_SECONDS

    def refresh(self) -> None:
        app = self.prompt.app
        if app.is_running:
            app.invalidate()

    def _prompt_message(self) -> FormattedText:
        fragments: list[tuple[str, str]] = []
        width = max(20, self.prompt.app.output.get_size().columns)
        for reply in self.live.values():
            state = reply.state_text() + (" · stopping" if reply.stopping else "")
            fragments.append(("class:time", f"[{clock(reply.message)}] "))
            fragments.append(("class:assistant", speaker(reply.message)))
            fragments.append(("class:state", f" ({state})\n"))
            lines = _wrap(reply.text, width)[-LIVE_LINES:] if reply.text else []
            for line in lines:
                fragments.append(("", line + "\n"))
        fragments.append(("class:prompt", f"{self.slug}> "))
        return FormattedText(fragments)

    def _status_line(self) -> FormattedText:
        room = self.room
        if room is None:
            return FormattedText([("", " connecting…")])
        now = time.monotonic()
        parts = [f" {self.slug}", room.transport if room.connected else "offline"]
        parts.append("online: " + (", ".join(room.online) or "nobody"))
        typing = [u for u, until in self.typing_until.items() if until > now and u != room.you]
        if typing:
            parts.append(
                ", ".join(typing) + (" is typing…" if len(typing) == 1 else " are typing…")
            )
        queued = sum(1 for r in self.live.values() if r.state == "queued")
        if queued:
            parts.append(f"{queued} queued")
        if self.voice_next:
            parts.append(f"next reply: voice {self.voice_next}")
        if self._note and (self._note_until is None or self._note_until > now):
            parts.append(self._note)
        return FormattedText([("", " · ".join(parts))])


def _expand(path: str) -> Path:
    """``~`` in a path the user typed (a string operation; no file system access)."""
    return Path(path).expanduser()


def _wrap(text: str, width: int, *, first: int = 0, indent: int = 0) -> list[str]:
    """Lines of ``text`` that fit ``width`` columns, broken at spaces (a word longer than a
    line is cut). The first line has ``first`` columns taken before it, the others
    ``indent``; paragraphs and blank lines are kept. textwrap does the breaking; its
    indents are only used as placeholders for what the caller prints there. It counts
    characters, not cells: a line of wide (CJK) characters may still reach the edge."""
    if first > width // 2:  # a very long name: the text starts on the next line
        return ["", *_wrap(text, width, first=indent, indent=indent)]
    out: list[str] = []
    for number, paragraph in enumerate(text.split("\n")):
        lines = textwrap.wrap(
            paragraph,
            width=width,
            initial_indent=" " * (first if number == 0 else indent),
            subsequent_indent=" " * indent,
            break_on_hyphens=False,
        )
        # Strip only the placeholders, not the paragraph's own leading spaces.
        out += [
            line[(first if number == 0 and i == 0 else indent) :] for i, line in enumerate(lines)
        ]
        if not lines:
            out.append("")
    return out
