"""One rule for text from outside (chat/text.py): NUL, lone surrogates and blank text.

Over a real daphne, on whichever database the session uses (SQLite here, PostgreSQL in
CI, where a NUL used to reach the database and answer 500). Every field and transport
answers a clear 400 / ``bad_request``, and nothing is stored.
"""

from __future__ import annotations

import os

import httpx
import pytest
from django.db import connection

from chat.models import Message, Room
from chat.services import room_join
from tests.conftest import IN_CI
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)

# Raw JSON text, so the escapes reach the server as a client would send them.
NUL = "\\u0000"
SURROGATE = "\\ud800"
BAD_VALUES = [f"a{NUL}b", f"a{SURROGATE}b", SURROGATE, "\\udfff tail"]
BLANK = ["\\u200b", " \\u200b\\u200d\\ufeff ", "\\u3164", "\\u2800\\u00ad", "\\u2060\\n\\t"]


def client(daphne, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=daphne.http_url,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=10,
    )


def post_raw(c: httpx.Client, url: str, body: str) -> httpx.Response:
    return c.post(url, content=body.encode("ascii"))


def assert_bad_request(r: httpx.Response, field: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json()["code"] == "bad_request"
    assert field in r.json()["detail"]


def check_every_field(daphne, make_user, make_room) -> None:
    owner, token = make_user("tara")
    make_user("bob")
    room = make_room(owner, "Text rule")
    before = Message.objects.count(), Room.objects.count()
    with client(daphne, token) as c:
        for bad in BAD_VALUES:
            messages = f"/api/rooms/{room.slug}/messages"
            assert_bad_request(post_raw(c, messages, f'{{"text": "{bad}"}}'), "text")
            assert_bad_request(
                post_raw(c, messages, f'{{"text": "hi", "client_id": "{bad}"}}'), "client_id"
            )
            assert_bad_request(post_raw(c, "/api/rooms", f'{{"name": "{bad}"}}'), "name")
            assert_bad_request(
                post_raw(c, "/api/rooms", f'{{"name": "ok", "system_prompt": "{bad}"}}'),
                "system_prompt",
            )
            assert_bad_request(
                post_raw(c, f"/api/rooms/{room.slug}/members", f'{{"username": "{bad}"}}'),
                "username",
            )
        for blank in BLANK:
            r = post_raw(c, f"/api/rooms/{room.slug}/messages", f'{{"text": "{blank}"}}')
            assert_bad_request(r, "text")
            assert "empty" in r.json()["detail"]
            assert_bad_request(post_raw(c, "/api/rooms", f'{{"name": "{blank}"}}'), "name")
        # A name is one line.
        assert_bad_request(post_raw(c, "/api/rooms", '{"name": "two\\nlines"}'), "name")
        # Text around an invisible character is still text. (The send waits for its
        # reply: a reply still being saved when the test's database is flushed deadlocks
        # the flush on PostgreSQL.)
        r = post_raw(c, f"/api/rooms/{room.slug}/messages", '{"text": "a\\u200bb", "wait": true}')
        assert r.status_code == 200, r.text
        assert r.json()["message"]["text"] == "a\u200bb"
    assert (Message.objects.count(), Room.objects.count()) == (before[0] + 2, before[1])


def test_nul_surrogates_and_blank_text_are_bad_requests_over_http(daphne, make_user, make_room):
    check_every_field(daphne, make_user, make_room)


@pytest.mark.postgres
def test_nul_and_surrogates_are_bad_requests_on_postgresql(daphne, make_user, make_room):
    if connection.vendor != "postgresql":
        if IN_CI or os.environ.get("DATABASE_URL", "").startswith("postgres"):
            pytest.fail("CI runs this on PostgreSQL, where NUL used to be a 500")
        pytest.skip("this run uses SQLite; CI (DATABASE_URL) runs it on PostgreSQL")
    check_every_field(daphne, make_user, make_room)


@pytest.mark.parametrize("slug", ["a%00b", "a%ED%A0%80b", "a%C0%80b", "..%2F..", "x" * 81])
def test_slugs_that_cannot_exist_are_not_found_everywhere(daphne, make_user, slug):
    _, token = make_user("sam")
    with client(daphne, token) as c:
        for path in (
            f"/api/rooms/{slug}",
            f"/api/rooms/{slug}/messages",
            f"/api/rooms/{slug}/events",
        ):
            r = c.get(path)
            assert r.status_code == 404, (path, r.status_code, r.text)
            assert r.json()["code"] == "not_found"
        r = c.post(f"/api/rooms/{slug}/messages", json={"text": "hi"})
        assert r.status_code == 404, r.text
        for action in ("join", "members"):
            assert c.post(f"/api/rooms/{slug}/{action}", json={}).status_code == 404
    # The page, signed in with a session.
    with httpx.Client(base_url=daphne.http_url, timeout=10) as browser:
        login = browser.get("/accounts/login/")
        csrf = browser.cookies["csrftoken"]
        assert login.status_code == 200
        browser.post(
            "/accounts/login/",
            data={"username": "sam", "password": "pw-for-tests-123", "csrfmiddlewaretoken": csrf},
        )
        assert browser.get("/").status_code == 200  # signed in
        assert browser.get(f"/rooms/{slug}/").status_code == 404


@pytest.mark.parametrize("slug", ["a%00b", "a%ED%A0%80b"])
async def test_a_websocket_to_an_impossible_slug_closes_4404(daphne, make_user, slug):
    from asgiref.sync import sync_to_async

    _, token = await sync_to_async(make_user)("wes")
    ws = await RoomClient.connect(daphne.ws_url, slug, token=token)
    assert await ws.wait_closed(timeout=10) == 4404


async def test_websocket_send_answers_bad_request_and_stores_nothing(daphne, make_user, make_room):
    from asgiref.sync import sync_to_async

    owner, token = await sync_to_async(make_user)("vic")
    room = await sync_to_async(make_room)(owner, "Frames")
    await sync_to_async(room_join)(room=room, user=owner)
    ws = await RoomClient.connect(daphne.ws_url, room.slug, token=token)
    await ws.wait_for(lambda e: e["type"] == "hello")
    frames = [
        ('{"action":"send","id":"n","text":"a\\u0000b"}', "n", "text"),
        ('{"action":"send","id":"s","text":"\\ud800"}', "s", "text"),
        ('{"action":"send","id":"c","text":"hi","client_id":"\\udc00"}', "c", "client_id"),
        ('{"action":"send","id":"z","text":"\\u200b\\u200b"}', "z", "text"),
    ]
    for raw, request_id, field in frames:
        await ws.send_raw(raw)
        error = await ws.wait_for(
            lambda e, i=request_id: e["type"] == "error" and e["id"] == i  # type: ignore[misc]
        )
        assert error["code"] == "bad_request", error
        assert field in error["detail"]
    # The connection and the room go on working.
    await ws.send(action="send", id="ok", text="still here", client_id="fine")
    message = await ws.wait_for(
        lambda e: e["type"] == "message" and e["message"]["client_id"] == "fine"
    )
    assert message["message"]["text"] == "still here"
    texts = await sync_to_async(
        lambda: list(Message.objects.filter(room=room, role="user").values_list("text", flat=True))
    )()
    assert texts == ["still here"]
    # The room answers every message: let that reply end before the test does, so its last
    # writes do not race the teardown's flush of the database.
    reply = await ws.wait_for(
        lambda e: e["type"] == "message" and e["message"]["reply_to"] == message["message"]["id"]
    )
    await ws.wait_terminal(reply["message"]["id"])
    await ws.close()
