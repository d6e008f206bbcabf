"""A snapshot plus the events after it is the room as it stands now (``EventHub.snapshot``,
``EventHub.replay``), the property Zulip's ``verify_action`` checks: state + events ==
state after.

For any interleaving of sends (a user message and its queued reply), deltas, saves,
pauses, resumes, ends and reconnects (a snapshot taken then), each snapshot folded with
the events after its seq, as a client folds them, shows every message of the snapshot
taken at the end (id, role, text, status). The rows and events are made the way the real
send and run make them (chat/replies/__init__.py ``message_send``, chat/replies/run.py),
in the same order: a reply's final text is saved before its terminal event.

The fold is checked twice: with a fold that follows docs/protocol.md "The event stream"
to the letter, and with the Python client's own (``parley_client.room.RoomSession``).
"""

from __future__ import annotations

import time
import types
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from channels.db import database_sync_to_async
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.events import (
    EventHub,
    delta_body,
    generation_body,
    get_hub,
    message_body,
    room_event_emit,
)
from chat.llm import Usage
from chat.models import LIVE_STATUSES, Status
from chat.replies import db
from chat.replies.manager import get_manager
from chat.replies.steering import reply_metrics
from chat.runtime import get_runtime
from chat.serializers import message_to_dict
from parley_client.models import parse_event
from parley_client.room import Backoff, RoomSession

pytestmark = pytest.mark.django_db(transaction=True)

# A window smaller than the interleavings are long, so messages scroll out of it.
SNAPSHOT_MESSAGES = 5


# --- the room, driven as the real send and run drive it --------------------------------


@dataclass
class Reply:
    pk: int
    id: str
    text: str = ""
    status: str = Status.QUEUED
    started_at: float | None = None

    def visible(self) -> tuple[str, str]:
        return self.text, self.status


def _create(
    room: Any, user: Any, text: str, reply_wanted: bool, worker: str
) -> tuple[dict, dict | None]:
    sent = db.create_messages(
        user=user,
        room=room,
        text=text,
        client_id="",
        ask=reply_wanted,
        ask_ai=reply_wanted,
        queued=0,
        # A worker whose lease is alive, as message_send's is: the orphan sweep of any
        # other process sharing this database (the session's daphne) ends a live reply
        # whose worker has no lease, which is not what this property is about.
        worker=worker,
    )
    message = dict(message_to_dict(sent.message, room_slug=room.slug))
    reply = dict(message_to_dict(sent.reply, room_slug=room.slug)) if sent.reply else None
    return message, reply


def _create_room(owner: Any, member: Any) -> Any:
    from chat.services import room_create, room_join

    room = room_create(owner=owner, name="Property")
    room_join(room=room, user=member)
    return room


