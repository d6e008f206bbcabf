"""The room channel's delivery state machine (chat/events/delivery/channel.py), in process.

A real ``RoomChannel`` (this loop's runtime's, through ``get_fanout``) over the in-memory
channel layer and the real ``MemoryEventStore``, with real rooms and messages in the
database. The subscribers are recording fakes of ``Subscriber`` (what a transport would
have written, and how it was closed), or a real ``SseSubscriber`` where the stream a
reader gets is the point.

What a member notices: a resume brings exactly what they missed, in order, from memory
when it can, from the log when it must, or as one snapshot when the log lost it; what
arrives while they catch up follows once, in order; an event whose fan-out was lost
still reaches them, before the next; a reader too slow for its bound is cut with 4408
and nobody else is held up; typing never echoes to the typist; audio reaches only those
who asked for it; a reply paces itself by the room's outbound (``drained``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat.events import (
    delta_body,
    group_name,
    message_body,
    room_audio_emit,
    room_event_emit,
    room_live_emit,
)
from chat.events.delivery import SseSubscriber, Subscriber, get_fanout
from chat.events.delivery.channel import RoomChannel
from chat.events.frames import Frame
from chat.replies import db
from chat.runtime import get_runtime
from chat.serializers import message_to_dict
from core import contract

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 5.0  # seconds: every wait below is for something that takes milliseconds


# --- recording subscribers ------------------------------------------------------------


class Recorder(Subscriber):
    """Records what its transport would have written and how it was closed."""

    kind = "test"

    def __init__(self, user: Any, *, audio: bool = False) -> None:
        super().__init__(user_id=user.pk, username=user.username, token_id=None, audio=audio)
        self.frames: list[Frame] = []
        self.closed: list[tuple[int, str]] = []
        # Frames written after the subscriber was closed (a closed transport must get none).
        self.after_close: list[Frame] = []
        self._changed = asyncio.Event()

    async def offer(self, frame: Frame) -> bool:
        ok = await super().offer(frame)
        self._changed.set()
        return ok

    async def write(self, frame: Frame) -> bool:
        (self.after_close if self.ended else self.frames).append(frame)
        self._changed.set()
        return True

    async def end(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until ``predicate()`` holds (checked on every offer, write and close)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def reached(self, seq: int) -> None:
        await self.until(lambda: any(f.seq is not None and f.seq >= seq for f in self.frames))

    def seqs(self) -> list[int]:
        return [f.seq for f in self.frames if f.seq is not None]

    def texts(self) -> list[str]:
        return [f.event["text"] for f in self.frames if f.type == "delta" and f.event]


class Full(Recorder):
    """A transport whose buffer is full: every write reports the bound."""

    async def write(self, frame: Frame) -> bool:
        await super().write(frame)
        return False


# --- the room and its channel ---------------------------------------------------------


@pytest.fixture
def people(make_user: Any, make_room: Any, settings: Any) -> tuple[Any, Any, Any]:
    """(room, ann, bob): a room ann owns and bob is a member of."""
    from chat.services import room_join

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast
    ann, _ = make_user("ann")
    bob, _ = make_user("bob")
    room = make_room(ann, "Channel")
    room_join(room=room, user=bob)
    return room, ann, bob


@pytest.fixture
async def open_channel(people: Any) -> AsyncIterator[Callable[[], Awaitable[RoomChannel]]]:
    """``await open_channel()``: this loop's room channel for the room, subscribed to the
    layer. The runtime (fan-out, hub, presence) is closed after the test."""
    room = people[0]

    async def open_() -> RoomChannel:
        channel = get_fanout().room(room.pk)
        await channel.ready()
        return channel

    yield open_
    await get_runtime().aclose()


_words = itertools.count()


async def emit_words(room_id: int, count: int, *, size: int = 0) -> list[dict[str, Any]]:
    """Emit ``count`` deltas of a reply (each text unique, padded to ``size``)."""
    events = []
    for _ in range(count):
        text = f"w{next(_words)} ".ljust(size, "x")
        events.append(
            await room_event_emit(room_id=room_id, body=delta_body(message_id="77", text=text))
        )
    return events


def _store_message(room: Any, user: Any, text: str) -> dict[str, Any]:
    sent = db.create_messages(
        user=user,
        room=room,
        text=text,
        client_id="",
        ask=False,
        ask_ai=False,
        queued=0,
        worker="test",
    )
    return dict(message_to_dict(sent.message, room_slug=room.slug))


async def say(room: Any, user: Any, text: str) -> dict[str, Any]:
    """A user's message, stored and emitted as the send service does."""
    message = await database_sync_to_async(_store_message)(room, user, text)
    return await room_event_emit(room_id=room.pk, body=message_body(message))


