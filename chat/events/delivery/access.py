"""Who may stay subscribed to a room, and who may come in.

``RoomAccess`` belongs to one room channel: it indexes the room's local subscribers by
user and by token, keeps the room's member list as last read, and re-checks them all in
one set of queries (``check``): a revoked token or a deactivated account is cut with
4401, a member removed from the room with 4403. An idle room of thousands pays for one
scan of its member ids per interval, not for a Python loop or an ``IN`` list per member.

``Admission`` is the process's cache for handshakes: the Room row by slug, so that a
burst of handshakes into one room is admitted against the room channel's member list
instead of two queries and a thread hop each. When the row or the list is stale (the
timer does not check a room while it is empty), the first handshake of a burst re-reads
them, once, for every handshake waiting behind it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from chat.events.delivery.subscribers import Subscriber
from core import contract

# A process that admits members of many rooms drops the stale Room rows once it holds
# this many (a room channel that closes drops its own at once).
ADMISSION_CACHE_PRUNE_AT = 1024

# (subscriber, close code, reason): a cut the access check asks for.
Cut = tuple[Subscriber, int, str]


class RoomAccess:
    def __init__(self, room_id: int) -> None:
        self.room_id = room_id
        # The subscribers by user and by token, for the access checks.
        self.by_user: dict[int, dict[str, Subscriber]] = {}
        self.by_token: dict[int, dict[str, Subscriber]] = {}
        # Members of the room with an active account, as last read: admission checks a
        # burst of handshakes against it instead of one query each.
        self.members: set[int] = set()
        self.members_at = 0.0
        # One re-read at a time for admissions: the rest of a burst waits for it.
        self.reading = asyncio.Lock()

    def add(self, sub: Subscriber) -> None:
        self.by_user.setdefault(sub.user_id, {})[sub.id] = sub
        if sub.token_id is not None:
            self.by_token.setdefault(sub.token_id, {})[sub.id] = sub

    def remove(self, sub: Subscriber) -> None:
        _unindex(self.by_user, sub.user_id, sub.id)
        if sub.token_id is not None:
            _unindex(self.by_token, sub.token_id, sub.id)

    async def check(self) -> list[Cut]:
        """Read the room's access once; the subscribers whose access ended."""
        members, inactive, revoked = await database_sync_to_async(_access)(self.room_id)
        self.members, self.members_at = members, time.monotonic()
        return self.cuts(members=members, inactive=inactive, revoked=revoked)

    def cuts(self, *, members: set[int], inactive: set[int], revoked: set[int]) -> list[Cut]:
        cut: list[Cut] = []
        unauthenticated = contract.UNAUTHENTICATED.code
        for user_id in inactive & self.by_user.keys():
            cut += _each(self.by_user[user_id].values(), unauthenticated, contract.REASON_REVOKED)
        for token_id in revoked & self.by_token.keys():
            cut += _each(self.by_token[token_id].values(), unauthenticated, contract.REASON_REVOKED)
        for user_id in self.by_user.keys() - members - inactive:
            cut += _each(
                self.by_user[user_id].values(), contract.NOT_MEMBER.code, contract.REASON_REMOVED
            )
        return cut

    def members_fresh(self) -> bool:
        """The member list was read a moment ago."""
        return time.monotonic() - self.members_at < settings.PARLEY_RESYNC_INTERVAL * 2

    def knows_member(self, user_id: int) -> bool:
        """True when ``user_id`` was a member at the last check, a moment ago."""
        return self.members_fresh() and user_id in self.members


def _each(subs: Iterable[Subscriber], code: int, reason: str) -> list[Cut]:
    return [(sub, code, reason) for sub in subs]