class Room:
    """One room's messages and replies, changed only as the services change them."""

    def __init__(self, room: Any, people: tuple[Any, Any]) -> None:
        self.room = room
        self.people = people
        self.replies: list[Reply] = []
        self.sent = 0

    async def emit(self, body: Mapping[str, Any], reply: Reply | None = None) -> None:
        live = reply.visible if reply is not None else None
        await room_event_emit(room_id=self.room.pk, body=body, live=live)

    async def send(self, author: int, wants_reply: bool) -> None:
        self.sent += 1
        manager = get_manager()
        await manager.ensure_started()
        message, reply = await database_sync_to_async(_create)(
            self.room, self.people[author], f"message {self.sent}", wants_reply, manager.worker_id
        )
        await self.emit(message_body(message))
        if reply is not None:
            self.replies.append(Reply(pk=int(reply["id"]), id=reply["id"]))
            await self.emit(message_body(reply))

    def live(self, pick: int) -> Reply | None:
        live = [r for r in self.replies if r.status in LIVE_STATUSES]
        return live[pick % len(live)] if live else None

    async def set_state(self, reply: Reply, state: str) -> None:
        assert await database_sync_to_async(db.save_status)(reply.pk, state)
        reply.status = state
        if reply.started_at is None:
            reply.started_at = time.monotonic()
        await self.emit(generation_body(message_id=reply.id, state=state), reply)

    async def delta(self, pick: int, text: str) -> None:
        reply = self.live(pick)
        if reply is None or reply.status == Status.PAUSED:
            return  # nothing is shown while paused
        if reply.status == Status.QUEUED:
            await self.set_state(reply, Status.STREAMING)
        reply.text += text
        await self.emit(delta_body(message_id=reply.id, text=text), reply)

    async def save(self, pick: int) -> None:
        """The run's periodic save of the text so far."""
        reply = self.live(pick)
        if reply is not None:
            assert await database_sync_to_async(db.save_text)(reply.pk, reply.text)

    async def pause(self, pick: int) -> None:
        reply = self.live(pick)
        if reply is not None and reply.status == Status.STREAMING:
            await self.set_state(reply, Status.PAUSED)

    async def resume(self, pick: int) -> None:
        reply = self.live(pick)
        if reply is not None and reply.status == Status.PAUSED:
            await self.set_state(reply, Status.STREAMING)

    async def end(self, pick: int, state: str) -> None:
        """``ReplyRun._finish``: the final text saved, then the terminal event."""
        reply = self.live(pick)
        if reply is None:
            return
        if reply.status == Status.QUEUED or (
            reply.status == Status.PAUSED and state == Status.COMPLETE
        ):
            state = Status.STOPPED  # a queued or paused reply can only be stopped
        ended = time.monotonic()
        won = await database_sync_to_async(db.save_final)(
            reply.pk,
            text=reply.text,
            status=state,
            started_at=reply.started_at,
            first_token_at=None,
            ended=ended,
            paused_seconds=0.0,
            usage=Usage(),
            stop_reason="test",
            stopped_by=None,
            error="",
        )
        assert won
        reply.status = state
        metrics = reply_metrics(
            ended=ended,
            started_at=reply.started_at,
            first_token_at=None,
            paused_total=0.0,
            completion_tokens=None,
            pieces=len(reply.text),
        )
        await room_event_emit(
            room_id=self.room.pk,
            body=generation_body(
                message_id=reply.id,
                state=state,
                usage={"prompt_tokens": None, "completion_tokens": None},
                metrics=metrics,
            ),
            live=reply.visible,
            until_stored=True,
        )


# --- the fold ---------------------------------------------------------------------------

Shown = tuple[str, str, str, str]  # (id, role, text, status): what a member's screen shows