S = TypeVar("S", bound=Subscriber)


async def subscribe(channel: RoomChannel, sub: S, after: int | None) -> S:
    """Register ``sub`` and bring it to live from ``after``, as ``Subscription`` does."""
    head = channel.add(sub)
    sub.last_seq = head
    await channel.catch_up(sub, after, head)
    return sub


def count_store_reads(channel: RoomChannel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``after`` of every read of the room's log (``EventHub.replay``) from now on."""
    reads: list[int] = []
    replay = channel.hub.replay

    async def counted(room_id: int, after: int) -> list[dict[str, Any]] | None:
        reads.append(after)
        return await replay(room_id, after)

    monkeypatch.setattr(channel.hub, "replay", counted)
    return reads


class HeldReplay:
    """Holds every read of the room's log until ``release``: a replay that is slow, so
    that live events arrive while a subscriber catches up. ``read_first``: the log is
    read before the hold (the replay ends where the live events begin), else after it
    (the replay overlaps them)."""

    def __init__(self, channel: RoomChannel, monkeypatch: pytest.MonkeyPatch, *, read_first: bool):
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        replay = channel.hub.replay

        async def held(room_id: int, after: int) -> list[dict[str, Any]] | None:
            events = await replay(room_id, after) if read_first else None
            self.entered.set()
            await self.gate.wait()
            return events if read_first else await replay(room_id, after)

        monkeypatch.setattr(channel.hub, "replay", held)

    async def wait_entered(self) -> None:
        await asyncio.wait_for(self.entered.wait(), WAIT)

    def release(self) -> None:
        self.gate.set()


def seqs_of(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


# --- catching up ----------------------------------------------------------------------


async def test_a_resume_within_the_recent_frames_is_replayed_from_memory(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room, ann, _ = people
    channel = await open_channel()
    watcher = await subscribe(channel, Recorder(ann), after=None)
    events = await emit_words(room.pk, 6)
    await watcher.reached(events[-1]["seq"])
    reads = count_store_reads(channel, monkeypatch)

    late = await subscribe(channel, Recorder(ann), after=events[1]["seq"])

    assert late.seqs() == seqs_of(events[2:])
    assert late.texts() == [e["text"] for e in events[2:]]
    assert reads == []  # no store read: the room's recent frames held it all
    assert not late.catching_up


async def test_a_resume_older_than_the_recent_frames_is_read_from_the_log(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.PARLEY_FANOUT_RECENT_FRAMES = 3
    room, ann, _ = people
    channel = await open_channel()
    watcher = await subscribe(channel, Recorder(ann), after=None)
    events = await emit_words(room.pk, 8)
    await watcher.reached(events[-1]["seq"])
    reads = count_store_reads(channel, monkeypatch)

    late = await subscribe(channel, Recorder(ann), after=events[0]["seq"])

    assert late.seqs() == seqs_of(events[1:])
    assert late.texts() == [e["text"] for e in events[1:]]
    assert reads == [events[0]["seq"]]


async def test_a_resume_at_the_head_replays_nothing_and_goes_on_live(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room, ann, _ = people
    before = await emit_words(room.pk, 3)
    channel = await open_channel()
    reads = count_store_reads(channel, monkeypatch)

    sub = await subscribe(channel, Recorder(ann), after=before[-1]["seq"])
    later = await emit_words(room.pk, 2)
    await sub.reached(later[-1]["seq"])

    assert sub.seqs() == seqs_of(later)
    assert reads == []


async def test_a_resume_after_a_seq_never_issued_gets_one_snapshot_then_live(
    people: Any, open_channel: Any
) -> None:
    room, ann, _ = people
    said = await say(room, ann, "hello there")
    channel = await open_channel()
    head = channel.last_seq

    sub = await subscribe(channel, Recorder(ann), after=head + 50)

    assert [f.type for f in sub.frames] == ["snapshot"]
    snapshot = sub.frames[0].event
    assert snapshot is not None
    assert snapshot["seq"] == head
    assert [(m["id"], m["text"]) for m in snapshot["messages"]] == [
        (said["message"]["id"], "hello there")
    ]
    # The stream goes on from the snapshot's seq, not from the bogus ``after``.
    later = await emit_words(room.pk, 2)
    await sub.reached(later[-1]["seq"])
    assert sub.seqs() == [head, *seqs_of(later)]


async def test_a_resume_the_log_no_longer_holds_gets_one_snapshot_then_live(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room, ann, bob = people
    first = await say(room, ann, "one")
    await say(room, bob, "two")
    await say(room, ann, "three")
    channel = await open_channel()

    async def lost(room_id: int, after: int) -> None:
        return None  # e.g. a Redis restarted without its log

    monkeypatch.setattr(channel.hub.store, "since", lost)
    sub = await subscribe(channel, Recorder(ann), after=first["seq"])

    assert [f.type for f in sub.frames] == ["snapshot"]
    snapshot = sub.frames[0].event
    assert snapshot is not None
    assert snapshot["seq"] == channel.last_seq
    assert [m["text"] for m in snapshot["messages"]] == ["one", "two", "three"]
    later = await emit_words(room.pk, 1)
    await sub.reached(later[-1]["seq"])
    assert sub.seqs() == [snapshot["seq"], later[-1]["seq"]]


@pytest.mark.parametrize("read_first", [True, False], ids=["log-read-first", "log-read-last"])
async def test_what_arrives_during_a_catch_up_follows_the_replay_once_and_in_order(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch, read_first: bool
) -> None:
    room, ann, _ = people
    missed = await emit_words(room.pk, 4)
    channel = await open_channel()  # its recent frames begin after ``missed``: a log read
    held = HeldReplay(channel, monkeypatch, read_first=read_first)
    sub = Recorder(ann)
    head = channel.add(sub)
    sub.last_seq = head
    catching_up = asyncio.create_task(channel.catch_up(sub, missed[0]["seq"], head))
    await held.wait_entered()

    live = await emit_words(room.pk, 4)
    await sub.until(lambda: len(sub.backlog) == len(live))
    assert sub.frames == []  # nothing goes out ahead of the replay
    held.release()
    await asyncio.wait_for(catching_up, WAIT)

    expected = missed[1:] + live
    assert sub.seqs() == seqs_of(expected)
    assert sub.texts() == [e["text"] for e in expected]
    # Then live, directly.
    after = await emit_words(room.pk, 1)
    await sub.reached(after[-1]["seq"])
    assert sub.seqs() == seqs_of(expected + after)


# --- live -----------------------------------------------------------------------------


def lose_the_next_fan_out(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The channel layer drops the next durable event's publish (a pub/sub connection
    that dropped); returns the list its seq is put in."""
    layer = get_channel_layer()
    assert layer is not None
    group_send = layer.group_send
    lost: list[int] = []

    async def lossy(group: str, message: dict[str, Any]) -> None:
        if message.get("type") == contract.LAYER_ROOM_EVENT and not lost:
            lost.append(message["event"]["seq"])
            raise ConnectionError("the pub/sub connection dropped")
        await group_send(group, message)

    monkeypatch.setattr(layer, "group_send", lossy)
    return lost


async def test_an_event_whose_fan_out_was_lost_arrives_before_the_next_one(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room, ann, bob = people
    channel = await open_channel()
    a = await subscribe(channel, Recorder(ann), after=None)
    b = await subscribe(channel, Recorder(bob), after=None)
    lost = lose_the_next_fan_out(monkeypatch)
    reads = count_store_reads(channel, monkeypatch)

    events = await emit_words(room.pk, 2)  # the first one's fan-out is lost
    await a.reached(events[-1]["seq"])
    await b.reached(events[-1]["seq"])

    assert lost == [events[0]["seq"]]
    assert a.seqs() == b.seqs() == seqs_of(events)
    assert a.texts() == [e["text"] for e in events]
    assert reads == [events[0]["seq"] - 1]  # read once for the whole process


async def test_a_gap_the_log_no_longer_holds_is_bridged_by_one_snapshot(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room, ann, _ = people
    channel = await open_channel()
    sub = await subscribe(channel, Recorder(ann), after=None)
    lose_the_next_fan_out(monkeypatch)

    async def forgotten(room_id: int, after: int) -> None:
        return None

    said = await say(room, ann, "lost in the gap")  # its fan-out is lost ...
    monkeypatch.setattr(channel.hub.store, "since", forgotten)  # ... and so is the log
    later = await emit_words(room.pk, 1)
    await sub.reached(later[-1]["seq"])

    # One snapshot, exact at the head it was read at (the later event's seq): it holds
    # the lost message, and the later event is not sent again on top of it.
    assert [f.type for f in sub.frames] == ["snapshot"]
    snapshot = sub.frames[0].event
    assert snapshot is not None
    assert [m["text"] for m in snapshot["messages"]] == ["lost in the gap"]
    assert snapshot["seq"] == later[-1]["seq"] > said["seq"]
    after = await emit_words(room.pk, 1)
    await sub.reached(after[-1]["seq"])
    assert sub.seqs() == [snapshot["seq"], after[-1]["seq"]]


async def test_an_event_sent_twice_is_delivered_once(people: Any, open_channel: Any) -> None:
    room, ann, _ = people
    channel = await open_channel()
    sub = await subscribe(channel, Recorder(ann), after=None)
    first = await emit_words(room.pk, 2)
    layer = get_channel_layer()
    assert layer is not None

    await layer.group_send(
        group_name(room.pk), {"type": contract.LAYER_ROOM_EVENT, "event": first[0]}
    )
    later = await emit_words(room.pk, 1)
    await sub.reached(later[-1]["seq"])

    assert sub.seqs() == seqs_of(first + later)


# --- slow readers ---------------------------------------------------------------------


async def test_a_reader_whose_backlog_passes_the_bound_is_cut_and_the_others_go_on(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.PARLEY_WS_MAX_BUFFER = 500
    room, ann, bob = people
    missed = await emit_words(room.pk, 2)
    channel = await open_channel()
    steady = await subscribe(channel, Recorder(ann), after=None)
    held = HeldReplay(channel, monkeypatch, read_first=True)
    slow = Recorder(bob)
    head = channel.add(slow)
    slow.last_seq = head
    catching_up = asyncio.create_task(channel.catch_up(slow, missed[0]["seq"], head))
    await held.wait_entered()

    live = await emit_words(room.pk, 4, size=200)  # 4 frames of over 200 bytes
    await steady.reached(live[-1]["seq"])

    assert slow.closed == [(contract.TOO_SLOW.code, contract.TOO_SLOW.reason)]
    assert slow.id not in channel.subscribers
    assert steady.seqs() == seqs_of(live)
    held.release()
    await asyncio.wait_for(catching_up, WAIT)
    assert slow.frames == []


async def test_a_reader_whose_transport_is_full_is_cut_and_the_others_go_on(
    people: Any, open_channel: Any
) -> None:
    room, ann, bob = people
    channel = await open_channel()
    full = await subscribe(channel, Full(bob), after=None)
    steady = await subscribe(channel, Recorder(ann), after=None)

    events = await emit_words(room.pk, 3)
    await steady.reached(events[-1]["seq"])

    assert full.closed == [(contract.TOO_SLOW.code, contract.TOO_SLOW.reason)]
    assert full.id not in channel.subscribers
    assert full.seqs() == [events[0]["seq"]]  # the write that found it full; none after
    assert full.after_close == []
    assert steady.seqs() == seqs_of(events)


async def test_a_reader_cut_during_its_replay_is_written_nothing_more(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room, ann, bob = people
    missed = await emit_words(room.pk, 3)
    channel = await open_channel()
    held = HeldReplay(channel, monkeypatch, read_first=True)
    sub = Recorder(bob)
    head = channel.add(sub)
    sub.last_seq = head
    catching_up = asyncio.create_task(channel.catch_up(sub, missed[0]["seq"], head))
    await held.wait_entered()

    await channel.cut_too_slow(sub)  # e.g. its backlog passed the bound meanwhile
    held.release()
    await asyncio.wait_for(catching_up, WAIT)

    assert sub.closed == [(contract.TOO_SLOW.code, contract.TOO_SLOW.reason)]
    assert sub.after_close == []


async def test_a_member_removed_during_their_replay_reads_nothing_after_the_error(
    people: Any, open_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chat.models import Membership

    room, ann, bob = people
    missed = await emit_words(room.pk, 3)
    channel = await open_channel()
    held = HeldReplay(channel, monkeypatch, read_first=True)
    sse = SseSubscriber(user_id=bob.pk, username=bob.username, token_id=None)
    head = channel.add(sse)
    sse.last_seq = head
    catching_up = asyncio.create_task(channel.catch_up(sse, missed[0]["seq"], head))
    await held.wait_entered()

    await database_sync_to_async(Membership.objects.filter(room=room, user=bob).delete)()
    await channel.check_access()  # what the room's timer does every resync interval
    held.release()
    await asyncio.wait_for(catching_up, WAIT)

    async with asyncio.timeout(WAIT):
        body = b"".join([chunk async for chunk in sse.chunks()])
    blocks = [block for block in body.split(b"\n\n") if block]
    assert blocks[-1].startswith(b"event: error\n")
    assert b'"code":"forbidden"' in blocks[-1]
    assert len(blocks) == 1, blocks


# --- live-only frames -----------------------------------------------------------------


async def test_typing_reaches_everyone_but_the_typist(people: Any, open_channel: Any) -> None:
    room, ann, bob = people
    channel = await open_channel()
    typist = await subscribe(channel, Recorder(ann), after=None)
    others = [
        await subscribe(channel, Recorder(bob), after=None),
        await subscribe(channel, Recorder(ann), after=None),  # the typist's other tab
    ]

    await room_live_emit(
        room_id=room.pk, event={"type": "typing", "username": "ann"}, exclude=typist.id
    )
    marker = await emit_words(room.pk, 1)  # after the typing event, on the same stream
    for sub in (typist, *others):
        await sub.reached(marker[-1]["seq"])

    assert [f.type for f in typist.frames] == ["delta"]
    for sub in others:
        assert [f.type for f in sub.frames] == ["typing", "delta"]
        assert sub.frames[0].seq is None
        assert sub.frames[0].event == {"type": "typing", "username": "ann"}


async def test_audio_reaches_only_the_subscribers_that_opted_in(
    people: Any, open_channel: Any
) -> None:
    room, ann, bob = people
    channel = await open_channel()
    listener = await subscribe(channel, Recorder(ann, audio=True), after=None)
    deaf = await subscribe(channel, Recorder(bob), after=None)
    start = {"type": "audio", "state": "start", "stream": 1, "message_id": "77"}
    pcm = (1).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\x01\x02" * 8

    await room_audio_emit(room_id=room.pk, event=start)
    await room_audio_emit(room_id=room.pk, frame=pcm)
    marker = await emit_words(room.pk, 1)
    await listener.reached(marker[-1]["seq"])
    await deaf.reached(marker[-1]["seq"])

    assert [f.type for f in listener.frames] == ["audio", "audio", "delta"]
    assert listener.frames[0].event == start
    assert listener.frames[1].binary == pcm
    assert [f.type for f in deaf.frames] == ["delta"]

    # Opting in and out takes effect for the next frame.
    channel.set_audio(deaf, True)
    channel.set_audio(listener, False)
    await room_audio_emit(room_id=room.pk, frame=pcm)
    marker = await emit_words(room.pk, 1)
    await listener.reached(marker[-1]["seq"])
    await deaf.reached(marker[-1]["seq"])

    assert [f.type for f in listener.frames] == ["audio", "audio", "delta", "delta"]
    assert [f.type for f in deaf.frames] == ["delta", "audio", "delta"]


# --- drained: the reply's pacing signal -----------------------------------------------


class WatchedProgress(asyncio.Event):
    """The room's drain signal, counting the waits on it: how a test knows the drain
    waiter is blocked (and on which round) without polling."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0
        self._waited = asyncio.Event()

    async def wait(self) -> bool:  # type: ignore[override]
        self.waits += 1
        self._waited.set()
        return await super().wait()

    async def until_waits(self, count: int, timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while self.waits < count:
                self._waited.clear()
                await self._waited.wait()


async def test_drained_returns_once_the_room_has_written_up_to_the_seq(
    people: Any, open_channel: Any
) -> None:
    room, ann, _ = people
    channel = await open_channel()
    sub = await subscribe(channel, Recorder(ann), after=None)
    channel.progress = progress = WatchedProgress()
    target = channel.last_seq + 2
    waiting = asyncio.create_task(channel.drained(target, timeout=60))
    await progress.until_waits(1)

    first = await emit_words(room.pk, 1)
    await sub.reached(first[-1]["seq"])
    # The drain waiter saw that progress and waits again: one event short.
    await progress.until_waits(2)
    assert not waiting.done()

    second = await emit_words(room.pk, 1)
    await asyncio.wait_for(waiting, WAIT)
    assert second[-1]["seq"] == target
    assert sub.seqs()[-1] == target  # written to the member before drained returned


async def test_drained_returns_at_once_with_no_subscriber_here(
    people: Any, open_channel: Any
) -> None:
    channel = await open_channel()

    await asyncio.wait_for(channel.drained(channel.last_seq + 100, timeout=60), 1)


async def test_drained_returns_at_once_for_a_seq_already_written(
    people: Any, open_channel: Any
) -> None:
    room, ann, _ = people
    channel = await open_channel()
    sub = await subscribe(channel, Recorder(ann), after=None)
    events = await emit_words(room.pk, 1)
    await sub.reached(events[-1]["seq"])

    await asyncio.wait_for(channel.drained(events[-1]["seq"], timeout=60), 1)


async def test_drained_gives_up_after_its_timeout_or_when_interrupted(
    people: Any, open_channel: Any
) -> None:
    room, ann, _ = people
    channel = await open_channel()
    await subscribe(channel, Recorder(ann), after=None)
    channel.progress = progress = WatchedProgress()
    loop = asyncio.get_running_loop()

    started = loop.time()
    await asyncio.wait_for(channel.drained(channel.last_seq + 100, timeout=0.05), WAIT)
    assert loop.time() - started >= 0.05

    interrupt = asyncio.Event()
    waits = progress.waits
    waiting = asyncio.create_task(
        channel.drained(channel.last_seq + 100, timeout=60, interrupt=interrupt)
    )
    await progress.until_waits(waits + 1)  # the drain waiter is blocked
    interrupt.set()  # a control arrived: the reply stops waiting for the outbound
    await asyncio.wait_for(waiting, WAIT)
