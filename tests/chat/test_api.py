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
        assert r.status_code == 405


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
