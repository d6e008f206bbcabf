"""Who may come into a room (chat/events/delivery/access.py, ``admit``): a burst of
handshakes is admitted against the room channel's member list, read once, even after the
room sat empty long enough for that list to go stale; anyone not in the list is asked of
the database, so a new member is let in and a stranger is not."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chat import selectors
from chat.events.delivery import access, get_fanout
from chat.runtime import get_runtime
from config.asgi import application
from core import contract

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 20


async def _open(slug: str, token: str) -> tuple[WebsocketCommunicator, dict[str, Any]]:
    comm = WebsocketCommunicator(
        application, f"/ws/rooms/{slug}/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    connected, code = await comm.connect()
    if not connected:
        return comm, {"closed": code}
    first = await comm.receive_output(10)  # a refusal is accepted, then closed
    if first["type"] == "websocket.close":
        return comm, {"closed": first["code"]}
    return comm, json.loads(first["text"])


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each admission read reached the database."""
    seen: Counter[str] = Counter()

    def counted(name: str, real: Any) -> Any:
        def read(*args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            return real(*args, **kwargs)

        return read

    monkeypatch.setattr(access, "_members", counted("members", access._members))
    monkeypatch.setattr(access, "room_row", counted("room", access.room_row))
    monkeypatch.setattr(
        selectors, "room_get_for_member", counted("one member", selectors.room_get_for_member)
    )
    return seen


async def test_a_burst_after_a_quiet_spell_is_admitted_with_one_read(
    make_user: Any, make_room: Any, settings: Any, reads: Counter[str]
) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast
    settings.PARLEY_ROOM_LINGER = 600  # the channel stays open through the quiet spell
    owner, owner_token = await sync_to_async(make_user)("owner")
    room = await sync_to_async(make_room)(owner, visibility="public")
    tokens = []
    for i in range(BURST):
        user, token = await sync_to_async(make_user)(f"m{i}")
        await sync_to_async(room.memberships.create)(user=user)
        tokens.append(token)
    try:
        comm, hello = await _open(room.slug, owner_token)
        assert hello["type"] == "hello"
        await comm.disconnect()
        # The room sat empty: its timer stopped re-reading the list, and the row aged.
        channel = get_fanout().get(room.pk)
        assert channel is not None
        assert not channel.subscribers
        channel.access.members_at -= settings.PARLEY_RESYNC_INTERVAL * 10
        admission = get_fanout().admission
        slug, (row, at) = next(iter(admission.rooms.items()))
        admission.rooms[slug] = (row, at - settings.PARLEY_RESYNC_INTERVAL * 10)
        reads.clear()

        opened = await asyncio.gather(*(_open(room.slug, t) for t in tokens))
        assert [hello["type"] for _, hello in opened] == ["hello"] * BURST
        assert reads == {"members": 1, "room": 1}
        for comm, _ in opened:
            await comm.disconnect()
    finally:
        await get_runtime().aclose()


async def test_a_member_added_after_the_read_is_let_in_and_a_stranger_is_not(
    make_user: Any, make_room: Any, reads: Counter[str]
) -> None:
    owner, owner_token = await sync_to_async(make_user)("owner")
    room = await sync_to_async(make_room)(owner, visibility="public")
    try:
        comm, hello = await _open(room.slug, owner_token)
        assert hello["type"] == "hello"  # the list is read: only the owner is in it
        reads.clear()
        late, late_token = await sync_to_async(make_user)("late")
        await sync_to_async(room.memberships.create)(user=late)
        _, stranger_token = await sync_to_async(make_user)("stranger")

        late_comm, late_hello = await _open(room.slug, late_token)
        assert late_hello["type"] == "hello"
        stranger_comm, refused = await _open(room.slug, stranger_token)
        assert refused == {"closed": contract.NOT_MEMBER.code}
        assert reads["one member"] == 2  # both asked of the database
        for c in (comm, late_comm):
            await c.disconnect()
    finally:
        await get_runtime().aclose()
