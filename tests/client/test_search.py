"""parley_client's room search (``Client.search``, typed ``SearchPage`` / ``SearchHit``)
and the terminal chat's ``/search`` and ``/more``, against a real daphne (docs/protocol.md
"Search")."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from parley_client import BadRequest, Client, NotMember, SearchHit, SearchPage
from tests.client.test_chat import chat, wait

pytestmark = pytest.mark.django_db(transaction=True)


def fill(room, *, matching: int) -> dict[str, list[str]]:
    """``matching`` messages with "needle" in them, alternately bob's and ann's, oldest
    first; one more deleted, one without it. Their ids by kind."""
    from django.contrib.auth import get_user_model

    from chat.models import Message, Role

    ann, bob = room.owner, get_user_model().objects.get(username="bob")
    ids: dict[str, list[str]] = {"match": [], "deleted": [], "other": []}
    for i in range(matching):
        author = bob if i % 2 == 0 else ann
        m = Message.objects.create(
            room=room, role=Role.USER, author=author, text=f"hay {i} then the Needle {i}"
        )
        ids["match"].append(str(m.pk))
    gone = Message.objects.create(
        room=room,
        role=Role.USER,
        author=bob,
        text="a deleted needle",
        deleted_at=timezone.now(),
        deleted_by=bob,
    )
    ids["deleted"].append(str(gone.pk))
    other = Message.objects.create(room=room, role=Role.USER, author=bob, text="only hay")
    ids["other"].append(str(other.pk))
    return ids


def author_of(i: int) -> str:
    """Who wrote the i-th match of ``fill``."""
    return "bob" if i % 2 == 0 else "ann"


async def test_search_pages_newest_first_with_snippets_and_highlights(daphne, members, dora_rooms):
    room, tokens = members
    page_size = settings.PARLEY_SEARCH_PAGE
    ids = await sync_to_async(fill)(room, matching=page_size + 3)
    async with Client(daphne.http_url, token=tokens["cat"]) as client:
        first = await client.search(room.slug, "needle")
        assert isinstance(first, SearchPage)
        assert first.more
        assert [h.message.id for h in first.hits] == ids["match"][::-1][:page_size]
        newest = first.hits[0]
        assert isinstance(newest, SearchHit)
        assert newest.message.author == author_of(page_size + 2)
        assert newest.message.text.endswith(f"Needle {page_size + 2}")
        matched = [newest.snippet[a:b] for a, b in newest.highlights]
        assert matched == ["Needle"]
        assert [text for text, hit in newest.parts() if hit] == ["Needle"]
        assert "".join(text for text, _ in newest.parts()) == newest.snippet

        assert first.next_before == first.hits[-1].message.id
        rest = await client.search(room.slug, "needle", before=first.next_before)
        assert [h.message.id for h in rest.hits] == ids["match"][::-1][page_size:]
        assert not rest.more
        assert rest.next_before is None
        found = {h.message.id for h in first.hits + rest.hits}
        assert not found & set(ids["deleted"] + ids["other"])  # deleted never match

        with pytest.raises(BadRequest) as bad:
            await client.search(room.slug, "   ")
        assert "q" in str(bad.value)
        _, public = dora_rooms
        with pytest.raises(NotMember):
            await client.search(public.slug, "needle")


def test_a_search_hit_drops_highlights_its_snippet_cannot_hold():
    hit = SearchHit.from_dict(
        {
            "message": {"id": "7", "text": "abc needle"},
            "snippet": "abc needle",
            "highlights": [[4, 10], [8, 99], [-1, 2], [3, "x"], [5, 4]],
        }
    )
    assert hit.highlights == ((4, 10),)
    assert hit.parts() == [("abc ", False), ("needle", True)]


async def test_search_and_more_in_the_terminal_chat(daphne, members):
    room, tokens = members
    page_size = settings.PARLEY_SEARCH_PAGE
    ids = await sync_to_async(fill)(room, matching=page_size + 1)
    # The oldest match is from last week: its date is shown, not only its time.
    from chat.models import Message

    week_ago = timezone.now() - timedelta(days=7)
    await sync_to_async(Message.objects.filter(pk=ids["match"][0]).update)(created=week_ago)
    term = chat("--url", daphne.http_url, "--history", "0", room.slug, token=tokens["ann"])
    try:
        await wait(term, "joined Client tests (client-tests)")
        term.send("/search needle\r")
        await wait(term, "messages matching 'needle', newest first:")
        newest = ids["match"][-1]
        screen = await wait(term, "(older matches: /more)")
        line = next(x for x in screen.splitlines() if x.endswith(f"#{newest}"))
        who = author_of(page_size)
        assert f"{who}: hay {page_size} then the Needle {page_size}" in line
        assert ids["deleted"][0] not in screen
        term.send("/more\r")
        screen = await wait(term, "(no older matches)")
        oldest = next(x for x in screen.splitlines() if x.endswith(f"#{ids['match'][0]}"))
        assert f"[{week_ago:%Y-%m-%d %H:%M}] bob: hay 0 then the Needle 0" in oldest
        term.send("/more\r")
        await wait(term, "no older matches for 'needle'")
        term.send("/search nothing-like-it\r")
        await wait(term, "no messages match 'nothing-like-it'")
        term.send("/quit\r")
        assert await asyncio.to_thread(term.wait_exit, 20) == 0
    finally:
        term.close()
