"""The Redis event store: any number of processes share each room's seq, log and state.

Per room: ``parley:{r<id>}:seq`` (the head, INCR'd), ``parley:{r<id>}:log`` (a Stream
whose entry ids are ``<seq>-0``). Per live reply: ``parley:{r<id>}:m:<id>:text`` and
``:status``, under its room's hash tag like every key of the room (chat/redis.py), so each
script below touches one slot of a Redis Cluster. One Lua script assigns the seq, appends
to the log and updates the live reply in a single atomic step, so the log never has a gap
and a snapshot read in one step is exact at its seq.

Redis here keeps nothing on disk. When it restarts, the seq key is gone: it is seeded
again from ``Room.seq_reserved`` in the database, which every process raises above each
seq before publishing it, so seqs keep increasing across the restart (with a jump, and
clients resynchronise because the log is gone too: the new log opens with the room's
snapshot, so they replay it and every event after it, ``_APPEND``). The live copies of
running replies are gone too: the next event of each reply brings its owner's whole text
back, in the same step, and skips one seq so that members resynchronise again (``_APPEND``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import F
from django.db.models.functions import Greatest

from chat.events.store import EventStore, LiveState, Opening, StoreUnavailable, live_change
from chat.models import Room
from chat.redis import UNAVAILABLE, get_redis, get_sync_redis, room_key
from core import metrics

# Returns -1 when the seq key is missing (first use, or Redis restarted): the caller
# seeds it from the database and tries again. An emit retried after a lost reply (the
# connection dropped after the script ran) finds its key (KEYS[5]) and returns the same seq.
#
# The live copy of a reply (text, status) vanishes with a restart. When an event of a
# running reply finds it missing, the script returns -2 (ARGV[6] = 'ask') and the caller
# runs it again with the reply's whole visible state from its owner (ARGV[6] = 'seed'),
# which re-creates the copy in the same atomic step as the event. The script then skips
# one seq, with no log entry, before the event: a member whose snapshot since the restart
# showed the database's older copy sees a gap the log cannot fill and takes a new
# snapshot, which has the whole text. ARGV[6] = 'none': no owner to ask, leave it missing.
#
# A log emptied under a room that had events (a restart, or an idle room's keys expired)
# opens with a snapshot: the first append into it returns -3 (ARGV[9] = 'ask'), the caller
# appends the room's snapshot (ARGV[9] = 'opening': only into a still empty log, else -4:
# another process's went first), then its event (ARGV[9] = 'none'). So a member who
# resynchronises across the loss replays that snapshot and every event after it, the
# terminal `generation` of a reply that ended during the outage among them (``since``).
#
# On a Redis Cluster a master can die with writes its replica had not received yet: the
# promoted replica's seq is behind seqs already published. ARGV[10] is the highest seq this
# process was given for the room or handed to its members (``saw``); a head below it means
# those writes were lost. The stream
# must never repeat a seq, so the script moves the head back past it and skips one (members
# meet a gap the log cannot fill and take a snapshot), and a running reply's live copy,
# which may have lost deltas too, is re-created from its owner's as after a restart.
_APPEND = """
local eid = redis.call('GET', KEYS[5])
if eid then return tonumber(eid) end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local known = tonumber(ARGV[10])
local regressed = tonumber(redis.call('GET', KEYS[1])) < known
local empty = redis.call('XLEN', KEYS[2]) == 0 and tonumber(redis.call('GET', KEYS[1])) > 0
if ARGV[9] == 'opening' and not empty then return -4 end
if ARGV[9] == 'ask' and empty then return -3 end
local kind = ARGV[2]
local lost = false
if kind == 'append' or kind == 'status' or kind == 'end' then
  lost = redis.call('EXISTS', KEYS[3]) == 0 or redis.call('EXISTS', KEYS[4]) == 0
end
if regressed and (kind == 'append' or kind == 'status') then lost = true end
if lost and ARGV[6] == 'none' then lost = false end
if lost and kind ~= 'end' and ARGV[6] == 'ask' then return -2 end
local ttl = tonumber(ARGV[4])
if regressed then redis.call('SET', KEYS[1], known) end
if lost or regressed then redis.call('INCR', KEYS[1]) end
local seq = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], seq .. '-0', 'e', ARGV[1])
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[5], seq, 'EX', 120)
if kind == 'init' then
  redis.call('SET', KEYS[3], '', 'EX', ttl)
  redis.call('SET', KEYS[4], ARGV[3], 'EX', ttl)
