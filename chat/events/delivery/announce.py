"""Presence changes, debounced per room: one ``presence`` event per interval, however
many members came or went (a reconnect storm would otherwise send N events to N
members)."""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from chat.events import room_live_emit
from chat.presence import Presence, presence_event

logger = logging.getLogger(__name__)


class PresenceAnnouncer:
    def __init__(self, room_id: int, presence: Presence) -> None:
        self.room_id = room_id
        self.presence = presence
        self._due: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """Someone came or went: announce it within ``PARLEY_PRESENCE_DEBOUNCE``."""
        if self._due is not None:
            return
        loop = asyncio.get_running_loop()
        self._due = loop.call_later(settings.PARLEY_PRESENCE_DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._due = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._broadcast(), name=f"presence-{self.room_id}")

    async def _broadcast(self) -> None:
        try:
            online = await self.presence.online(self.room_id)
            await room_live_emit(room_id=self.room_id, event=presence_event(online))
        except Exception:  # noqa: BLE001 - presence is live-only; the next change retries
            logger.warning("room %s: presence broadcast failed", self.room_id)

    async def aclose(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
