"""A room on the session's daphne, with its members' tokens and the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI


def sdk(server: Any, token: str, **kw: Any) -> AsyncOpenAI:
    """The official SDK pointed at ``server``'s /v1/ (no retries unless asked: a retried
    error would hide the status under test)."""
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30.0)
    return AsyncOpenAI(base_url=f"{server.http_url}/v1", api_key=token, **kw)


@pytest.fixture
def team(daphne, make_user, make_room) -> dict[str, Any]:
    """Room "Team": ann (owner) and bob, its ``always`` @assistant and a @coder asked by
    mention."""
    from chat.services import room_member_add
    from tests.support.assistants import add_assistant

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Team", visibility="private")
    room_member_add(room=room, by=ann, username="bob")
    add_assistant(room, "coder", "Coder")
    return {"room": room, "ann": ann_token, "bob": bob_token, "server": daphne}


@pytest.fixture
async def ann_sdk(team) -> AsyncIterator[AsyncOpenAI]:
    client = sdk(team["server"], team["ann"])
    yield client
    await client.close()