elseif kind == 'end' then
  redis.call('DEL', KEYS[3], KEYS[4])
elseif lost then
  redis.call('SET', KEYS[3], ARGV[7], 'EX', ttl)
  redis.call('SET', KEYS[4], ARGV[8], 'EX', ttl)
elseif kind == 'append' then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('APPEND', KEYS[3], ARGV[3])
    redis.call('EXPIRE', KEYS[3], ttl)
  end
elseif kind == 'status' then
  if redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('SET', KEYS[4], ARGV[3], 'EX', ttl)
    redis.call('EXPIRE', KEYS[3], ttl)
  end
end
return seq
"""

# KEYS: seq, then text/status pairs. Returns {seq or -1, text1, status1, ...}.
_LIVE_VIEW = """
local seq = redis.call('GET', KEYS[1])
if not seq then return {-1} end
local out = {tonumber(seq)}
for i = 2, #KEYS, 2 do
  out[#out + 1] = redis.call('GET', KEYS[i]) or false
  out[#out + 1] = redis.call('GET', KEYS[i + 1]) or false
end
return out
"""


# KEYS: seq, log; ARGV[1]: the first entry id wanted. Returns {head or false, entries}:
# the head and the log after it read in one step (a script, not MULTI: a cluster client
# runs no transaction, and a script on one slot is atomic in both modes).
_SINCE = """
local head = redis.call('GET', KEYS[1])
return {head, redis.call('XRANGE', KEYS[2], ARGV[1], '+')}
"""


def _seq_key(room_id: int) -> str:
    return room_key(room_id, "seq")


def _log_key(room_id: int) -> str:
    return room_key(room_id, "log")


def _text_key(room_id: int, message_id: str) -> str:
    return room_key(room_id, "m", message_id, "text")


def _status_key(room_id: int, message_id: str) -> str:
    return room_key(room_id, "m", message_id, "status")


class RedisEventStore(EventStore):
    answers_can_be_lost = True

    def __init__(self) -> None:
        # The highest seq_reserved this process knows the database holds, per room.
        self._floors: dict[int, int] = {}
        # The highest seq this process was given or handed to its members, per room: a
        # head found below it was lost in a failover (``_APPEND``).
        self._known: dict[int, int] = {}

    def saw(self, room_id: int, seq: int) -> None:
        if seq > self._known.get(room_id, 0):
            self._known[room_id] = seq

    def forget(self, room_id: int) -> None:
        # Only a cache: the next append raises the database's floor again (one write).
        self._floors.pop(room_id, None)
        self._known.pop(room_id, None)

    async def append(
        self,
        room_id: int,
        body: Mapping[str, Any],
        *,
        key: str,
        live: LiveState | None = None,
        opening: Opening | None = None,
    ) -> dict[str, Any]:
        seq = await self._append(
            room_id, body, key=key, live=live, first="ask" if opening else "none"
        )
        if seq == -3 and opening is not None:
            # The log was emptied: it opens with the room's snapshot, then this event.
            snapshot = await opening()
            await self._append(room_id, snapshot, key=uuid.uuid4().hex, live=None, first="opening")
            seq = await self._append(room_id, body, key=key, live=live, first="none")
        if seq < 0:  # pragma: no cover - seeded, and opened, just above
            raise StoreUnavailable("the room's seq could not be seeded")
        self._known[room_id] = max(self._known.get(room_id, 0), seq)
        if seq > self._floors.get(room_id, 0):
            # Keep the database's floor above every seq that goes out (see module doc).
            self._floors[room_id] = await database_sync_to_async(_raise_floor)(
                room_id, seq + settings.PARLEY_SEQ_BLOCK
            )
        return {**body, "seq": seq}

    async def _append(
        self,
        room_id: int,
        body: Mapping[str, Any],
        *,
        key: str,
        live: LiveState | None,
        first: str,
    ) -> int:
        """Run the append script; the seq, or -3 (the log needs its opening snapshot) or
        -4 (an opening snapshot that another process's went before)."""
        payload = json.dumps(body, separators=(",", ":"))
        change = live_change(body)
        message_id, kind, value = change if change else ("-", "none", "")
        keys = [
            _seq_key(room_id),
            _log_key(room_id),
            _text_key(room_id, message_id),
            _status_key(room_id, message_id),
            room_key(room_id, "eid", key),
        ]
        ttl, maxlen = settings.PARLEY_REDIS_TTL, settings.PARLEY_LOG_MAX_EVENTS
        known = self._known.get(room_id, 0)
        args = [payload, kind, value, ttl, maxlen, "ask" if live else "none", "", "", first, known]
        try:
            client = get_redis()
            seq = int(await client.eval(_APPEND, len(keys), *keys, *args))
            if seq == -1:
                await self._seed(room_id)
                seq = int(await client.eval(_APPEND, len(keys), *keys, *args))
            if seq == -2 and live is not None:
                # The store lost the reply's live copy: re-create it from the owner's.
                text, status = live()
                args[5:8] = ["seed", text, status]
                seq = int(await client.eval(_APPEND, len(keys), *keys, *args))
        except UNAVAILABLE as exc:
            metrics.store_error("append")
            raise StoreUnavailable(str(exc)) from exc
        metrics.store_ok()
        return seq

    async def _seed(self, room_id: int) -> int:
        floor = await database_sync_to_async(_read_floor)(room_id)
        self._floors[room_id] = max(self._floors.get(room_id, 0), floor)
        await get_redis().set(_seq_key(room_id), floor, nx=True, ex=settings.PARLEY_REDIS_TTL)
        return floor

    async def head(self, room_id: int) -> int:
        try:
            value = await get_redis().get(_seq_key(room_id))
            if value is None:
                await self._seed(room_id)
                value = await get_redis().get(_seq_key(room_id))
        except UNAVAILABLE as exc:
            metrics.store_error("head")
            raise StoreUnavailable(str(exc)) from exc
        metrics.store_ok()
        return int(value or 0)

    async def since(self, room_id: int, after: int) -> list[dict[str, Any]] | None:
        try:
            keys = [_seq_key(room_id), _log_key(room_id)]
            head_raw, entries = await get_redis().eval(_SINCE, len(keys), *keys, f"{after + 1}-0")
        except UNAVAILABLE as exc:
            metrics.store_error("since")
            raise StoreUnavailable(str(exc)) from exc
        head = int(head_raw) if head_raw is not None else None
        if head is None:
            return None if after else []
        if after == head:
            return []
        if after > head or not entries:
            return None
        events = [_decode(entry_id, fields) for entry_id, fields in entries]
        if events[0]["seq"] == after + 1:
            return events
        if events[0]["type"] == "snapshot":
            # Lost in a restart past ``after``, and the log opens with a snapshot: it,
            # and what follows it without a gap (a seq skipped since for a re-created live
            # copy ends the run; the hub then adds a fresh snapshot).
            run = events[:1]
            for event in events[1:]:
                if event["seq"] != run[-1]["seq"] + 1:
                    break
                run.append(event)
            return run
        return None  # the log was trimmed past ``after``

    async def live_view(
        self, room_id: int, message_ids: Iterable[str]
    ) -> tuple[int, dict[str, tuple[str, str]]]:
        ids = list(message_ids)
        keys = [_seq_key(room_id)]
        for message_id in ids:
            keys += [_text_key(room_id, message_id), _status_key(room_id, message_id)]
        try:
            out = await get_redis().eval(_LIVE_VIEW, len(keys), *keys)
            if int(out[0]) < 0:
                await self._seed(room_id)
                out = await get_redis().eval(_LIVE_VIEW, len(keys), *keys)
        except UNAVAILABLE as exc:
            metrics.store_error("live_view")
            raise StoreUnavailable(str(exc)) from exc
        view = {}
        for index, message_id in enumerate(ids):
            text, status = out[1 + 2 * index], out[2 + 2 * index]
            if text is not None and status is not None:
                view[message_id] = (text.decode(), status.decode())
        return int(out[0]), view

    def head_sync(self, room: Room) -> int:
        try:
            value = get_sync_redis().get(_seq_key(room.pk))
        except UNAVAILABLE:
            value = None
        return int(value) if value is not None else room.seq_reserved


def _decode(entry_id: bytes, fields: list[bytes]) -> dict[str, Any]:
    """A log entry as XRANGE returns it to a script: its id and [field, value, ...]."""
    pairs = dict(zip(fields[::2], fields[1::2], strict=True))
    event: dict[str, Any] = json.loads(pairs[b"e"])
    event["seq"] = int(entry_id.split(b"-", 1)[0])
    return event


def _read_floor(room_id: int) -> int:
    return Room.objects.filter(pk=room_id).values_list("seq_reserved", flat=True).get()


def _raise_floor(room_id: int, at_least: int) -> int:
    Room.objects.filter(pk=room_id).update(seq_reserved=Greatest(F("seq_reserved"), at_least))
    return _read_floor(room_id)
