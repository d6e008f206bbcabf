"""A hello's room is never older than its head (chat/events/delivery): a Room row read
for a handshake before a `room` event passed is read again, and a room channel drops the
process's cached row of its room when the event passes. In process, on one event loop."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chat.events import room_body, room_event_emit
from chat.events.delivery import admit, get_fanout
from chat.events.delivery.subscribers import Subscriber
from chat.events.delivery.subscription import Subscription
from chat.models import Room
from chat.runtime import get_runtime
from chat.serializers import room_to_dict
from config.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


class Quiet(Subscriber):
    """A subscriber that takes every frame and sends it nowhere."""

    async def write(self, frame: Any) -> bool:
        return True

    async def end(self, code: int, reason: str) -> None:
        return None


async def _hello(slug: str, token: str) -> tuple[WebsocketCommunicator, dict[str, Any]]:
    comm = WebsocketCommunicator(
        application, f"/ws/rooms/{slug}/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    connected, _ = await comm.connect()
    assert connected
    return comm, json.loads((await comm.receive_output(10))["text"])


async def _rename(room: Room, name: str) -> int:
    """What chat.services.room_changed does: commit, then emit the room as it is now."""

    def write() -> dict[str, Any]:
        Room.objects.filter(pk=room.pk).update(name=name)
        fresh = Room.objects.select_related("owner").get(pk=room.pk)
        return dict(room_to_dict(fresh, head=0))

    event = await room_event_emit(room_id=room.pk, body=room_body(await sync_to_async(write)()))
    return int(event["seq"])


async def test_a_row_read_before_a_room_event_is_read_again_for_the_hello(
    make_user: Any, make_room: Any
) -> None:
    owner, token = await sync_to_async(make_user)("owner")
    room = await sync_to_async(make_room)(owner, "Before")
    try:
        comm, hello = await _hello(room.slug, token)  # the room's channel is open here
        assert hello["room"]["name"] == "Before"
        row = await admit(slug=room.slug, user=owner)  # read (or cached) now
        seq = await _rename(room, "After")
        event = json.loads((await comm.receive_output(10))["text"])
        assert (event["type"], event["seq"], event["room"]["name"]) == ("room", seq, "After")
        assert get_fanout().admission.known(room.slug) is None  # dropped as it passed

        sub = Quiet(user_id=owner.pk, username="owner", token_id=None)
        subscription = Subscription(room=row, sub=sub, after=None)
        later = await subscription.open()
        assert later["head"] >= seq
        assert later["room"]["name"] == "After"  # the row was read before: read again
        await subscription.close()
        comm2, hello2 = await _hello(room.slug, token)
        assert (hello2["room"]["name"], hello2["head"] >= seq) == ("After", True)
        for c in (comm, comm2):
            await c.disconnect()
    finally:
        await get_runtime().aclose()
