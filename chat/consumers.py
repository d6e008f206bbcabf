"""The room WebSocket (PROTOCOL.md section 5). Thin: parse, check, call a service.

Durable events pass through a ``RoomFeed`` (chat/feed.py), which keeps them in order with
no gap and no duplicate; the SSE view uses the same feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth.models import User

from chat import selectors
from chat.errors import BadJson, BadRequest, NotFound, ParleyError, RateLimited
from chat.events import get_hub, group_name, room_live_emit
from chat.feed import RoomFeed
from chat.models import Room
from chat.presence import get_presence
from chat.replies import get_manager, message_send, reply_control
from chat.serializers import room_to_dict

logger = logging.getLogger(__name__)

# Close codes (PROTOCOL.md section 5).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_MEMBER = 4403
CLOSE_NO_ROOM = 4404
CLOSE_TOO_BIG = 1009

# A typing indicator lasts a few seconds on screen; relaying more than one per second
# per connection adds nothing but traffic.
TYPING_MIN_INTERVAL = 1.0


class RoomConsumer(AsyncWebsocketConsumer):
    user: User
    room: Room
    feed: RoomFeed
    audio: bool

    async def connect(self) -> None:
        self.room_id: int | None = None
        self.audio = False
        self.last_typing = 0.0
        user = self.scope.get("user")
        # Accept first so the client can read the close code (a close before accept is
        # an HTTP 403 to the browser, with no code).
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        slug = self.scope["url_route"]["kwargs"]["slug"]
        try:
            self.room = await database_sync_to_async(selectors.room_get)(slug=slug, user=user)
        except NotFound:
            await self.close(code=CLOSE_NO_ROOM)
            return
        if not await database_sync_to_async(selectors.is_member)(room=self.room, user=user):
            await self.close(code=CLOSE_NOT_MEMBER)
            return
        after, after_error = _parse_after(self.scope.get("query_string", b""))

        await get_manager().ensure_started()
        self.room_id = self.room.pk
        self.feed = RoomFeed(self.room.pk, self._send_json)
        # Subscribe before reading the head: whatever happens after it arrives live, and
        # anything both replayed and live is sent once (chat/feed.py).
        await self.channel_layer.group_add(group_name(self.room.pk), self.channel_name)
        head = await get_hub().head(self.room.pk)
        presence = get_presence()
        came_online = await presence.join(self.room.pk, self.user.get_username())
        await self._send_json(
            {
                "type": "hello",
                "room": room_to_dict(self.room, head=head),
                "you": self.user.get_username(),
                "head": head,
                "online": await presence.online(self.room.pk),
            }
        )
        if after_error:
            await self._error("bad_request", after_error, None)
        await self.feed.start(head=head, after=after)
        self.resync = asyncio.create_task(self._watch_head())
        if came_online:
            await self._broadcast_presence()

    async def disconnect(self, code: int) -> None:
        if self.room_id is None:
            return
        self.resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.resync
        await self.channel_layer.group_discard(group_name(self.room_id), self.channel_name)
        if await get_presence().leave(self.room_id, self.user.get_username()):
            await self._broadcast_presence()

    async def _watch_head(self) -> None:
        while True:
            await asyncio.sleep(settings.PARLEY_RESYNC_INTERVAL)
            await self.feed.check_head()

    # --- events from the room ---

    async def room_event(self, message: dict[str, Any]) -> None:
        await self.feed.deliver(message["event"])

    async def room_audio(self, message: dict[str, Any]) -> None:
        if not self.audio:
            return
        if "frame" in message:
            await self.send(bytes_data=message["frame"])
        else:
            await self._send_json(message["event"])

    async def room_live(self, message: dict[str, Any]) -> None:
        if message.get("exclude") == self.channel_name:
            return
        await self._send_json(message["event"])

    async def _broadcast_presence(self) -> None:
        assert self.room_id is not None
        await room_live_emit(
            room_id=self.room_id,
            event={"type": "presence", "online": await get_presence().online(self.room_id)},
        )

    # --- frames from the client ---

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.room_id is None:
            return
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.PARLEY_MAX_FRAME_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        request_id = None
        try:
            if text_data is None:
                raise BadRequest("frames must be JSON text, not binary")
            try:
                frame = json.loads(text_data)
            except ValueError as exc:
                raise BadJson("frame is not valid JSON") from exc
            if not isinstance(frame, dict):
                raise BadRequest("frame must be a JSON object")
            request_id = frame.get("id")
            if request_id is not None and not isinstance(request_id, str | int | float):
                request_id = None
                raise BadRequest("id must be a string or a number")
            action = frame.get("action")
            if not isinstance(action, str):
                raise BadRequest("action is required")
            handler = getattr(self, f"action_{action}", None) if action.isidentifier() else None
            if handler is None:
                await self._error("unknown_action", f"unknown action {action[:40]!r}", request_id)
                return
            await handler(frame, request_id)
        except RateLimited as exc:
            await self._send_json(
                {
                    "type": "error",
                    "code": exc.code,
                    "detail": exc.detail,
                    "id": request_id,
                    "retry_after": round(exc.retry_after, 3),
                }
            )
        except ParleyError as exc:
            await self._error(exc.code, exc.detail, request_id)
        except Exception:
            logger.exception("room %s: action failed", self.room_id)
            await self._error("internal", "something went wrong; try again", request_id)

    async def action_send(self, frame: dict[str, Any], request_id: object) -> None:
        await message_send(
            user=self.user,
            room=self.room,
            text=frame.get("text"),
            client_id=frame.get("client_id"),
            ask_ai=frame.get("ask_ai"),
            voice=frame.get("voice"),
        )

    async def _control(self, frame: dict[str, Any], action: str) -> None:
        message_id = frame.get("message_id")
        if not isinstance(message_id, str | int) or isinstance(message_id, bool):
            raise BadRequest("message_id is required")
        await reply_control(user=self.user, message_id=message_id, action=action)

    async def action_pause(self, frame: dict[str, Any], request_id: object) -> None:
        await self._control(frame, "pause")

    async def action_resume(self, frame: dict[str, Any], request_id: object) -> None:
        await self._control(frame, "resume")

    async def action_stop(self, frame: dict[str, Any], request_id: object) -> None:
        await self._control(frame, "stop")

    async def action_typing(self, frame: dict[str, Any], request_id: object) -> None:
        now = time.monotonic()
        if now - self.last_typing < TYPING_MIN_INTERVAL:
            return
        self.last_typing = now
        assert self.room_id is not None
        await room_live_emit(
            room_id=self.room_id,
            event={"type": "typing", "username": self.user.get_username()},
            exclude=self.channel_name,
        )

    async def action_audio(self, frame: dict[str, Any], request_id: object) -> None:
        enabled = frame.get("enabled")
        if not isinstance(enabled, bool):
            raise BadRequest("enabled must be true or false")
        self.audio = enabled

    async def action_ping(self, frame: dict[str, Any], request_id: object) -> None:
        await self._send_json({"type": "pong", "id": request_id})

    # --- sending ---

    async def _send_json(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(event, separators=(",", ":")))

    async def _error(self, code: str, detail: str, request_id: object) -> None:
        await self._send_json({"type": "error", "code": code, "detail": detail, "id": request_id})


def _parse_after(query_string: bytes) -> tuple[int | None, str | None]:
    values = parse_qs(query_string.decode("latin-1")).get("after")
    if not values:
        return None, None
    raw = values[-1]
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw), None
    return None, "after must be a non-negative integer; going on live"
