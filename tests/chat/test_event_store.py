"""The event store contract (chat/events/store.py), one suite run on every store.

Centrifuge runs the same tests on each of its brokers (map_broker_shared_test.go); here
each test runs on the in-process store (memory.py) and on the Redis store (redis_store.py)
with the machine's Redis (REDIS_URL: CI fails without it, a laptop skips). What only the
Redis store must survive, a lost answer from a private redis-server, comes last.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from chat.events import EventHub
from chat.events.memory import MemoryEventStore
from chat.events.redis_store import RedisEventStore
from chat.events.schema import delta_body, generation_body, message_body
from chat.events.store import EventStore
from chat.redis import get_redis, get_sync_redis, room_key
from chat.serializers import MessageDict
from tests.support.redis_server import LossyProxy, RedisServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def room(make_user: Any, make_room: Any) -> Any:
    owner, _ = make_user("ann")
    return make_room(owner, "Contract")


@pytest.fixture
def other_room(room: Any, make_room: Any) -> Any:
    return make_room(room.owner, "Next door")


def make(kind: str) -> EventStore:
    """A store of this kind: another process's, or this one's after a restart."""
    return MemoryEventStore() if kind == "memory" else RedisEventStore()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def kind(request: pytest.FixtureRequest, settings: Any) -> AsyncIterator[str]:
    if request.param == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_url")
        get_sync_redis.cache_clear()  # head_sync's client, for this URL
    yield request.param
    if request.param == "redis":
        await get_redis().aclose()


@pytest.fixture
async def store(kind: str, room: Any, other_room: Any) -> AsyncIterator[EventStore]:
    if kind == "redis":
        # Keys of rooms with these ids from another session on this Redis.
        stale = [room_key(r.pk, k) for r in (room, other_room) for k in ("seq", "log")]
        await get_redis().delete(*stale)
    store = make(kind)
    yield store
    await store.aclose()


def note(n: int) -> dict[str, Any]:
    return {"type": "note", "n": n}


async def append(store: EventStore, room_id: int, body: Any) -> dict[str, Any]:
    return await store.append(room_id, body, key=uuid.uuid4().hex)


def reply(message_id: str, status: str = "queued", role: str = "assistant") -> MessageDict:
    return {
        "id": message_id,
        "room": "contract",
        "role": role,
        "author": None if role == "assistant" else "ann",
        "text": "",
        "status": status,
        "reply_to": None,
        "client_id": None,
        "input": "text",
        "created": "2026-01-01T00:00:00+00:00",
    }


async def test_each_room_gets_consecutive_seqs_from_its_head(
    store: EventStore, room: Any, other_room: Any
) -> None:
    base, other_base = await store.head(room.pk), await store.head(other_room.pk)
    ours, theirs = [], []
    for n in range(6):
        ours.append(await append(store, room.pk, note(n)))
        if n % 2:  # the rooms' appends interleave: neither takes the other's seqs
            theirs.append(await append(store, other_room.pk, note(n)))
    assert ours == [{**note(n), "seq": base + 1 + n} for n in range(6)]
    assert [e["seq"] for e in theirs] == [other_base + 1, other_base + 2, other_base + 3]
    assert await store.head(room.pk) == base + 6
    assert await store.head(other_room.pk) == other_base + 3


async def test_a_store_made_again_never_reuses_a_seq(kind: str, store: EventStore, room: Any):
    """Another process on the same Redis, or this process restarted: seqs only grow."""
    last = (await append(store, room.pk, note(0)))["seq"]
    again = make(kind)
    try:
        assert await again.head(room.pk) >= last
        assert (await append(again, room.pk, note(1)))["seq"] > last
    finally:
        await again.aclose()


@pytest.mark.parametrize(
    "kind",
    [pytest.param("redis", marks=pytest.mark.redis)],
    indirect=True,
)
async def test_an_append_retried_with_its_key_is_recorded_once(
    store: EventStore, room: Any
) -> None:
    """Only for a store whose answer can be lost after it recorded the event (Redis): an
    in-process append cannot half-succeed (EventStore.answers_can_be_lost)."""
    assert store.answers_can_be_lost
    key = uuid.uuid4().hex
    first = await store.append(room.pk, note(1), key=key)
    again = await store.append(room.pk, note(1), key=key)
    assert again == first
    assert await store.since(room.pk, first["seq"] - 1) == [first]
    assert await store.head(room.pk) == first["seq"]
    assert (await append(store, room.pk, note(2)))["seq"] == first["seq"] + 1


async def test_since_gives_exactly_the_events_after(store: EventStore, room: Any) -> None:
    base = await store.head(room.pk)
    events = [await append(store, room.pk, note(n)) for n in range(6)]
    head = events[-1]["seq"]
    for after in range(base, head + 1):
        assert await store.since(room.pk, after) == [e for e in events if e["seq"] > after]
    assert await store.since(room.pk, head) == []
    # A seq the store never gave out: the caller must resynchronise.
    assert await store.since(room.pk, head + 1) is None


async def test_since_is_none_once_the_log_no_longer_reaches_back(
    store: EventStore, room: Any, settings: Any
) -> None:
    settings.PARLEY_LOG_MAX_EVENTS = 5
    base = await store.head(room.pk)
    events = [await append(store, room.pk, note(n)) for n in range(8)]
    kept = events[-5:]
    assert await store.since(room.pk, kept[0]["seq"] - 1) == kept  # just reaches back
    for after in range(base, kept[0]["seq"] - 1):
        assert await store.since(room.pk, after) is None, after


async def test_live_view_shows_a_running_reply_at_the_head(store: EventStore, room: Any) -> None:
    mid = f"contract-{uuid.uuid4().hex}"
    absent = f"contract-{uuid.uuid4().hex}"
    queued = await append(store, room.pk, message_body(reply(mid)))
    assert await store.live_view(room.pk, [mid]) == (queued["seq"], {mid: ("", "queued")})
    await append(store, room.pk, generation_body(message_id=mid, state="streaming"))
    await append(store, room.pk, delta_body(message_id=mid, text="Hel"))
    await append(store, room.pk, delta_body(message_id=mid, text="lo"))
    # A member's message in between is not a live reply, and changes nothing of it.
    user = await append(store, room.pk, message_body(reply(absent, "complete", role="user")))
    assert await store.live_view(room.pk, [mid, absent]) == (
        user["seq"],
        {mid: ("Hello", "streaming")},
    )
    await append(store, room.pk, generation_body(message_id=mid, state="paused", by="ann"))
    await append(store, room.pk, delta_body(message_id=mid, text=", world"))
    assert (await store.live_view(room.pk, [mid]))[1] == {mid: ("Hello, world", "paused")}
    # Ended: the database holds it from now on, the live view no longer does.
    end = await append(store, room.pk, generation_body(message_id=mid, state="complete"))
    assert await store.live_view(room.pk, [mid]) == (end["seq"], {})


async def test_head_sync_agrees_with_head_from_a_worker_thread(
    store: EventStore, room: Any
) -> None:
    # Before any event: the floor the database holds.
    assert await asyncio.to_thread(store.head_sync, room) == await store.head(room.pk)
    for n in range(3):
        await append(store, room.pk, note(n))
        assert await asyncio.to_thread(store.head_sync, room) == await store.head(room.pk)


# --- the Redis store alone ---------------------------------------------------------------


class _Seen(logging.Handler):
    """Sets an asyncio event when a log record contains ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


