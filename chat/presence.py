"""Who is online in each room, in this process (live-only; never stored)."""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter


class Presence:
    def __init__(self) -> None:
        self._rooms: dict[int, Counter[str]] = {}

    def join(self, room_id: int, username: str) -> bool:
        """Count one more connection of ``username``; True when they just came online."""
        counts = self._rooms.setdefault(room_id, Counter())
        counts[username] += 1
        return counts[username] == 1

    def leave(self, room_id: int, username: str) -> bool:
        """Count one connection fewer; True when ``username`` just went offline."""
        counts = self._rooms.get(room_id)
        if counts is None or counts[username] <= 0:
            return False
        counts[username] -= 1
        if counts[username] == 0:
            del counts[username]
            if not counts:
                del self._rooms[room_id]
            return True
        return False

    def online(self, room_id: int) -> list[str]:
        return sorted(self._rooms.get(room_id, {}))


_presence: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Presence] = (
    weakref.WeakKeyDictionary()
)


def get_presence() -> Presence:
    loop = asyncio.get_running_loop()
    presence = _presence.get(loop)
    if presence is None:
        presence = _presence[loop] = Presence()
    return presence