def fold(snapshot: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> list[Shown]:
    """docs/protocol.md "The event stream": rebuild from the snapshot, then each event after
    its seq, in order: ``message`` adds a message, ``delta`` appends to its reply,
    ``generation`` sets its reply's status."""
    view: dict[str, list[str]] = {
        m["id"]: [m["id"], m["role"], m["text"], m["status"]] for m in snapshot["messages"]
    }
    seq = snapshot["seq"]
    for event in events:
        assert event["seq"] == seq + 1, "the log after a snapshot has no gap"
        seq = event["seq"]
        if event["type"] == "message":
            m = event["message"]
            view[m["id"]] = [m["id"], m["role"], m["text"], m["status"]]
        elif event["type"] == "delta" and event["message_id"] in view:
            view[event["message_id"]][2] += event["text"]
        elif event["type"] == "generation" and event["message_id"] in view:
            view[event["message_id"]][3] = event["state"]
    return [(m[0], m[1], m[2], m[3]) for m in view.values()]


def shown(snapshot: Mapping[str, Any]) -> list[Shown]:
    return [(m["id"], m["role"], m["text"], m["status"]) for m in snapshot["messages"]]


async def client_view(
    snapshot: Mapping[str, Any], events: Iterable[Mapping[str, Any]], ids: Iterable[str]
) -> list[tuple[str, str | None, str | None]]:
    """(id, text, status) of ``ids`` as the Python client's room session shows them after
    the snapshot and the events (fed to its own event handler, no connection). The
    session had resumed after a seq the server never issued (its last seq is past the
    snapshot's), the hardest case: the snapshot must restart its stream."""
    no_client: Any = types.SimpleNamespace()  # it never connects
    session = RoomSession(
        no_client, "property", after=snapshot["seq"] + 1000, buffer=None, backoff=Backoff()
    )
    for raw in (snapshot, *events):
        await session._dispatch(parse_event(dict(raw)))
    return [(i, session.reply_text(i), session.reply_status(i)) for i in ids]


async def assert_resumes_match(
    hub: EventHub, room_id: int, snapshots: Sequence[Mapping[str, Any]]
) -> None:
    """Each snapshot, folded with the events that followed it, gives every later one:
    the one taken at the end, and each reconnect after it (so a snapshot that is wrong
    when it is taken shows, not only one that is wrong at the end)."""
    taken = [*snapshots, await hub.snapshot(room_id)]
    for i, snapshot in enumerate(taken[:-1]):
        events = await hub.replay(room_id, snapshot["seq"])
        assert events is not None, "the log holds every event of these short histories"
        assert [e["seq"] for e in events] == list(range(snapshot["seq"] + 1, taken[-1]["seq"] + 1))
        for later in taken[i + 1 :]:
            expected = shown(later)
            upto = [e for e in events if e["seq"] <= later["seq"]]
            folded = fold(snapshot, upto)
            assert folded[len(folded) - len(expected) :] == expected, (
                f"snapshot at {snapshot['seq']} + {len(upto)} events != snapshot at {later['seq']}"
            )
            by_client = await client_view(snapshot, upto, [m[0] for m in expected])
            assert by_client == [(m[0], m[2], m[3]) for m in expected]


# --- the property -----------------------------------------------------------------------

PICK = st.integers(0, 7)
DELTA = st.tuples(st.just("delta"), PICK, st.text(alphabet="ab é✓\n", min_size=1, max_size=4))
OPERATIONS = st.one_of(
    # Most sends ask for a reply, text is what replies mostly do, and reconnects are
    # what is under test.
    st.tuples(st.just("send"), st.integers(0, 1), st.sampled_from([True, True, False])),
    DELTA,
    DELTA,
    st.tuples(st.just("save"), PICK),
    st.tuples(st.just("pause"), PICK),
    st.tuples(st.just("resume"), PICK),
    st.tuples(st.just("end"), PICK, st.sampled_from(["complete", "stopped", "failed"])),
    st.tuples(st.just("reconnect")),
    st.tuples(st.just("reconnect")),
)


@pytest.fixture
def people(make_user: Any, settings: Any) -> tuple[Any, Any]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast
    settings.PARLEY_SNAPSHOT_MESSAGES = SNAPSHOT_MESSAGES
    # Any number of one member's replies may be queued here: the property is about
    # snapshots, not the per-member cap (tests/chat/test_queue_places.py).
    settings.PARLEY_ROOM_QUEUE_PER_MEMBER = 10_000
    return make_user("ann")[0], make_user("bob")[0]


@pytest.fixture
async def hub() -> AsyncIterator[EventHub]:
    yield get_hub()
    await get_runtime().aclose()


@settings(
    max_examples=40,
    deadline=None,
    # One pair of users for every example; each example makes its own room.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=st.lists(OPERATIONS, min_size=8, max_size=40))
async def test_a_snapshot_plus_the_events_after_it_is_the_room_now(
    people: tuple[Any, Any], hub: EventHub, operations: list[tuple[Any, ...]]
) -> None:
    room = Room(await database_sync_to_async(_create_room)(*people), people)
    snapshots = [await hub.snapshot(room.room.pk)]  # a member who joined at the start
    for op, *args in operations:
        if op == "reconnect":
            snapshots.append(await hub.snapshot(room.room.pk))
        else:
            await getattr(room, op)(*args)

    await assert_resumes_match(hub, room.room.pk, snapshots)


# --- between the snapshot's two reads ---------------------------------------------------


def during_snapshot(hub: EventHub, monkeypatch: pytest.MonkeyPatch, action: Callable) -> None:
    """Run ``action`` once, between the snapshot's database read and its read of the
    store's head and live replies: what another process does at that moment."""
    live_view = hub.store.live_view
    done: list[bool] = []

    async def interleaved(room_id: int, message_ids: Iterable[str]) -> Any:
        if not done:
            done.append(True)
            await action()
        return await live_view(room_id, message_ids)

    monkeypatch.setattr(hub.store, "live_view", interleaved)


async def test_a_message_sent_while_a_snapshot_is_read_reaches_the_resuming_member(
    people: tuple[Any, Any], hub: EventHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = Room(await database_sync_to_async(_create_room)(*people), people)
    await room.send(0, wants_reply=False)
    during_snapshot(hub, monkeypatch, lambda: room.send(1, wants_reply=False))

    snapshot = await hub.snapshot(room.room.pk)

    await assert_resumes_match(hub, room.room.pk, [snapshot])


async def test_a_reply_that_ends_while_a_snapshot_is_read_is_shown_ended(
    people: tuple[Any, Any], hub: EventHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = Room(await database_sync_to_async(_create_room)(*people), people)
    await room.send(0, wants_reply=True)
    await room.delta(0, "The capital")
    await room.save(0)
    await room.delta(0, " is Paris.")
    during_snapshot(hub, monkeypatch, lambda: room.end(0, "complete"))

    snapshot = await hub.snapshot(room.room.pk)

    await assert_resumes_match(hub, room.room.pk, [snapshot])
