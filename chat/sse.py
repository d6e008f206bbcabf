"""Server-sent events: the room's event stream without a WebSocket (PROTOCOL.md section 5).

The stream is an async generator served by Django under ASGI: no thread per listener, no
database query per event. It subscribes to the room's channel-layer group like a
WebSocket connection and hands durable events to the same ``RoomFeed``, so ordering,
gap filling and replay behave identically. When the client goes away Django cancels the
generator; its ``finally`` leaves the group and the room's presence.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.http import require_GET

from accounts.connections import connection_slot_take
from chat import selectors
from chat.errors import BadRequest
from chat.events import get_hub, group_name, room_live_emit
from chat.feed import RoomFeed
from chat.http import async_api
from chat.presence import get_presence
from chat.replies import get_manager
from chat.serializers import room_to_dict

# Browsers reconnect this long after a dropped stream (the SSE "retry" field).
RETRY_MS = 3000


def format_event(event: dict[str, Any]) -> str:
    """One SSE event: ``id`` for durable events, ``event`` type, one-line JSON ``data``."""
    lines = []
    if "seq" in event:
        lines.append(f"id: {event['seq']}")
    lines.append(f"event: {event['type']}")
    lines.append("data: " + json.dumps(event, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def _resume_point(request: HttpRequest) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("after")
    if raw is None or raw == "":
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadRequest("Last-Event-ID / after must be a non-negative integer")
    return int(raw)


@require_GET
@async_api
async def room_events(request: HttpRequest, user: User, slug: str) -> HttpResponseBase:
    room = await database_sync_to_async(selectors.room_get_for_member)(slug=slug, user=user)
    after = _resume_point(request)
    audio = request.GET.get("audio") == "1"
    await get_manager().ensure_started()

    async def stream() -> AsyncIterator[str]:
        layer = get_channel_layer()
        assert layer is not None
        channel = await layer.new_channel("sse.")
        group = group_name(room.pk)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        feed = RoomFeed(room.pk, queue.put)
        username = user.get_username()
        presence = get_presence()
        await layer.group_add(group, channel)
        counted = False
        try:
            yield f"retry: {RETRY_MS}\n\n"
            head = await get_hub().head(room.pk)
            counted = True
            joined = await presence.join(room.pk, username)
            hello = {
                "type": "hello",
                "room": room_to_dict(room, head=head),
                "you": username,
                "head": head,
                "online": await presence.online(room.pk),
            }
            yield format_event(hello)
            await feed.start(head=head, after=after)
            if joined:
                await _broadcast_presence(room.pk)
            loop = asyncio.get_running_loop()
            next_ping = loop.time() + settings.PARLEY_SSE_PING_INTERVAL
            next_check = loop.time() + settings.PARLEY_RESYNC_INTERVAL
            while True:
                while not queue.empty():
                    yield format_event(queue.get_nowait())
                now = loop.time()
                if now >= next_ping:
                    yield ": ping\n\n"
                    next_ping = now + settings.PARLEY_SSE_PING_INTERVAL
                if now >= next_check:
                    await feed.check_head()
                    next_check = now + settings.PARLEY_RESYNC_INTERVAL
                    continue
                try:
                    message = await asyncio.wait_for(
                        layer.receive(channel), timeout=min(next_ping, next_check) - now
                    )
                except TimeoutError:
                    continue
                kind = message.get("type")
                if kind == "room.event":
                    await feed.deliver(message["event"])
                elif kind == "room.live":
                    await queue.put(message["event"])
                elif kind == "room.audio" and audio:
                    await queue.put(_audio_event(message))
        finally:
            with contextlib.suppress(Exception):
                await layer.group_discard(group, channel)
            if counted:
                with contextlib.suppress(Exception):
                    if await presence.leave(room.pk, username):
                        await _broadcast_presence(room.pk)

    slot = connection_slot_take(user_id=user.pk)  # 429 past PARLEY_MAX_CONNECTIONS_PER_USER
    response = StreamingHttpResponse(slot.hold(stream()), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # nginx: pass each event on at once instead of buffering the response.
    response["X-Accel-Buffering"] = "no"
    return response


def _audio_event(message: dict[str, Any]) -> dict[str, Any]:
    """Audio on SSE: JSON events as they are; a binary frame as a base64 ``chunk``."""
    if "frame" not in message:
        event: dict[str, Any] = message["event"]
        return event
    frame: bytes = message["frame"]
    stream, index = struct.unpack(">II", frame[:8])
    return {
        "type": "audio",
        "state": "chunk",
        "stream": stream,
        "index": index,
        "data": base64.b64encode(frame[8:]).decode("ascii"),
    }


async def _broadcast_presence(room_id: int) -> None:
    await room_live_emit(
        room_id=room_id,
        event={"type": "presence", "online": await get_presence().online(room_id)},
    )
