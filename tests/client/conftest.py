"""Fixtures for the client library's end-to-end tests: a room with two members, a proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from parley_client import Backoff
from tests.support.tcpproxy import TCPProxy

# Tests reconnect at once and often: a short backoff keeps them fast (production: 0.5-15 s).
FAST = Backoff(initial=0.02, maximum=0.2)


@pytest.fixture
def members(make_user, make_room) -> Any:
    """ann owns room "Client tests" (assistant always); bob and cat are members."""
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    cat, cat_token = make_user("cat")
    room = make_room(ann, "Client tests")
    room_join(room=room, user=bob)
    room_join(room=room, user=cat)
    return room, {"ann": ann_token, "bob": bob_token, "cat": cat_token}


@pytest.fixture
def dora_rooms(make_user, make_room) -> Any:
    """dora's private room and her public room, neither of which the others joined."""
    dora, _ = make_user("dora")
    private = make_room(dora, "Dora's", visibility="private")
    public = make_room(dora, "Dora's public", visibility="public")
    return private, public


@pytest.fixture
async def proxy(daphne) -> AsyncIterator[TCPProxy]:
    p = await TCPProxy(daphne.port).start()
    yield p
    await p.aclose()


@pytest.fixture
async def ws_blocking_proxy(daphne) -> AsyncIterator[TCPProxy]:
    p = await TCPProxy(daphne.port, block_websockets=True).start()
    yield p
    await p.aclose()
