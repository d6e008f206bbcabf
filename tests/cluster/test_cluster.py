"""Cluster mode on a real Redis Cluster (3 masters, 3 replicas): rooms on different masters
stream alike on two daphnes; a room's keys share one slot; a process subscribes only to
the rooms it holds members of; the layer's process tags spread over the slots."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from redis.crc import key_slot

from chat.redis import room_key
from core.cluster_layer import group_channel, inbox_channel
from tests.chat.test_multiprocess import FAST_LEASES, assert_contiguous
from tests.support.openai_server import Scenario
from tests.support.redis_cluster import RedisCluster
from tests.support.rooms import ask, connect, stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def rooms_on_distinct_masters(cluster: RedisCluster, owner: Any, make_room: Any) -> list[Any]:
    """Rooms until one lands on each master (the room id decides its slot)."""
    by_master: dict[int, Any] = {}
    while len(by_master) < 3:
        room = make_room(owner, f"Room {uuid.uuid4().hex[:6]}")
        by_master.setdefault(cluster.slot_owner(room_key(room.pk, "seq")).port, room)
    return list(by_master.values())


@pytest.fixture
def spread(redis_cluster, make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    rooms = rooms_on_distinct_masters(redis_cluster, ann, make_room)
    for room in rooms:
        room_join(room=room, user=bob)
    return rooms, ann_token, bob_token


async def test_rooms_on_three_masters_stream_alike_on_two_processes(
    daphne_factory, redis_cluster, llm, spread
):
    rooms, ann_token, bob_token = spread
    one = daphne_factory(REDIS_URL=redis_cluster.url, **FAST_LEASES)
    two = daphne_factory(REDIS_URL=redis_cluster.url, **FAST_LEASES)
    pieces = [f"p{i} " for i in range(40)]
    llm.set_default(Scenario.slow(pieces, delay=0.005))
    anns = [await connect(one, room, ann_token) for room in rooms]
    bobs = [await connect(two, room, bob_token) for room in rooms]
    try:
        replies = await asyncio.gather(*(ask(ann) for ann in anns))
        for ann, bob, reply in zip(anns, bobs, replies, strict=True):
            await ann.wait_terminal(reply)
            await bob.wait_terminal(reply)
            assert ann.durable() == bob.durable()
            assert_contiguous(bob.durable())
            assert bob.text_of(reply) == "".join(pieces) == (await stored(reply)).text
    finally:
        for client in anns + bobs:
            await client.close()


async def test_a_rooms_keys_and_fan_out_share_one_slot(daphne_factory, redis_cluster, llm, spread):
    rooms, ann_token, bob_token = spread
    server = daphne_factory(REDIS_URL=redis_cluster.url)
    room = rooms[0]
    llm.set_default(Scenario.slow(["a ", "b "], delay=0.005))
    ann = await connect(server, room, ann_token)
    try:
        await ann.wait_terminal(await ask(ann))
        keys: list[bytes] = []
        for node in redis_cluster.masters_now():
            keys += node.client().keys(f"parley:{{r{room.pk}}}:*")
        assert {k.split(b":")[2] for k in keys} >= {b"seq", b"log", b"online"}
        slots = {key_slot(k) for k in keys} | {key_slot(group_channel(f"room.{room.pk}").encode())}
        assert slots == {key_slot(room_key(room.pk, "seq").encode())}
    finally:
        await ann.close()


async def test_a_process_subscribes_only_to_the_rooms_it_holds(
    daphne_factory, redis_cluster, spread
):
    rooms, ann_token, _ = spread
    server = daphne_factory(REDIS_URL=redis_cluster.url)
    ann = await connect(server, rooms[0], ann_token)
    try:

        def subscribed() -> set[str]:
            out: set[str] = set()
            for node in redis_cluster.masters_now():
                raw = node.client().execute_command("PUBSUB", "SHARDCHANNELS", "parley:*:g:*")
                out |= {c.decode() for c in raw}
            return out

        channels = await sync_to_async(subscribed)()
        assert group_channel(f"room.{rooms[0].pk}") in channels
        for other in rooms[1:]:
            assert group_channel(f"room.{other.pk}") not in channels
        # Each shard channel is on the master owning its room's keys.
        owner = redis_cluster.slot_owner(room_key(rooms[0].pk, "seq"))
        raw = owner.client().execute_command("PUBSUB", "SHARDCHANNELS", "parley:*:g:room.*")
        assert group_channel(f"room.{rooms[0].pk}").encode() in raw
    finally:
        await ann.close()


def test_process_inboxes_spread_evenly_over_the_masters() -> None:
    """Random 16-hex-digit process tags, not bare {0}, {1}: 3,000 processes' inboxes fall
    on the three masters' slot ranges (as redis-cli --cluster create splits them) within
    10% of a third each."""
    thirds = Counter(
        min(key_slot(inbox_channel(uuid.uuid4().hex[:16]).encode()) * 3 // 16384, 2)
        for _ in range(3000)
    )
    assert all(900 <= thirds[i] <= 1100 for i in range(3)), thirds
