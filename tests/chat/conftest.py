"""Fixtures shared by the tests of tests/chat."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def crowd(make_user: Any, make_room: Any) -> Any:
    """An owner and six members of a room that answers only when asked:
    (room, the owner's token, [(member, token), ...])."""
    from chat.services import room_join

    owner, owner_token = make_user("rowner")
    raters = [make_user(f"rater{i}") for i in range(6)]
    room = make_room(owner, "Raters", assistant="mention")
    for user, _ in raters:
        room_join(room=room, user=user)
    return room, owner_token, raters
