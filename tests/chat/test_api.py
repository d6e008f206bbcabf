"""The JSON room API over a real daphne, with bearer tokens and session cookies."""

from __future__ import annotations

import re

import httpx
import pytest

from chat.models import Message, Role, Room

pytestmark = pytest.mark.django_db(transaction=True)


def client(daphne, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=daphne.http_url, headers=headers, timeout=10)


def test_token_lists_visible_rooms(daphne, make_user, make_room):
    alice, alice_token = make_user("alice")
    bob, _ = make_user("bob")
    make_room(alice, "Garden", visibility="public")
    make_room(bob, "Bob secret", visibility="private")
    with client(daphne, alice_token) as c:
        r = c.get("/api/rooms")
    assert r.status_code == 200
    names = [room["name"] for room in r.json()["rooms"]]
    assert "Garden" in names
    assert "Bob secret" not in names
    garden = next(room for room in r.json()["rooms"] if room["name"] == "Garden")
    assert garden == {
        "slug": "garden",
        "name": "Garden",
        "owner": "alice",
        "visibility": "public",
        "assistant": "always",
        "voice": "off",
        "prompt_heard_text": True,
        "head": garden["head"],
        # Extension: a new room has the one assistant every room had before assistants.
        "assistants": [
            {
                "handle": "assistant",
                "name": "Assistant",
                "avatar": "",
                "model": "default/fake-model",  # the session daphne's LLM_MODEL
                "mode": "always",
                "shared": False,
            }
        ],
        # Extension: nothing unread for alice in her new room (tests/chat/test_unread.py).
        "unread": 0,
        "mentioned": False,
    }
    assert isinstance(garden["head"], int)


def test_missing_bad_and_revoked_tokens_get_401(daphne, make_user):
    from accounts.models import ApiToken
    from accounts.services import api_token_revoke

    user, token = make_user("carol")
    with client(daphne) as c:
        r = c.get("/api/rooms")
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
    with client(daphne, "pk_not-a-real-token") as c:
        assert c.get("/api/rooms").status_code == 401
    with client(daphne, token) as c:
        assert c.get("/api/rooms").status_code == 200
    api_token_revoke(token=ApiToken.objects.get(user=user))
    with client(daphne, token) as c:
        r = c.get("/api/rooms")
    assert r.status_code == 401
    assert r.json() == {"code": "unauthorized", "detail": "invalid or revoked token"}


def test_token_is_stored_hashed(make_user):
    from accounts.models import ApiToken

    user, token = make_user("dave")
    stored = ApiToken.objects.get(user=user)
    assert token not in (stored.key_hash, stored.prefix)
    assert stored.key_hash != token
    assert len(stored.key_hash) == 64


