"""Reads for finding a message: full-text search in a room, and history around a message.

**PostgreSQL**: ``search_vector @@ websearch_to_tsquery('simple', q)``, where
``chat_message.search_vector`` is a stored generated column, ``to_tsvector('simple',
text)``, with a GIN index (migration 0010 says why a column and not an expression index:
the rows a lookup checks again, or a walk of the room's newest messages tests, read the
vector instead of computing it from the text). It is not a model field (SQLite has no
tsvector), so the query names it with ``RawSQL``.

The configuration is ``simple``, not ``english``: a room's members write in any language,
and paste code, names and URLs; ``simple`` lowercases and splits on word boundaries and
nothing else, so a word matches the same word in every language and identifiers are not
stemmed into other words. The price: no stemming (``run`` does not find ``running``), and
no stop words dropped (``the`` is a word like any other). ``websearch`` syntax: ``"a
phrase"``, ``-word`` (without), ``or``. Headlines (``ts_headline``) are computed for the
page's rows only, in a second query.

**SQLite** (a laptop, the tests): each word of the query (quotes and a leading ``-`` are
dropped) must occur in the text, case-insensitively (LIKE); the snippet is cut in Python.

Deleted messages never match: see ``_searchable``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from django.conf import settings
from django.db import connection
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL

from chat.errors import BadRequest, NotFound
from chat.models import Message, Room
from chat.selectors import parse_message_id
from chat.serializers import MessageDict, message_to_dict
from chat.text import clean_text

if TYPE_CHECKING:
    from django.contrib.postgres.search import SearchQuery

# The text search configuration and the generated column, as migration 0010 made them.
SEARCH_CONFIG = "simple"
SEARCH_COLUMN = '"chat_message"."search_vector"'
# Markers PostgreSQL's ts_headline puts around a matched word; private-use characters, so
# the wire snippet is plain text with ``highlights`` offsets, never HTML to trust.
_START, _STOP = "\ue000", "\ue001"
# SQLite: at most this many words of a query are matched (each is one LIKE).
_SQLITE_WORDS = 8
# The snippet around the first match on SQLite, in characters on each side.
_SNIPPET_CONTEXT = 60
# Related rows message_to_dict reads, joined in the page's query.
_WIRE_RELATED = ("author", "reply_to", "generation", "generation__stopped_by")


class SearchHit(TypedDict):
    message: MessageDict
    # Plain text around the match (never HTML), with the matched words' [start, end)
    # offsets in it, in code points.
    snippet: str
    highlights: list[list[int]]


@dataclass(frozen=True)
class SearchPage:
    hits: list[SearchHit]
    # Older matches remain: ask again with before = the last hit's id.
    more: bool


def search_query(value: object) -> str:
    """The ``q`` a search takes: text Parley can store (no NUL, no lone surrogates, not
    blank), single-line, at most PARLEY_SEARCH_MAX_CHARS."""
    return clean_text(
        value,
        field="q",
        max_chars=settings.PARLEY_SEARCH_MAX_CHARS,
        single_line=True,
        strip=True,
    )


def _searchable(room: Room) -> QuerySet[Message]:
    """The messages of ``room`` a search may find."""
    # Deleted messages never match (a tombstone's text is kept only for staff review).
    return Message.objects.filter(room=room, deleted_at__isnull=True)


def stored_vector() -> RawSQL:
    """The message's stored tsvector (PostgreSQL only; migration 0010)."""
    from django.contrib.postgres.search import SearchVectorField

    # A constant column name, nothing from the request.
    return RawSQL(SEARCH_COLUMN, [], output_field=SearchVectorField())  # noqa: S611


def text_query(q: str) -> SearchQuery:
    from django.contrib.postgres.search import SearchQuery

    return SearchQuery(q, search_type="websearch", config=SEARCH_CONFIG)


def _words(q: str) -> list[str]:
    words = [w.strip('"').lstrip("-") for w in q.split()]
    return [w for w in words if w and w.lower() != "or"][:_SQLITE_WORDS]


