"""Property-based tests (hypothesis): whatever a client sends, Parley answers it cleanly.

Generated WebSocket frames and HTTP bodies: random JSON, wrong types, huge and empty
values, lone surrogates, NUL, invisible text, unknown fields and actions. Over the
session's real daphne:

- every HTTP answer is below 500 and a 4xx has a JSON ``code``;
- every frame gets at most an ``error`` event (never ``internal``), the connection stays
  open, and a ``ping`` after it is answered (frames are handled in order, so the pong
  proves the frame was handled);
- the server logs no traceback, no crashed consumer and no pending task destroyed;
- afterwards the room still works: a normal send is stored and broadcast.

One connection and one client carry all the examples, so the file runs in well under a
minute; the examples count is modest (the ``hostile`` profile) and a slow machine never
fails a deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)

settings.register_profile(
    "hostile",
    max_examples=60,
    deadline=None,
    # The room, users and connection are made once for all the examples, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOSTILE = settings.get_profile("hostile")

# Characters that have broken servers: NUL, lone surrogates, invisible and control ones,
# a non-BMP emoji, the BOM, a right-to-left override.
NASTY = ["\x00", "\ud800", "\udfff", "\u200b", "\u200d", "\ufeff", "\u202e", "\n", "\x1b", "😀"]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=8)), max_size=12).map(
    "".join
)
huge_text = st.sampled_from(["x" * 8001, "y" * 20000, "\u200b" * 9000, "é" * 8000])
strings = st.one_of(nasty_text, huge_text, st.just(""), st.text(max_size=30))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    strings,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["text", "client_id", "ask_ai", "voice", "message_id", "enabled", "id", "wait"]
FIELDS += ["value", "comment", "rerun"]  # edit, delete, rate
ACTIONS = ["send", "pause", "resume", "stop", "typing", "audio", "ping", "__init__", "Send"]
ACTIONS += ["regenerate", "pick_version"]  # versions of a reply (extension)
ACTIONS += ["edit", "delete", "rate"]
FIELDS = ["text", "client_id", "ask_ai", "voice", "message_id", "enabled", "id", "wait", "seq"]
ACTIONS = ["send", "pause", "resume", "stop", "typing", "audio", "ping", "read", "__init__", "Send"]


@st.composite
def frames(draw: Any) -> str | bytes:
    """A WebSocket frame as a hostile client would send it (text or binary)."""
    kind = draw(st.sampled_from(["object", "object", "object", "json", "raw", "binary"]))
    if kind == "raw":
        return draw(st.text(max_size=40))
    if kind == "binary":
        return draw(st.binary(max_size=40))
    if kind == "json":
        return json.dumps(draw(json_values))
    frame: dict[str, Any] = draw(
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=5)
    )
    frame["action"] = draw(st.sampled_from(ACTIONS) | strings | json_values)
    return json.dumps(frame)  # ensure_ascii: surrogates travel as \\ud800 escapes


@st.composite
def bodies(draw: Any) -> bytes:
    """An HTTP request body: mostly JSON objects with the API's fields, some garbage."""
    kind = draw(st.sampled_from(["object", "object", "object", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=60))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    keys = st.sampled_from(
        ["text", "client_id", "ask_ai", "voice", "wait", "name", "visibility", "assistant"]
        + ["system_prompt", "username", "seq"]
    )
    body = draw(st.dictionaries(keys | st.text(max_size=6), json_values, max_size=6))
    return json.dumps(body).encode()


@pytest.fixture
def target(daphne, make_user, make_room) -> Iterator[tuple[Any, Any, str]]:
    from chat.services import room_join

    owner, token = make_user("hostile")
    make_user("bystander")
    # Mention mode: a generated send only asks the fake model when it says so.
    room = make_room(owner, "Hostile", assistant="mention")
    room_join(room=room, user=owner)
    start = len(daphne.lines)
    yield daphne, room, token
    # Nothing crashed on the server's side, whatever it was sent.
    log = "\n".join(daphne.lines[start:])
    for sign in (
        "Traceback",
        "action failed",
        "Exception inside application",
        "Task was destroyed but it is pending",
        "Task exception was never retrieved",
        " 500 ",
    ):
        assert sign not in log, log[-4000:]


def _check_response(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert isinstance(r.json().get("code"), str), r.text[:500]


def test_http_bodies_and_urls_never_give_500(target):
    daphne, room, token = target
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=daphne.http_url, headers=headers, timeout=30) as http:

        @HOSTILE
        @given(
            body=bodies(),
            endpoint=st.sampled_from(
                [
                    f"/api/rooms/{room.slug}/messages",
                    "/api/rooms",
                    f"/api/rooms/{room.slug}/members",
                    f"/api/rooms/{room.slug}/join",
                    "/api/messages/1/stop",
                    "/api/messages/1/regenerate",
                    "/api/messages/1/pick",
                    f"/api/rooms/{room.slug}/read",
                ]
            ),
            # URLs stay short: a request line of many KiB is refused by the HTTP layer
            # itself (the client will not send it, daphne drops it), before Parley.
            slug=st.one_of(nasty_text, st.text(max_size=30)),
        )
        def check(body: bytes, endpoint: str, slug: str) -> None:
            _check_response(http.post(endpoint, content=body))
            name = quote(slug.encode("utf-8", "surrogatepass"), safe="")
            for path in (f"/api/rooms/{name}", f"/api/rooms/{name}/messages"):
                _check_response(http.get(path))
            _check_response(http.post(f"/api/rooms/{name}/leave"))
            _check_response(http.post(f"/api/messages/{name}/regenerate", content=body))
            _check_response(http.post(f"/api/messages/{name}/pick"))
            _check_response(http.delete(f"/api/rooms/{room.slug}/members/{name}"))
            _check_response(http.get(f"/api/rooms/{room.slug}/messages?limit={name}"))
            # Search's q and before, and history around a message (extensions).
            for query in (f"q={name}", f"q=a&before={name}", f"around={name}"):
                path = "search" if query.startswith("q=") else "messages"
                _check_response(http.get(f"/api/rooms/{room.slug}/{path}?{query}"))

        check()
        # The room goes on working.
        r = http.post(f"/api/rooms/{room.slug}/messages", json={"text": "after the storm"})
        assert r.status_code == 201, r.text
        assert r.json()["message"]["text"] == "after the storm"


def test_websocket_frames_get_an_error_at_most_and_the_room_goes_on(target):
    daphne, room, token = target
    loop = asyncio.new_event_loop()
    try:
        ws: RoomClient = loop.run_until_complete(
            RoomClient.connect(daphne.ws_url, room.slug, token=token)
        )
        loop.run_until_complete(ws.wait_type("hello"))
        pings = iter(range(10**9))

        async def exchange(frame: str | bytes) -> None:
            start = len(ws.events)
            await ws.send_raw(frame)
            probe = f"probe-{next(pings)}"
            await ws.send(action="ping", id=probe)
            await ws.wait_for(
                lambda e: e.get("type") == "pong" and e.get("id") == probe, start=start
            )
            answers = ws.events[start:]
            internal = [e for e in answers if e.get("type") == "error" and e["code"] == "internal"]
            assert internal == [], (frame, internal)
            assert not ws.closed.done(), (frame, ws.closed.result())

        @HOSTILE
        # Under PARLEY_MAX_FRAME_BYTES: a bigger frame closes with 1009, by contract
        # (tests/chat/test_consumers.py), which would end this connection.
        @given(frame=frames().filter(lambda f: len(f) < 60_000))
        def check(frame: str | bytes) -> None:
            loop.run_until_complete(exchange(frame))

        check()

        async def still_works() -> None:
            await ws.send(action="send", id="last", text="the room still works", client_id="z")
            event = await ws.wait_for(
                lambda e: e.get("type") == "message" and e["message"]["client_id"] == "z"
            )
            assert event["message"]["text"] == "the room still works"
            await ws.close()

        loop.run_until_complete(still_works())
    finally:
        loop.close()


@st.composite
def lifecycle_bodies(draw: Any) -> bytes:
    """A body for PATCH /api/messages/<id> or PUT .../rating: mostly the right fields with
    hostile values, some garbage."""
    kind = draw(st.sampled_from(["object", "object", "object", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=60))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    keys = st.sampled_from(["text", "rerun", "value", "comment"])
    body = draw(st.dictionaries(keys | st.text(max_size=6), json_values, max_size=4))
    if draw(st.booleans()):
        body["value"] = draw(st.sampled_from([1, -1, 0, 2, True, "1", None, 1.0]))
    return json.dumps(body).encode()


def test_edit_delete_and_rate_bodies_never_give_500(target):
    """Hostile bodies for the message lifecycle endpoints, on a real message and reply of
    the caller's, and on ids that are not messages: never a 500, always a JSON code."""
    from chat.models import Message, Role, Status

    daphne, room, token = target
    owner = room.owner
    mine = Message.objects.create(room=room, role=Role.USER, author=owner, text="mine")
    reply = Message.objects.create(
        room=room, role=Role.ASSISTANT, text="a reply", status=Status.COMPLETE, reply_to=mine
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=daphne.http_url, headers=headers, timeout=30) as http:

        @HOSTILE
        @given(
            body=lifecycle_bodies(),
            message=st.sampled_from([str(mine.pk), str(reply.pk), "0", "-1", "99999999"])
            | nasty_text.map(lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")),
        )
        def check(body: bytes, message: str) -> None:
            if not message:
                return
            _check_response(http.patch(f"/api/messages/{message}", content=body))
            _check_response(http.put(f"/api/messages/{message}/rating", content=body))
            _check_response(http.request("DELETE", f"/api/messages/{message}", content=body))

        check()
        # Whatever happened, each message reads cleanly, a tombstone or not.
        for pk in (mine.pk, reply.pk):
            r = http.get(f"/api/messages/{pk}")
            assert r.status_code == 200, r.text
            assert r.json().get("deleted") or isinstance(r.json()["text"], str)


def test_json_nested_deeper_than_the_parser_is_bad_json(target):
    daphne, room, token = target
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=daphne.http_url, headers=headers, timeout=30) as http:
        for body in ("[" * 50_000, '{"a":' * 12_000):
            r = http.post(f"/api/rooms/{room.slug}/messages", content=body)
            assert (r.status_code, r.json()["code"]) == (400, "bad_json")