@pytest.mark.redis
async def test_an_emit_retried_after_a_lost_answer_is_recorded_once(
    room: Any, settings: Any
) -> None:
    server = RedisServer().start()
    proxy = await LossyProxy(server.port).start()
    settings.REDIS_URL = proxy.url  # this test's event loop gets a client for the proxy
    seen = _Seen("event store unavailable; retrying")
    logging.getLogger("chat.events").addHandler(seen)
    try:
        hub = EventHub(RedisEventStore())
        await hub.emit(room.pk, {"type": "note", "n": 0})  # seeds the room's seq
        # Every answer is lost (the client's own retries too) until the hub retries.
        proxy.losing = True
        emit = asyncio.create_task(hub.emit(room.pk, {"type": "note", "n": 1}))
        await asyncio.wait_for(seen.event.wait(), 30)
        proxy.losing = False
        event = await asyncio.wait_for(emit, 30)
        assert proxy.lost >= 1
        direct = redis.Redis(port=server.port)
        log = direct.xrange(room_key(room.pk, "log"))
        bodies = [entry[1][b"e"] for entry in log]
        assert bodies.count(b'{"type":"note","n":1}') == 1, bodies
        assert int(direct.get(room_key(room.pk, "seq"))) == event["seq"]
    finally:
        logging.getLogger("chat.events").removeHandler(seen)
        await proxy.stop()
        server.kill()