def test_create_room_and_validation_errors(daphne, make_user):
    _, token = make_user("erin")
    with client(daphne, token) as c:
        r = c.post(
            "/api/rooms",
            json={
                "name": "Book club",
                "visibility": "private",
                "assistant": "mention",
                "voice": "streaming",
            },
        )
        assert r.status_code == 201, r.text
        room = r.json()
        assert room["slug"] == "book-club"
        assert (room["visibility"], room["assistant"], room["voice"]) == (
            "private",
            "mention",
            "streaming",
        )
        assert room["owner"] == "erin"
        again = c.post("/api/rooms", json={"name": "Book club"})
        assert again.status_code == 201
        assert again.json()["slug"] != "book-club"  # slugs stay unique

        cases = [
            ({"visibility": "public"}, 400, "bad_request"),
            ({"name": "x", "visibility": "secret"}, 400, "bad_request"),
            ({"name": "x", "assistant": 3}, 400, "bad_request"),
            ({"name": ["x"]}, 400, "bad_request"),
            ({"name": "x" * 500}, 400, "bad_request"),
        ]
        for body, status, code in cases:
            r = c.post("/api/rooms", json=body)
            assert (r.status_code, r.json()["code"]) == (status, code), body
        r = c.post("/api/rooms", content=b"{not json", headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (400, "bad_json")
        r = c.post("/api/rooms", content=b"[1, 2]")
        assert (r.status_code, r.json()["code"]) == (400, "bad_request")
        r = c.post("/api/rooms", content=b"\xff\xfe\x00")
        assert (r.status_code, r.json()["code"]) == (400, "bad_json")
        r = c.post("/api/rooms", content=b'{"name": "' + b"a" * 70000 + b'"}')
        assert (r.status_code, r.json()["code"]) == (413, "too_long")
        r = c.delete("/api/rooms")
        assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")
        assert set(r.headers["Allow"].split(", ")) == {"GET", "POST"}
        # A path a client normalises ("/api/rooms/./leave" is sent as "/api/rooms/leave")
        # meets a view that does not take its method: still the API's JSON error.
        r = c.post("/api/rooms/./leave")
        assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")


def test_private_rooms_are_invisible_to_non_members(daphne, make_user, make_room):
    owner, owner_token = make_user("fay")
    _, guest_token = make_user("gus")
    room = make_room(owner, "Fay only", visibility="private")
    with client(daphne, guest_token) as guest, client(daphne, owner_token) as own:
        assert guest.get(f"/api/rooms/{room.slug}").status_code == 404
        assert guest.post(f"/api/rooms/{room.slug}/join").status_code == 404
        assert guest.get(f"/api/rooms/{room.slug}/messages").status_code == 404
        # A non-owner cannot add members.
        r = guest.post(f"/api/rooms/{room.slug}/members", json={"username": "gus"})
        assert r.status_code == 404
        r = own.post(f"/api/rooms/{room.slug}/members", json={"username": "nobody"})
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = own.post(f"/api/rooms/{room.slug}/members", json={"username": "gus"})
        assert r.status_code == 200
        assert guest.get(f"/api/rooms/{room.slug}").json()["name"] == "Fay only"
        r = guest.post(f"/api/rooms/{room.slug}/members", json={"username": "fay"})
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")


def test_join_public_room_then_read_messages(daphne, make_user, make_room):
    owner, _ = make_user("hal")
    _, token = make_user("ivy")
    room = make_room(owner, "Open plan")
    ids = [
        Message.objects.create(room=room, role=Role.USER, author=owner, text=f"m{i}").pk
        for i in range(5)
    ]
    with client(daphne, token) as c:
        r = c.get(f"/api/rooms/{room.slug}/messages")
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        assert c.post(f"/api/rooms/{room.slug}/join").status_code == 200
        assert c.post(f"/api/rooms/{room.slug}/join").status_code == 200  # idempotent
        page = c.get(f"/api/rooms/{room.slug}/messages").json()
        assert [m["text"] for m in page["messages"]] == ["m0", "m1", "m2", "m3", "m4"]
        assert isinstance(page["head"], int)
        first = page["messages"][0]
        assert first["id"] == str(ids[0])
        assert first["author"] == "hal"
        assert set(first) == {
            "id",
            "room",
            "role",
            "author",
            "text",
            "status",
            "reply_to",
            "client_id",
            "input",
            "created",
        }
        assert first["input"] == "text"
        older = c.get(
            f"/api/rooms/{room.slug}/messages", params={"before": ids[3], "limit": 2}
        ).json()
        assert [m["text"] for m in older["messages"]] == ["m1", "m2"]
        newer = c.get(
            f"/api/rooms/{room.slug}/messages", params={"after": ids[1], "limit": 2}
        ).json()
        assert [m["text"] for m in newer["messages"]] == ["m2", "m3"]
        for bad in ({"limit": "0"}, {"limit": "x"}, {"before": "-1"}, {"after": "1e9"}):
            r = c.get(f"/api/rooms/{room.slug}/messages", params=bad)
            assert (r.status_code, r.json()["code"]) == (400, "bad_request"), bad
        one = c.get(f"/api/messages/{ids[2]}")
        assert one.json()["text"] == "m2"
        for bad_id in ("abc", "0", "-3", "99999999", "1" * 40):
            r = c.get(f"/api/messages/{bad_id}")
            assert (r.status_code, r.json()["code"]) == (404, "not_found"), bad_id


def test_message_of_other_room_is_not_found(daphne, make_user, make_room):
    owner, _ = make_user("jon")
    _, token = make_user("kim")
    room = make_room(owner, "Jon's", visibility="private")
    msg = Message.objects.create(room=room, role=Role.USER, author=owner, text="secret")
    with client(daphne, token) as c:
        assert c.get(f"/api/messages/{msg.pk}").status_code == 404


def test_session_login_needs_csrf_for_writes(daphne, make_user):
    make_user("lea", password="a-long-password-1")
    with httpx.Client(base_url=daphne.http_url, timeout=10) as c:
        page = c.get("/accounts/login/")
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert match
        csrf = match.group(1)
        r = c.post(
            "/accounts/login/",
            data={"username": "lea", "password": "a-long-password-1", "csrfmiddlewaretoken": csrf},
        )
        assert r.status_code == 302
        assert c.get("/api/rooms").status_code == 200
        r = c.post("/api/rooms", json={"name": "No csrf"})
        assert r.status_code == 403
        token = c.cookies["csrftoken"]
        r = c.post(
            "/api/rooms",
            json={"name": "With csrf"},
            headers={"X-CSRFToken": token, "Referer": daphne.http_url + "/"},
        )
        assert r.status_code == 201, r.text
    assert Room.objects.filter(name="With csrf").exists()
    assert not Room.objects.filter(name="No csrf").exists()


# --- leaving a room, and removing a member (extension) -----------------------------------


def test_a_member_leaves_and_loses_the_room(daphne, make_user, make_room):
    owner, owner_token = make_user("kim")
    _, token = make_user("lou")
    public = make_room(owner, "Open house")
    private = make_room(owner, "Back office", visibility="private")
    with client(daphne, token) as lou, client(daphne, owner_token) as kim:
        assert lou.post(f"/api/rooms/{public.slug}/join").status_code == 200
        kim.post(f"/api/rooms/{private.slug}/members", json={"username": "lou"})
        for room in (public, private):
            assert lou.get(f"/api/rooms/{room.slug}/messages").status_code == 200
            r = lou.post(f"/api/rooms/{room.slug}/leave")
            assert r.status_code == 204
        # Out of both: the public room asks to join again, the private one is gone.
        r = lou.get(f"/api/rooms/{public.slug}/messages")
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        assert lou.get(f"/api/rooms/{private.slug}").status_code == 404
        assert "Back office" not in [x["name"] for x in lou.get("/api/rooms").json()["rooms"]]
        # Leaving again is harmless; leaving a private room one is not in is not found.
        assert lou.post(f"/api/rooms/{public.slug}/leave").status_code == 204
        assert lou.post(f"/api/rooms/{private.slug}/leave").status_code == 404
        # The owner stays: a room keeps its owner.
        r = kim.post(f"/api/rooms/{public.slug}/leave")
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        assert "owner cannot leave" in r.json()["detail"]
        assert kim.get(f"/api/rooms/{public.slug}/messages").status_code == 200
        assert lou.get(f"/api/rooms/{public.slug}/leave").status_code == 405


def test_the_owner_removes_a_member_and_no_one_else_can(daphne, make_user, make_room):
    owner, owner_token = make_user("max")
    _, ned_token = make_user("ned")
    _, oli_token = make_user("oli")
    room = make_room(owner, "Crew", visibility="private")
    with (
        client(daphne, owner_token) as own,
        client(daphne, ned_token) as ned,
        client(daphne, oli_token) as oli,
    ):
        for name in ("ned", "oli"):
            assert own.post(f"/api/rooms/{room.slug}/members", json={"username": name}).is_success
        # A member who is not the owner cannot remove anyone.
        r = ned.delete(f"/api/rooms/{room.slug}/members/oli")
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        assert oli.get(f"/api/rooms/{room.slug}/messages").status_code == 200
        # The owner can; the removed member loses the room at once.
        assert own.delete(f"/api/rooms/{room.slug}/members/oli").status_code == 204
        assert oli.get(f"/api/rooms/{room.slug}/messages").status_code == 404
        assert ned.get(f"/api/rooms/{room.slug}/messages").status_code == 200
        # Removing someone who is not in the room, or the owner, is refused clearly.
        r = own.delete(f"/api/rooms/{room.slug}/members/oli")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = own.delete(f"/api/rooms/{room.slug}/members/max")
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        r = own.delete(f"/api/rooms/{room.slug}/members/{'x' * 300}")
        assert r.status_code in (400, 413)
        assert r.json()["code"] in ("bad_request", "too_long")
        assert own.post(f"/api/rooms/{room.slug}/members/ned").status_code == 405


async def test_a_removed_member_s_websocket_is_closed_with_4403(daphne, make_user, make_room):
    from asgiref.sync import sync_to_async

    from tests.support.rooms import connect

    owner, owner_token = await sync_to_async(make_user)("pat")
    _, token = await sync_to_async(make_user)("quin")
    room = await sync_to_async(make_room)(owner, "Watch")
    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10) as http:
        r = await http.post(
            f"/api/rooms/{room.slug}/join", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200
        quin = await connect(daphne, room, token)
        pat = await connect(daphne, room, owner_token)
        r = await http.delete(
            f"/api/rooms/{room.slug}/members/quin",
            headers={"Authorization": f"Bearer {owner_token}"},
        )
        assert r.status_code == 204
        # Within the access re-check period (PARLEY_RESYNC_INTERVAL, 2 s here).
        assert await quin.wait_closed(5) == 4403
        await pat.send(action="ping", id="still-here")
        assert (await pat.wait_type("pong", id="still-here"))["type"] == "pong"
        await pat.close()
