"""The room WebSocket (docs/protocol.md "WebSocket"). Thin: parse, check, call a service.

Room events do not come through the channel layer to each connection: the process's
``RoomChannel`` (chat/events/delivery/channel.py) receives each event once and writes it, encoded
once, to every local subscriber. This consumer opens and closes its ``Subscription`` and
handles the client's frames; the SSE view uses the same ``Subscription``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth.models import User

from accounts.auth import token_id_of
from chat import lifecycle
from chat import redis as redis_conn
from chat.errors import BadJson, BadRequest, Forbidden, NotFound, ParleyError, RateLimited
from chat.events import StoreUnavailable, room_live_emit
from chat.events.delivery import Subscription, WebSocketSubscriber, admit
from chat.events.frames import Frame
from chat.extensions import EXTENSIONS
from chat.models import Room
from chat.replies import message_send, reply_control, reply_regenerate, version_pick
from chat.unread import membership_read, parse_seq
from core import contract, metrics

logger = logging.getLogger(__name__)

# Close codes (docs/protocol.md "Close codes"; their one home is core/contract.py).
CLOSE_UNAUTHENTICATED = contract.UNAUTHENTICATED.code
CLOSE_NOT_MEMBER = contract.NOT_MEMBER.code
CLOSE_NO_ROOM = contract.NO_ROOM.code
CLOSE_TOO_BIG = contract.TOO_BIG.code
# The store is unreachable (Redis restarting): "try again later" (RFC 6455 section 7.4.1).
CLOSE_TRY_AGAIN = contract.TRY_AGAIN.code

# A typing indicator lasts a few seconds on screen; relaying more than one per second
# per connection adds nothing but traffic.
TYPING_MIN_INTERVAL = 1.0


class RoomConsumer(AsyncWebsocketConsumer):
    # No channel-layer channel per connection: an idle member costs its socket and its
    # pings, nothing else (its room events arrive through the room's RoomChannel).
    channel_layer_alias = "parley.no-channel-per-connection"

    user: User
    room: Room
    subscription: Subscription | None = None
    sub: WebSocketSubscriber
    # State of the extensions' actions (chat/extensions.py), made when first needed: an
    # idle member, most of a crowd, carries none.
    _state: dict[str, Any] | None = None

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            self._state = {}
        return self._state

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' dispatch makes a thread-pool hop (aclose_old_connections) before every
        # handler. Every ORM call here runs through database_sync_to_async, which closes
        # stale connections in its own thread, so the hop only costs (STYLE.md hot paths).
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.last_typing = 0.0
        user = self.scope.get("user")
        # Accept first so the client can read the close code (a close before accept is
        # an HTTP 403 to the browser, with no code).
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        slug = self.scope["url_route"]["kwargs"]["slug"]
        try:
            self.room = await admit(slug=slug, user=user)
        except NotFound:
            await self.refuse(CLOSE_NO_ROOM)
            return
        except Forbidden:
            await self.refuse(CLOSE_NOT_MEMBER)
            return
        after, after_error = _parse_after(self.scope.get("query_string", b""))
        self.sub = WebSocketSubscriber(
            self.base_send,
            user_id=user.pk,
            username=user.get_username(),
            token_id=token_id_of(user),
        )
        subscription = Subscription(room=self.room, sub=self.sub, after=after)
        try:
            hello = await subscription.open()
        except (StoreUnavailable, *redis_conn.UNAVAILABLE):
            await subscription.close()
            await self.refuse(CLOSE_TRY_AGAIN)
            return
        self.subscription = subscription
        await self.send_json(hello)
        metrics.handshake("websocket")
        if after_error:
            await self.error("bad_request", after_error, None)
        try:
            await subscription.start()
        except StoreUnavailable:
            await self.close(code=CLOSE_TRY_AGAIN)

    async def refuse(self, code: int) -> None:
        """End the handshake with ``code`` (after accept, so the client can read it)."""
        metrics.handshake("websocket", code)
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        if self.subscription is not None:
            await self.subscription.close()

    # --- frames from the client ---

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.subscription is None or self.sub.ended:
            return  # not admitted, or cut off (revoked, too slow): nothing more is done
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.PARLEY_MAX_FRAME_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        request_id = None
        try:
            if text_data is None:
                if EXTENSIONS.binary is None:
                    raise BadRequest("binary frames are not accepted here")
                await EXTENSIONS.binary(self, bytes_data or b"")
                return
            try:
                frame = json.loads(text_data)
            except (ValueError, RecursionError) as exc:  # nested past the parser's stack
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
            if handler is not None:
                await handler(frame, request_id)
                return
            extension = EXTENSIONS.actions.get(action)
            if extension is None:
                await self.error("unknown_action", f"unknown action {action[:40]!r}", request_id)
                return
            await extension(self, frame, request_id)
        except RateLimited as exc:
            await self.send_json(
                {
                    "type": "error",
                    "code": exc.code,
                    "detail": exc.detail,
                    "id": request_id,
                    "retry_after": round(exc.retry_after, 3),
                }
            )
        except ParleyError as exc:
            await self.error(exc.code, exc.detail, request_id)
        except Exception:
            logger.exception("room %s: action failed", self.room.pk)
            await self.error("internal", "something went wrong; try again", request_id)

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
        if action != "stop":
            await reply_control(user=self.user, message_id=message_id, action=action)
            return
        # A stop keeps what this member heard of the reply (voice: their `played`
        # reports), and also cuts off a reply whose text has ended while its audio plays.
        heard_ms = None
        if EXTENSIONS.heard_ms is not None:
            heard_ms = EXTENSIONS.heard_ms(self, message_id)
        if heard_ms is None or EXTENSIONS.stop_heard is None:
            await reply_control(user=self.user, message_id=message_id, action=action)
            return
        await EXTENSIONS.stop_heard(
            user=self.user, message_id=message_id, heard_ms=heard_ms, room_id=self.room.pk
        )

    async def action_pause(self, frame: dict[str, Any], request_id: object) -> None:
        await self._control(frame, "pause")

    async def action_resume(self, frame: dict[str, Any], request_id: object) -> None:
        await self._control(frame, "resume")

    async def action_stop(self, frame: dict[str, Any], request_id: object) -> None:
        await self._control(frame, "stop")

    # --- versions of a reply (docs/protocol.md "Versions of a reply") ---

    async def action_regenerate(self, frame: dict[str, Any], request_id: object) -> None:
        await reply_regenerate(user=self.user, message_id=_message_id(frame))

    async def action_pick_version(self, frame: dict[str, Any], request_id: object) -> None:
        await version_pick(user=self.user, message_id=_message_id(frame))

    # Edit, delete, rate (issue 19): answered as `send` is, by the room's event (`edit`,
    # `delete`, `rating`) or an `error`.

    async def action_edit(self, frame: dict[str, Any], request_id: object) -> None:
        await lifecycle.message_edit(
            user=self.user,
            message_id=_message_id(frame),
            text=frame.get("text"),
            rerun=frame.get("rerun", False),
            answer=False,
        )

    async def action_delete(self, frame: dict[str, Any], request_id: object) -> None:
        await lifecycle.message_delete(user=self.user, message_id=_message_id(frame), answer=False)

    async def action_rate(self, frame: dict[str, Any], request_id: object) -> None:
        await lifecycle.message_rate(
            user=self.user,
            message_id=_message_id(frame),
            value=frame.get("value"),
            comment=frame.get("comment"),
            answer=False,
        )

    async def action_typing(self, frame: dict[str, Any], request_id: object) -> None:
        now = time.monotonic()
        if now - self.last_typing < TYPING_MIN_INTERVAL:
            return
        self.last_typing = now
        await room_live_emit(
            room_id=self.room.pk,
            event={"type": contract.LIVE_TYPING, "username": self.user.get_username()},
            exclude=self.sub.id,
        )

    async def action_audio(self, frame: dict[str, Any], request_id: object) -> None:
        enabled = frame.get("enabled")
        if not isinstance(enabled, bool):
            raise BadRequest("enabled must be true or false")
        if self.subscription is not None:
            self.subscription.set_audio(enabled)

    async def action_read(self, frame: dict[str, Any], request_id: object) -> None:
        """Extension: the member has seen the room up to ``seq`` (the page sends it,
        debounced, while the room's end is on screen). No answer; an error if bad."""
        seq = parse_seq(frame.get("seq"))
        await database_sync_to_async(membership_read)(user=self.user, room=self.room, seq=seq)

    async def action_ping(self, frame: dict[str, Any], request_id: object) -> None:
        await self.send_json({"type": "pong", "id": request_id})

    # --- sending ---

    async def send_json(self, event: dict[str, Any]) -> None:
        # The same write path as room events (a prepared frame, written at once).
        await self.base_send(Frame(event).ws)

    async def error(self, code: str, detail: str, request_id: object) -> None:
        await self.send_json({"type": "error", "code": code, "detail": detail, "id": request_id})


def _message_id(frame: dict[str, Any]) -> str | int:
    message_id = frame.get("message_id")
    if not isinstance(message_id, str | int) or isinstance(message_id, bool):
        raise BadRequest("message_id is required")
    return message_id


def _parse_after(query_string: bytes) -> tuple[int | None, str | None]:
    values = parse_qs(query_string.decode("latin-1")).get("after")
    if not values:
        return None, None
    raw = values[-1]
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw), None
    return None, "after must be a non-negative integer; going on live"