@pytest.mark.redis
async def test_a_log_emptied_by_a_restart_opens_with_a_snapshot_that_replays_on(
    room: Any, settings: Any
) -> None:
    """After a restart the log no longer reaches back to a member's last seq. It opens with
    the room's snapshot, so the member's replay is that snapshot and every event after it
    (a reply's terminal event among them), not a snapshot that swallowed them."""
    server = RedisServer().start()
    settings.REDIS_URL = server.url
    try:
        hub = EventHub(RedisEventStore())
        seen = await hub.emit(room.pk, note(0))  # the member's last seq
        server.restart()  # log, seq and live copies gone
        end = await hub.emit(
            room.pk, generation_body(message_id="1", state="failed"), until_stored=True
        )
        replay = await hub.replay(room.pk, seen["seq"])
        assert replay is not None
        assert [e["type"] for e in replay] == ["snapshot", "generation"]
        assert replay[0]["seq"] > seen["seq"]
        assert replay[1] == end
        assert end["seq"] == replay[0]["seq"] + 1
        # The log opens once: the next event follows without another snapshot.
        after_end = await hub.emit(room.pk, note(1))
        assert await hub.replay(room.pk, end["seq"]) == [after_end]
        # A running reply whose live copy was lost skips a seq when it re-creates it: the
        # run stops there and a fresh snapshot at the head follows.
        delta = await hub.emit(
            room.pk, delta_body(message_id="2", text="x"), live=lambda: ("all of x", "streaming")
        )
        again = await hub.replay(room.pk, seen["seq"])
        assert again is not None
        assert [e["type"] for e in again] == ["snapshot", "generation", "note", "snapshot"]
        assert again[-1]["seq"] == delta["seq"] == await hub.head(room.pk)
        await hub.aclose()
    finally:
        server.kill()


@pytest.mark.parametrize(
    "kind",
    [pytest.param("redis", marks=pytest.mark.redis)],
    indirect=True,
)
async def test_a_head_that_went_back_never_hands_a_seq_out_twice(
    store: EventStore, room: Any
) -> None:
    """What a Redis Cluster failover can leave: the promoted replica lacks the last writes
    its master acknowledged (replication is asynchronous), so the head is behind seqs
    already published. The next append of a process that was given them, or handed them
    to its members, moves past them with a gap (members take a snapshot), and a running
    reply's live copy is re-created from its owner's whole text."""
    mid = f"contract-{uuid.uuid4().hex}"
    await append(store, room.pk, message_body(reply(mid)))
    await append(store, room.pk, generation_body(message_id=mid, state="streaming"))
    await append(store, room.pk, delta_body(message_id=mid, text="Hel"))
    published = [await append(store, room.pk, delta_body(message_id=mid, text=t)) for t in "lo"]
    last = published[-1]["seq"]
    # The failover: the two last deltas never reached the replica.
    client = get_redis()
    await client.set(room_key(room.pk, "seq"), last - 2)
    await client.xdel(room_key(room.pk, "log"), *(f"{e['seq']}-0" for e in published))
    await client.set(room_key(room.pk, "m", mid, "text"), "Hel")
    owner_text = "Hello!"
    event = await store.append(
        room.pk,
        delta_body(message_id=mid, text="!"),
        key=uuid.uuid4().hex,
        live=lambda: (owner_text, "streaming"),
    )
    assert event["seq"] > last + 1  # past every seq published, with a gap
    assert await store.since(room.pk, last) is None  # the member resynchronises
    assert (await store.live_view(room.pk, [mid]))[1] == {mid: (owner_text, "streaming")}

    # Another process that only handed the seq to its members is caught the same way.
    await client.set(room_key(room.pk, "seq"), last - 2)
    other = RedisEventStore()
    other.saw(room.pk, event["seq"])
    assert (await append(other, room.pk, note(1)))["seq"] > event["seq"] + 1
