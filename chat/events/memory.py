"""The in-process event store: for one process with the in-memory channel layer."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from chat.events.store import EventStore, LiveState, Opening, live_change
from chat.models import Room


@dataclass
class _RoomLog:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded: bool = False
    last_seq: int = 0  # the room's head: the last seq handed out (or reserved at load)
    reserved: int = 0  # seqs up to here are reserved in the database for this process
    events: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)


# Process-wide mirror of each room's head, for the JSON views' worker threads.
_heads: dict[int, int] = {}


class MemoryEventStore(EventStore):
    """Seqs from blocks reserved in the database (``Room.seq_reserved``), so a restarted
    process continues above every seq its predecessor could have used; the log and the
    live view in memory."""

    def __init__(self) -> None:
        self._rooms: dict[int, _RoomLog] = {}
        self._live: dict[str, tuple[list[str], str]] = {}

    def _log(self, room_id: int) -> _RoomLog:
        log = self._rooms.get(room_id)
        if log is None:
            log = self._rooms[room_id] = _RoomLog()
        return log

    async def _load(self, room_id: int, log: _RoomLog) -> None:
        if not log.loaded:
            reserved = await database_sync_to_async(_read_reserved)(room_id)
            log.last_seq = log.reserved = reserved
            log.loaded = True
            _heads[room_id] = reserved

    async def append(
        self,
        room_id: int,
        body: Mapping[str, Any],
        *,
        key: str,
        live: LiveState | None = None,
        opening: Opening | None = None,
    ) -> dict[str, Any]:
        # In process, an append cannot half-succeed, so ``key`` needs no record here; and
        # the live view and the log are lost only with the process itself, so ``live`` and
        # ``opening`` are never needed.
        log = self._log(room_id)
        async with log.lock:
            await self._load(room_id, log)
            if log.last_seq >= log.reserved:
                block = settings.PARLEY_SEQ_BLOCK
                log.reserved = await database_sync_to_async(_reserve_block)(room_id, block)
                # Another loop of this process may have reserved past us: jump over it.
                log.last_seq = max(log.last_seq, log.reserved - block)
            log.last_seq += 1
            event = {**body, "seq": log.last_seq}
            _heads[room_id] = log.last_seq
            now = time.monotonic()
            log.events.append((now, event))
            _trim(log.events, now)
            self._apply_live(body)
            return event

    def _apply_live(self, body: Mapping[str, Any]) -> None:
        change = live_change(body)
        if change is None:
            return
        message_id, kind, value = change
        if kind == "init":
            self._live[message_id] = ([], value)
        elif kind == "end":
            self._live.pop(message_id, None)
        elif message_id in self._live:
            parts, status = self._live[message_id]
            if kind == "append":
                parts.append(value)
            else:
                self._live[message_id] = (parts, value)

    async def head(self, room_id: int) -> int:
        log = self._log(room_id)
        async with log.lock:
            await self._load(room_id, log)
            return log.last_seq

    async def since(self, room_id: int, after: int) -> list[dict[str, Any]] | None:
        log = self._log(room_id)
        async with log.lock:
            await self._load(room_id, log)
            if after == log.last_seq:
                return []
            if after > log.last_seq:
                return None  # a seq this server never issued: resynchronise
            if not log.events or log.events[0][1]["seq"] > after + 1:
                return None
            return [event for _, event in log.events if event["seq"] > after]

    async def live_view(
        self, room_id: int, message_ids: Iterable[str]
    ) -> tuple[int, dict[str, tuple[str, str]]]:
        log = self._log(room_id)
        async with log.lock:
            await self._load(room_id, log)
            view = {}
            for message_id in message_ids:
                live = self._live.get(message_id)
                if live is not None:
                    view[message_id] = ("".join(live[0]), live[1])
            return log.last_seq, view

    def head_sync(self, room: Room) -> int:
        return _heads.get(room.pk, room.seq_reserved)


def _trim(events: deque[tuple[float, dict[str, Any]]], now: float) -> None:
    keep_events = settings.PARLEY_LOG_MIN_EVENTS
    keep_seconds = settings.PARLEY_LOG_MIN_SECONDS
    while len(events) > settings.PARLEY_LOG_MAX_EVENTS or (
        len(events) > keep_events and now - events[0][0] > keep_seconds
    ):
        events.popleft()


def _read_reserved(room_id: int) -> int:
    return Room.objects.filter(pk=room_id).values_list("seq_reserved", flat=True).get()


def _reserve_block(room_id: int, size: int) -> int:
    with transaction.atomic():
        room = Room.objects.select_for_update().only("seq_reserved").get(pk=room_id)
        room.seq_reserved += size
        room.save(update_fields=["seq_reserved"])
        return room.seq_reserved
