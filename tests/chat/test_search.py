"""Search and history around a message (docs/protocol.md "Search"), over a real daphne.

On SQLite by default; CI runs the same tests on PostgreSQL, where search is full text
(websearch_to_tsquery, the GIN index of migration 0010): the assertions hold on both, and
the PostgreSQL-only ones (word matching, the index used) say so.
"""

from __future__ import annotations

import os
from urllib.parse import quote

import httpx
import pytest
from django.db import connection

from chat.models import Membership, Message, Role
from chat.search import stored_vector, text_query
from tests.conftest import IN_CI

pytestmark = pytest.mark.django_db(transaction=True)


def client(daphne, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=daphne.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def fill(room, author, texts: list[str]) -> list[Message]:
    """Messages as a room holds them (written directly: search reads what is stored)."""
    return [
        Message.objects.create(room=room, role=Role.USER, author=author, text=text)
        for text in texts
    ]


@pytest.fixture
def room_with_talk(make_user, make_room):
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Garden", assistant="mention")
    Membership.objects.create(room=room, user=bob)
    messages = fill(
        room,
        ann,
        [
            "The tomatoes need water every morning",
            "Has anyone seen the blue watering can?",
            "Tomatoes and basil grow well together",
            "Lunch at noon?",
            "I put the TOMATOES in the shed",
        ],
    )
    return room, ann_token, bob_token, messages


def test_a_member_finds_matching_messages_newest_first(daphne, room_with_talk):
    room, ann_token, bob_token, messages = room_with_talk
    with client(daphne, bob_token) as c:
        r = c.get(f"/api/rooms/{room.slug}/search", params={"q": "tomatoes"})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [hit["message"]["id"] for hit in body["results"]]
    assert ids == [str(messages[4].pk), str(messages[2].pk), str(messages[0].pk)]
    assert body["more"] is False
    first = body["results"][0]
    assert first["message"]["text"] == "I put the TOMATOES in the shed"
    assert first["message"]["author"] == "ann"
    # The snippet is plain text; the match is marked by offsets into it.
    marked = [first["snippet"][s:e] for s, e in first["highlights"]]
    assert [m.lower() for m in marked] == ["tomatoes"]


def test_every_word_must_match(daphne, room_with_talk):
    room, _, bob_token, messages = room_with_talk
    with client(daphne, bob_token) as c:
        r = c.get(f"/api/rooms/{room.slug}/search", params={"q": "tomatoes basil"})
        none = c.get(f"/api/rooms/{room.slug}/search", params={"q": "cucumber"})
    assert [h["message"]["id"] for h in r.json()["results"]] == [str(messages[2].pk)]
    assert none.json() == {"results": [], "more": False}


def test_paging_with_before_reaches_every_match_once(daphne, make_user, make_room):
    ann, token = make_user("pager")
    room = make_room(ann, "Long talk", assistant="mention")
    matching = fill(room, ann, [f"note number {i} about compost" for i in range(45)])
    fill(room, ann, ["nothing to see"] * 5)
    seen: list[str] = []
    before = None
    with client(daphne, token) as c:
        for _ in range(10):
            params = {"q": "compost"} | ({"before": before} if before else {})
            body = c.get(f"/api/rooms/{room.slug}/search", params=params).json()
            seen += [h["message"]["id"] for h in body["results"]]
            # The page size is PARLEY_SEARCH_PAGE (20) in the session daphne.
            assert len(body["results"]) <= 20
            if not body["more"]:
                break
            before = body["results"][-1]["message"]["id"]
    assert seen == [str(m.pk) for m in reversed(matching)]


def test_non_members_get_the_contracts_refusal(daphne, room_with_talk, make_user, make_room):
    room, _, _, _ = room_with_talk
    carol, carol_token = make_user("carol")
    secret = make_room(carol, "Secret", visibility="private", assistant="mention")
    dave, dave_token = make_user("dave")
    with client(daphne, dave_token) as c:
        public = c.get(f"/api/rooms/{room.slug}/search", params={"q": "tomatoes"})
        private = c.get(f"/api/rooms/{secret.slug}/search", params={"q": "tomatoes"})
        around = c.get(f"/api/rooms/{room.slug}/messages", params={"around": "1"})
    # A public room's non-member: forbidden until they join; a private room: not found.
    assert (public.status_code, public.json()["code"]) == (403, "forbidden")
    assert (private.status_code, private.json()["code"]) == (404, "not_found")
    assert (around.status_code, around.json()["code"]) == (403, "forbidden")


@pytest.mark.parametrize(
    ("q", "says"),
    [
        ("", "q must not be empty"),
        ("   ", "q must not be empty"),
        ("\u200b\u200b", "q must not be empty"),
        ("tom\x00atoes", "q must not contain NUL"),
        ("x" * 201, "q is over 200 characters"),
        ("two\nlines", "q must not contain control characters"),
    ],
)
def test_a_bad_query_is_a_clear_400(daphne, room_with_talk, q, says):
    room, _, bob_token, _ = room_with_talk
    with client(daphne, bob_token) as c:
        r = c.get(f"/api/rooms/{room.slug}/search?q={quote(q)}")
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "bad_request"
    assert says in r.json()["detail"]


def test_a_lone_surrogate_in_the_query_is_no_500(daphne, room_with_talk):
    room, _, bob_token, _ = room_with_talk
    with client(daphne, bob_token) as c:
        # %ED%A0%80 is U+D800 as (invalid) UTF-8; the URL decoder replaces it.
        r = c.get(f"/api/rooms/{room.slug}/search?q=%ED%A0%80tomatoes")
        before = c.get(f"/api/rooms/{room.slug}/search?q=a&before=-1")
    assert r.status_code in (200, 400), r.text
    assert (before.status_code, before.json()["code"]) == (400, "bad_request")


def test_messages_of_other_rooms_never_match(daphne, room_with_talk, make_room):
    room, ann_token, _, _ = room_with_talk
    other = make_room(room.owner, "Elsewhere", assistant="mention")
    fill(other, room.owner, ["tomatoes elsewhere"])
    with client(daphne, ann_token) as c:
        body = c.get(f"/api/rooms/{room.slug}/search", params={"q": "elsewhere"}).json()
    assert body["results"] == []


def test_deleted_messages_never_match(daphne, room_with_talk):
    from django.utils import timezone

    room, _, bob_token, messages = room_with_talk
    with client(daphne, bob_token) as c:
        body = c.get(f"/api/rooms/{room.slug}/search", params={"q": "tomatoes"}).json()
    assert str(messages[4].pk) in [h["message"]["id"] for h in body["results"]]
    Message.objects.filter(pk=messages[4].pk).update(deleted_at=timezone.now())
    with client(daphne, bob_token) as c:
        body = c.get(f"/api/rooms/{room.slug}/search", params={"q": "tomatoes"}).json()
    assert str(messages[4].pk) not in [h["message"]["id"] for h in body["results"]]


@pytest.mark.postgres
def test_postgres_matches_words_not_substrings_and_uses_the_index(daphne, room_with_talk):
    if connection.vendor != "postgresql":
        if IN_CI or os.environ.get("DATABASE_URL", "").startswith("postgres"):
            pytest.fail("CI runs this on PostgreSQL, where search is full text")
        pytest.skip("this run uses SQLite; CI (DATABASE_URL) runs it on PostgreSQL")
    room, _, bob_token, messages = room_with_talk
    fill(room, room.owner, ["a tomatoesque word", "a '-' phrase: blue watering can"])
    with client(daphne, bob_token) as c:
        words = c.get(f"/api/rooms/{room.slug}/search", params={"q": "tomatoes"}).json()
        phrase = c.get(
            f"/api/rooms/{room.slug}/search", params={"q": '"watering can" -blue'}
        ).json()
    texts = [h["message"]["text"] for h in words["results"]]
    assert "a tomatoesque word" not in texts  # a word, not a substring
    assert len(texts) == 3
    assert phrase["results"] == []  # both mention blue
    # The planner can answer from the GIN index of the stored vector (migration 0010).
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        qs = Message.objects.annotate(found=stored_vector()).filter(found=text_query("tomatoes"))
        plan = qs.explain()
        cursor.execute("SET enable_seqscan = on")
    assert "message_text_search" in plan, plan


# --- history around a message ---


def test_around_gives_a_page_centred_on_the_message(daphne, make_user, make_room):
    ann, token = make_user("centre")
    room = make_room(ann, "Centre", assistant="mention")
    messages = fill(room, ann, [f"m{i}" for i in range(30)])
    target = messages[15]
    with client(daphne, token) as c:
        r = c.get(f"/api/rooms/{room.slug}/messages", params={"around": target.pk, "limit": 11})
        start = c.get(f"/api/rooms/{room.slug}/messages", params={"around": messages[2].pk})
        end = c.get(
            f"/api/rooms/{room.slug}/messages", params={"around": messages[-1].pk, "limit": 5}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["text"] for m in body["messages"]] == [f"m{i}" for i in range(10, 21)]
    assert body["has_older"] is True
    assert body["has_newer"] is True
    assert isinstance(body["head"], int)
    # Near the start: fewer before it, and nothing older; the default page reaches the end.
    assert [m["text"] for m in start.json()["messages"]][:3] == ["m0", "m1", "m2"]
    assert start.json()["has_older"] is False
    assert start.json()["has_newer"] is False
    # At the end: nothing newer, and the page filled from before it.
    assert [m["text"] for m in end.json()["messages"]] == ["m25", "m26", "m27", "m28", "m29"]
    assert (end.json()["has_older"], end.json()["has_newer"]) == (True, False)


def test_around_a_message_of_another_room_is_not_found(daphne, make_user, make_room):
    ann, token = make_user("wanderer")
    room = make_room(ann, "Here", assistant="mention")
    other = make_room(ann, "There", assistant="mention")
    (elsewhere,) = fill(other, ann, ["over there"])
    with client(daphne, token) as c:
        r = c.get(f"/api/rooms/{room.slug}/messages", params={"around": elsewhere.pk})
        bad = c.get(f"/api/rooms/{room.slug}/messages", params={"around": "x\x00"})
        mixed = c.get(
            f"/api/rooms/{room.slug}/messages", params={"around": elsewhere.pk, "before": 3}
        )
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert (bad.status_code, bad.json()["code"]) == (404, "not_found")
    assert (mixed.status_code, mixed.json()["code"]) == (400, "bad_request")
