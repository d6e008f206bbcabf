# ruff: noqa: F811 (the members fixture imported from tests/chat/test_multiprocess.py is an argument here)
"""A Redis Cluster changing under a streaming reply: a master killed (its replica takes
over) and the room's slot resharded to another master. Each test has a cluster of its own.

What a member notices is checked: its view of the reply (the deltas it got, rebuilt from a
snapshot where it took one) equals the stored text, and it got exactly one terminal
``generation`` event.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat.models import TERMINAL_STATUSES
from chat.redis import room_key
from core.cluster_layer import group_channel
from tests.chat.test_multiprocess import members  # noqa: F401 - the fixture, shared
from tests.support.openai_server import Scenario
from tests.support.redis_cluster import RedisCluster
from tests.support.rooms import ask, connect, stored
from tests.support.wsclient import RoomClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

PIECES = [f"w{i} " for i in range(400)]
# Quick gap checks, and the default lease (10 s): it must outlast a failover (node timeout
# 1 s plus the election here), or a failover of the master holding the leases (slot {g})
# would have the sweep interrupt live replies (docs/architecture.md "Redis Cluster").
ENV = {"PARLEY_RESYNC_INTERVAL": "0.5"}


def view_of(client: RoomClient, reply: str) -> str:
    """The reply's text as the member's page would show it: a snapshot sets it, a delta
    adds to it, in seq order."""
    text = ""
    for event in client.durable():
        if event["type"] == "snapshot":
            shown = [m for m in event["messages"] if str(m["id"]) == reply]
            text = shown[0]["text"] if shown else text
        elif event["type"] == "delta" and event["message_id"] == reply:
            text += event["text"]
    return text


def terminal_events(client: RoomClient, reply: str) -> list[dict[str, Any]]:
    return [
        e
        for e in client.events
        if e.get("type") == "generation"
        and e.get("message_id") == reply
        and e.get("state") in TERMINAL_STATUSES
    ]


async def _reply_through(cluster: RedisCluster, daphne_factory, llm, members, change) -> None:
    room, ann_token, bob_token = members
    one = daphne_factory(REDIS_URL=cluster.url, **ENV)
    two = daphne_factory(REDIS_URL=cluster.url, **ENV)
    llm.set_default(Scenario.slow(PIECES, delay=0.01))
    ann = await connect(one, room, ann_token)
    bob = await connect(two, room, bob_token)
    try:
        reply = await ask(ann)
        await bob.wait_for(lambda e: e.get("type") == "delta" and len(bob.text_of(reply)) > 50)
        await asyncio.to_thread(change)
        for client in (ann, bob):
            await client.wait_terminal(reply, timeout=60, start=0)
        saved = await stored(reply)
        assert saved.status == "complete"
        assert saved.text == "".join(PIECES)
        for client in (ann, bob):
            assert view_of(client, reply) == saved.text
            assert len(terminal_events(client, reply)) == 1
    finally:
        await ann.close()
        await bob.close()


async def test_a_master_killed_mid_reply_fails_over_and_nothing_is_lost(
    daphne_factory, own_cluster, llm, members
):
    room = members[0]
    master = own_cluster.slot_owner(room_key(room.pk, "seq"))

    def kill() -> None:
        own_cluster.fail_over(master)
        assert own_cluster.slot_owner(room_key(room.pk, "seq")).port != master.port

    await _reply_through(own_cluster, daphne_factory, llm, members, kill)


async def test_resharding_a_busy_rooms_slot_mid_reply_loses_nothing(
    daphne_factory, own_cluster, llm, members
):
    room = members[0]
    slot = own_cluster.keyslot(room_key(room.pk, "seq"))
    assert slot == own_cluster.keyslot(group_channel(f"room.{room.pk}"))
    source = own_cluster.slot_owner(room_key(room.pk, "seq"))
    target = next(n for n in own_cluster.masters_now() if n.port != source.port)

    def reshard() -> None:
        own_cluster.move_slot(slot, target)
        assert own_cluster.slot_owner(room_key(room.pk, "seq")).port == target.port

    await _reply_through(own_cluster, daphne_factory, llm, members, reshard)
