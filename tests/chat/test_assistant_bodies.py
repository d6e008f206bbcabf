"""Property (hypothesis): whatever body a client sends to the assistants and settings API,
the answer is below 500, a refusal has a JSON ``code``, and a refused body stored nothing.

Over the session's real daphne, as tests/test_hostile_input.py does for the other bodies.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.models import Assistant, Membership, Room, RoomAssistant
from tests.test_hostile_input import HOSTILE, json_values, strings

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = [
    "handle",
    "name",
    "avatar",
    "model",
    "system_prompt",
    "temperature",
    "max_tokens",
    "voice",
    "mode",
    "shared",
    "visibility",
    "assistant",
    "prompt_heard_text",
    "role",
]
# Values near the valid ones, so that bodies reach the checks past the first field.
PLAUSIBLE = st.sampled_from(
    [
        "coder",
        "Coder",
        "assistant",
        "ann",
        "default/fake-model",
        "default/nope",
        "nobody/x",
        "always",
        "mention",
        "public",
        "owner",
        0,
        0.7,
        2,
        2.0000001,
        -1,
        32768,
        32769,
        1e308,
        "🤖",
        "#2f6fd0",
    ]
)
values = st.one_of(PLAUSIBLE, json_values, strings)


@st.composite
def requests(draw: Any) -> tuple[str, str, bytes]:
    method, path = draw(
        st.sampled_from(
            [
                ("POST", "/assistants"),
                ("PATCH", "/assistants/assistant"),
                ("DELETE", "/assistants/nobody"),
                ("PATCH", ""),
                ("PATCH", "/members/bob"),
                ("POST", "/members"),
            ]
        )
    )
    if draw(st.integers(0, 9)) == 0:
        return method, path, json.dumps(draw(json_values)).encode()
    body = draw(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), values, max_size=6))
    return method, path, json.dumps(body).encode()


def _state(room: Room) -> tuple[Any, ...]:
    room.refresh_from_db()
    return (
        list(Assistant.objects.order_by("pk").values()),
        list(RoomAssistant.objects.order_by("pk").values()),
        list(Membership.objects.order_by("pk").values("user_id", "role")),
        (room.name, room.visibility, room.voice, room.assistant, room.system_prompt),
        room.prompt_heard_text,
    )


def test_assistant_and_settings_bodies_never_500_and_a_refusal_stores_nothing(
    daphne, make_user, make_room
):
    ann, token = make_user("ann")
    bob, _ = make_user("bob")
    room = make_room(ann, "Props", assistant="mention")
    Membership.objects.create(room=room, user=bob)
    start = len(daphne.lines)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    base = f"/api/rooms/{room.slug}"
    with httpx.Client(base_url=daphne.http_url, headers=headers, timeout=30) as http:

        @HOSTILE
        @given(requests())
        def check(request: tuple[str, str, bytes]) -> None:
            method, path, body = request
            before = _state(room)
            r = http.request(method, base + path, content=body)
            assert r.status_code < 500, (r.status_code, r.text[:500])
            if r.status_code >= 400:
                assert isinstance(r.json().get("code"), str), r.text[:500]
                assert _state(room) == before, (method, path, body, r.text)

        check()
    log = "\n".join(daphne.lines[start:])
    for sign in ("Traceback", "Exception inside application", " 500 "):
        assert sign not in log, log[-4000:]