def message_search(*, room: Room, q: str, before: int | None, limit: int) -> SearchPage:
    """Up to ``limit`` of ``room``'s messages matching ``q`` (see ``search_query``),
    newest first, older than message ``before`` when given."""
    qs = _searchable(room)
    if before is not None:
        qs = qs.filter(pk__lt=before)
    postgres = connection.vendor == "postgresql"
    if postgres:
        qs = qs.annotate(found=stored_vector()).filter(found=text_query(q))
    else:
        words = _words(q)
        if not words:
            return SearchPage(hits=[], more=False)
        for word in words:
            qs = qs.filter(text__icontains=word)
    page = list(qs.select_related(*_WIRE_RELATED).order_by("-id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    snippets = _headlines(page, q) if postgres else {m.pk: _cut(m.text, _words(q)) for m in page}
    hits: list[SearchHit] = []
    for message in page:
        snippet, highlights = snippets.get(message.pk, (message.text[:200], []))
        hits.append(
            {
                "message": message_to_dict(message, room_slug=room.slug),
                "snippet": snippet,
                "highlights": highlights,
            }
        )
    return SearchPage(hits=hits, more=more)


def _headlines(page: list[Message], q: str) -> dict[int, tuple[str, list[list[int]]]]:
    """PostgreSQL's headline of each message of the page: a second query on the page's
    ids, so ts_headline runs on a page of rows, never on every match."""
    if not page:
        return {}
    from django.contrib.postgres.search import SearchHeadline

    query = text_query(q)
    rows = (
        Message.objects.filter(pk__in=[m.pk for m in page])
        .annotate(
            headline=SearchHeadline(
                "text",
                query,
                config=SEARCH_CONFIG,
                start_sel=_START,
                stop_sel=_STOP,
                max_words=30,
                min_words=12,
            )
        )
        .values_list("pk", "headline")
    )
    return {pk: _marked(headline or "") for pk, headline in rows}


def _marked(headline: str) -> tuple[str, list[list[int]]]:
    """Plain text and highlight offsets from a headline with the markers in it."""
    text: list[str] = []
    highlights: list[list[int]] = []
    length = 0
    start: int | None = None
    for char in headline:
        if char == _START:
            start = length
        elif char == _STOP:
            if start is not None and length > start:
                highlights.append([start, length])
            start = None
        else:
            text.append(char)
            length += 1
    return "".join(text), highlights


def _cut(text: str, words: list[str]) -> tuple[str, list[list[int]]]:
    """SQLite's snippet: the text around the first match, every word found in it marked."""
    lowered = text.lower()
    first = min((i for i in (lowered.find(w.lower()) for w in words) if i >= 0), default=0)
    start = max(0, first - _SNIPPET_CONTEXT)
    end = min(len(text), first + _SNIPPET_CONTEXT * 2)
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(text) else ""
    snippet = prefix + text[start:end] + suffix
    highlights: list[list[int]] = []
    for word in words:
        for found in re.finditer(re.escape(word), snippet, flags=re.IGNORECASE):
            highlights.append([found.start(), found.end()])
    highlights.sort()
    merged: list[list[int]] = []
    for span in highlights:
        if merged and span[0] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], span[1])
        else:
            merged.append(span)
    return snippet, merged


@dataclass(frozen=True)
class AroundPage:
    messages: list[Message]  # in id order
    has_older: bool
    has_newer: bool


def messages_around(*, room: Room, message_id: object, limit: int) -> AroundPage:
    """A page of ``room``'s history centred on one of its messages: ``limit`` messages
    in all, in id order, about half before it (near either end of the room, the other side
    gets what that side cannot fill); whether there are more either way. A message not in
    the room is not_found."""
    pk = parse_message_id(message_id)
    if limit < 1:
        raise BadRequest("limit must be an integer >= 1")
    qs = Message.objects.filter(room=room).select_related(*_WIRE_RELATED)
    target = qs.filter(pk=pk).first()
    if target is None:
        raise NotFound("no such message")
    # At most ``limit`` each way: enough to fill the page from one side, and one more
    # than either side can take, to tell whether more remain.
    older = list(qs.filter(pk__lt=pk).order_by("-id")[:limit])
    newer = list(qs.filter(pk__gt=pk).order_by("id")[:limit])
    room_for = limit - 1
    take_older = min(len(older), max(room_for // 2, room_for - len(newer)))
    take_newer = min(len(newer), room_for - take_older)
    return AroundPage(
        messages=[*reversed(older[:take_older]), target, *newer[:take_newer]],
        has_older=len(older) > take_older,
        has_newer=len(newer) > take_newer,
    )
