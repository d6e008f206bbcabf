"""Unread counts and mentions (docs/protocol.md "Unread and mentions"), over a real daphne:
messages sent by another member through the API, the read mark moved over HTTP and over
the WebSocket, and what ``GET /api/rooms`` then says."""

from __future__ import annotations

import httpx
import pytest

from chat.models import Membership, Message
from chat.unread import mentions
from tests.support.rooms import connect

pytestmark = pytest.mark.django_db(transaction=True)


def client(daphne, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=daphne.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def news(c: httpx.Client, slug: str) -> tuple[int, bool, int]:
    """(unread, mentioned, head) of room ``slug`` in the caller's GET /api/rooms."""
    r = c.get("/api/rooms")
    assert r.status_code == 200, r.text
    room = next(room for room in r.json()["rooms"] if room["slug"] == slug)
    return room["unread"], room["mentioned"], room["head"]


def say(c: httpx.Client, slug: str, text: str) -> dict:
    r = c.post(f"/api/rooms/{slug}/messages", json={"text": text})
    assert r.status_code == 201, r.text  # no reply asked: a mention-mode room
    return r.json()["message"]


@pytest.fixture
def pair(make_user, make_room):
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Garden", assistant="mention")
    Membership.objects.create(room=room, user=bob)
    return room, ann_token, bob_token


def test_messages_by_others_are_unread_until_read(daphne, pair):
    room, ann_token, bob_token = pair
    with client(daphne, ann_token) as ann, client(daphne, bob_token) as bob:
        assert news(ann, room.slug)[:2] == (0, False)
        for text in ("one", "two", "three"):
            say(bob, room.slug, text)
        say(ann, room.slug, "mine does not count")
        unread, mentioned, head = news(ann, room.slug)
        assert (unread, mentioned) == (3, False)
        assert news(bob, room.slug)[:2] == (1, False)  # ann's message, for bob
        # Each message's event seq is kept on it (how unread maps messages to seqs).
        kept = list(Message.objects.filter(room=room).order_by("id").values_list("seq", flat=True))
        assert None not in kept
        seqs = [seq for seq in kept if seq is not None]
        assert seqs == sorted(seqs)
        assert seqs[-1] == head
        # Read up to the second message: one is left.
        r = ann.post(f"/api/rooms/{room.slug}/read", json={"seq": seqs[1]})
        assert r.status_code == 200, r.text
        assert r.json() == {"seq": seqs[1], "unread": 1, "mentioned": False}
        assert news(ann, room.slug)[:2] == (1, False)
        r = ann.post(f"/api/rooms/{room.slug}/read", json={"seq": head})
        assert r.json() == {"seq": head, "unread": 0, "mentioned": False}
        assert news(ann, room.slug)[:2] == (0, False)


def test_a_mention_of_you_marks_the_room_until_read(daphne, pair):
    room, ann_token, bob_token = pair
    with client(daphne, ann_token) as ann, client(daphne, bob_token) as bob:
        say(bob, room.slug, "@annabel is someone else")
        say(bob, room.slug, "mail ann@example.com")
        assert news(ann, room.slug)[:2] == (2, False)
        say(bob, room.slug, "what do you think, @Ann?")
        unread, mentioned, head = news(ann, room.slug)
        assert (unread, mentioned) == (3, True)
        ann.post(f"/api/rooms/{room.slug}/read", json={"seq": head})
        assert news(ann, room.slug)[:2] == (0, False)


def test_the_read_mark_never_moves_back_and_stops_at_the_head(daphne, pair):
    room, ann_token, bob_token = pair
    with client(daphne, ann_token) as ann, client(daphne, bob_token) as bob:
        for text in ("a", "b"):
            say(bob, room.slug, text)
        head = news(ann, room.slug)[2]
        assert ann.post(f"/api/rooms/{room.slug}/read", json={"seq": head}).json()["seq"] == head
        back = ann.post(f"/api/rooms/{room.slug}/read", json={"seq": 1}).json()
        assert back == {"seq": head, "unread": 0, "mentioned": False}
        ahead = ann.post(f"/api/rooms/{room.slug}/read", json={"seq": head + 1000}).json()
        assert ahead["seq"] == head  # a seq past the head is the head
        say(bob, room.slug, "c")  # so it still counts what comes next
        assert news(ann, room.slug)[:2] == (1, False)


def test_read_over_the_websocket(daphne, pair):
    import asyncio

    room, ann_token, bob_token = pair

    async def scenario() -> None:
        ws = await connect(daphne, room, ann_token)
        try:
            head = ws.events[0]["head"]
            await ws.send(action="read", seq="7")
            await ws.send(action="read", seq=True)
            await ws.send(action="read", seq=head)
            await ws.send(action="ping", id="done")
            await ws.wait_type("pong", id="done")
            errors = [e for e in ws.events if e.get("type") == "error"]
            assert [e["code"] for e in errors] == ["bad_request", "bad_request"]
            assert "seq must be a non-negative integer" in errors[0]["detail"]
        finally:
            await ws.close()

    with client(daphne, bob_token) as bob:
        say(bob, room.slug, "hello @ann")
    with client(daphne, ann_token) as ann:
        room_before = news(ann, room.slug)
    assert room_before[:2] == (1, True)
    asyncio.run(scenario())
    with client(daphne, ann_token) as ann:
        assert news(ann, room.slug)[:2] == (0, False)


def test_a_newcomer_inherits_no_unread_history(daphne, pair, make_user):
    room, ann_token, bob_token = pair
    with client(daphne, bob_token) as bob:
        say(bob, room.slug, "before carol came")
    carol, carol_token = make_user("carol")
    with client(daphne, carol_token) as carol_http:
        # A public room's non-member: listed, with nothing unread.
        assert news(carol_http, room.slug)[:2] == (0, False)
        assert carol_http.post(f"/api/rooms/{room.slug}/read", json={"seq": 1}).status_code == 403
        assert carol_http.post(f"/api/rooms/{room.slug}/join").status_code == 200
        assert news(carol_http, room.slug)[:2] == (0, False)
        with client(daphne, bob_token) as bob:
            say(bob, room.slug, "welcome carol")
        assert news(carol_http, room.slug)[:2] == (1, False)


@pytest.mark.parametrize(
    "body", [{}, {"seq": -1}, {"seq": "3"}, {"seq": 1.5}, {"seq": None}, {"seq": 2**70}]
)
def test_a_bad_read_is_a_clear_400(daphne, pair, body):
    room, ann_token, _ = pair
    with client(daphne, ann_token) as ann:
        r = ann.post(f"/api/rooms/{room.slug}/read", json=body)
    assert (r.status_code, r.json()["code"]) == (400, "bad_request")
    assert "seq must be a non-negative integer" in r.json()["detail"]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("@ann hi", True),
        ("hi @ann", True),
        ("hi @ann.", True),
        ("hi @ANN, you", True),
        ("(@ann)", True),
        ("@anna", False),
        ("ann@example.com", False),
        ("@ann.b", False),
        ("@@ann", False),
        ("ann", False),
    ],
)
def test_the_mention_rule(text, found):
    assert mentions(text, "ann") is found