def _access(room_id: int) -> tuple[set[int], set[int], set[int]]:
    """The room's active members, its inactive ones, and its members' revoked tokens.

    Three queries over the room's memberships, none with a parameter per subscriber: an
    idle room of 10,000 pays for one scan of its member ids per interval, not for building
    and binding a 10,000-item IN list (which made this the largest cost of an idle room).
    """
    from accounts.models import ApiToken
    from chat.models import Membership

    in_room = Membership.objects.filter(room_id=room_id)
    members = _members(room_id)
    inactive = set(in_room.filter(user__is_active=False).values_list("user_id", flat=True))
    revoked = set(
        ApiToken.objects.filter(
            user__memberships__room_id=room_id, revoked__isnull=False
        ).values_list("pk", flat=True)
    )
    return members, inactive, revoked


def _members(room_id: int) -> set[int]:
    """The room's members with an active account (the first of ``_access``'s reads)."""
    from chat.models import Membership

    return set(
        Membership.objects.filter(room_id=room_id, user__is_active=True).values_list(
            "user_id", flat=True
        )
    )


def room_row(room_id: int) -> Any | None:
    """The Room row as ``selectors.room_get`` reads it (its owner and assistants with it),
    stamped with when the read began (``read_at``)."""
    from chat.models import Room
    from chat.serializers import ROOM_PREFETCH

    began = time.monotonic()
    room = (
        Room.objects.select_related("owner")
        .prefetch_related(*ROOM_PREFETCH)
        .filter(pk=room_id)
        .first()
    )
    if room is not None:
        stamp(room, began)
    return room


# The attribute a Room row read for a handshake carries: when its read began (monotonic).
_READ_AT = "_parley_read_at"


def stamp(room: Any, began: float) -> None:
    setattr(room, _READ_AT, began)


def read_at(room: Any) -> float | None:
    """When ``room``'s row was read for a handshake (None: not read by admission)."""
    value = getattr(room, _READ_AT, None)
    return value if isinstance(value, float) else None


def _unindex(index: dict[int, dict[str, Subscriber]], key: int, sub_id: str) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.pop(sub_id, None)
        if not subs:
            del index[key]


class Admission:
    """The Room row by slug, as last read for a member's handshake (this process)."""

    def __init__(self) -> None:
        self.rooms: dict[str, tuple[Any, float]] = {}

    def cached(self, slug: str) -> Any | None:
        """The room ``slug`` if it was read a moment ago, else None."""
        entry = self.rooms.get(slug)
        if entry is None:
            return None
        room, at = entry
        if time.monotonic() - at >= settings.PARLEY_RESYNC_INTERVAL * 2:
            return None
        return room

    async def refreshed(self, slug: str, access: RoomAccess) -> Any | None:
        """The room ``slug``, whose channel's ``access`` is open here, with its row and
        member list fresh: what is stale is read again, once for a whole burst (the
        handshakes behind the first wait for its read). None when the room is gone or
        its slug changed: the caller asks the database."""
        async with access.reading:
            room = self.cached(slug)
            if room is None:
                room = await database_sync_to_async(room_row)(access.room_id)
                if room is None or room.slug != slug:
                    self.rooms.pop(slug, None)
                    return None
                self.remember(slug, room)
            if not access.members_fresh():
                access.members = await database_sync_to_async(_members)(access.room_id)
                access.members_at = time.monotonic()
            return room

    def known(self, slug: str) -> Any | None:
        """The room ``slug`` as last read, however long ago (a hint, never an answer)."""
        entry = self.rooms.get(slug)
        return None if entry is None else entry[0]

    def remember(self, slug: str, room: Any) -> None:
        now = time.monotonic()
        if len(self.rooms) >= ADMISSION_CACHE_PRUNE_AT:
            # Rows too old to admit anyone are only memory: drop them all at once.
            horizon = now - settings.PARLEY_RESYNC_INTERVAL * 2
            self.rooms = {s: entry for s, entry in self.rooms.items() if entry[1] > horizon}
        self.rooms[slug] = (room, now)

    def forget_room(self, room_id: int) -> None:
        """The room's channel closed here: its rows are not kept (bounded memory)."""
        for slug in [s for s, (room, _at) in self.rooms.items() if room.pk == room_id]:
            del self.rooms[slug]
