"""The room WebSocket (PROTOCOL.md section 5). Thin: parse, check, call a service.

Room events do not come through the channel layer to each connection: the process's
``RoomChannel`` (chat/events/delivery.py) receives each event once and writes it, encoded
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
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth.models import User

from accounts.auth import token_id_of
from chat import redis as redis_conn
from chat.errors import (
    BadJson,
    BadRequest,
    Forbidden,
    NotFound,
    ParleyError,
    RateLimited,
    SpeechTooLong,
)
from chat.events import StoreUnavailable, room_live_emit
from chat.events.delivery import Subscription, WebSocketSubscriber, admit
from chat.events.frames import Frame
from chat.models import Room
from chat.ratelimit import send_allow
from chat.replies import get_manager, message_send, reply_control, speech_interrupt
from voice.conversation import (
    PCM_FORMAT,
    Playback,
    Utterance,
    barge_in,
    parse_played,
    parse_sample_rate,
    speech_send,
)

logger = logging.getLogger(__name__)

# Close codes (PROTOCOL.md section 5).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_MEMBER = 4403
CLOSE_NO_ROOM = 4404
CLOSE_TOO_BIG = 1009
# The store is unreachable (Redis restarting): "try again later" (RFC 6455 section 7.4.1).
CLOSE_TRY_AGAIN = 1013

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
    # The utterance being spoken (between `speech start` and `end`), and how far this
    # connection has played each reply's audio (`played` reports).
    utterance: Utterance | None = None
    playback: Playback | None = None  # made at the first report: most members never play

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
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        slug = self.scope["url_route"]["kwargs"]["slug"]
        try:
            self.room = await admit(slug=slug, user=user)
        except NotFound:
            await self.close(code=CLOSE_NO_ROOM)
            return
        except Forbidden:
            await self.close(code=CLOSE_NOT_MEMBER)
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
            await get_manager().ensure_started()
            hello = await subscription.open()
        except (StoreUnavailable, *redis_conn.UNAVAILABLE):
            await subscription.close()
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        self.subscription = subscription
        await self._send_json(hello)
        if after_error:
            await self._error("bad_request", after_error, None)
        try:
            await subscription.start()
        except StoreUnavailable:
            await self.close(code=CLOSE_TRY_AGAIN)

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
                if self.utterance is None:
                    raise BadRequest("binary frames are speech audio: send speech start first")
                try:
                    self.utterance.add(bytes_data or b"")
                except SpeechTooLong:
                    request_id, self.utterance = self.utterance.request_id, None
                    raise
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
            logger.exception("room %s: action failed", self.room.pk)
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
        if action != "stop":
            await reply_control(user=self.user, message_id=message_id, action=action)
            return
        # A stop keeps what this member heard of the reply (their `played` reports), and
        # also cuts off a reply whose text has ended while its audio still plays.
        stream = _stream_of(message_id)
        heard_ms = None
        if stream is not None and self.playback is not None:
            heard_ms = self.playback.heard_ms(stream)
        if heard_ms is None:
            await reply_control(user=self.user, message_id=message_id, action=action)
            return
        await speech_interrupt(
            user=self.user, message_id=message_id, heard_ms=heard_ms, room_id=self.room.pk
        )

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
        await room_live_emit(
            room_id=self.room.pk,
            event={"type": "typing", "username": self.user.get_username()},
            exclude=self.sub.id,
        )

    async def action_audio(self, frame: dict[str, Any], request_id: object) -> None:
        enabled = frame.get("enabled")
        if not isinstance(enabled, bool):
            raise BadRequest("enabled must be true or false")
        if self.sub.room is not None:
            self.sub.room.set_audio(self.sub, enabled)

    async def action_played(self, frame: dict[str, Any], request_id: object) -> None:
        stream, ms = parse_played(frame)
        if self.playback is None:
            self.playback = Playback()
        self.playback.report(stream, ms)

    async def action_speech(self, frame: dict[str, Any], request_id: object) -> None:
        state = frame.get("state")
        if state == "start":
            if frame.get("format", PCM_FORMAT) != PCM_FORMAT:
                raise BadRequest(f"format must be {PCM_FORMAT}")
            sample_rate = parse_sample_rate(frame.get("sample_rate", 16000))
            await send_allow(user_id=self.user.pk)  # one utterance takes one send's turn
            self.utterance = Utterance(sample_rate=sample_rate, request_id=request_id)
            await self._send_json({"type": "speech", "state": "listening", "id": request_id})
            # Speaking over a reply that is being spoken stops it (barge-in).
            await barge_in(user=self.user, room=self.room, playback=self.playback or Playback())
        elif state == "end":
            utterance, self.utterance = self.utterance, None
            if utterance is None:
                raise BadRequest("no speech was started")
            message, _reply = await speech_send(
                user=self.user,
                room=self.room,
                pcm=bytes(utterance.pcm),
                sample_rate=utterance.sample_rate,
                client_id=frame.get("client_id"),
                ask_ai=frame.get("ask_ai"),
                voice=frame.get("voice"),
                rate_checked=True,
            )
            await self._send_json(
                {
                    "type": "speech",
                    "state": "transcribed",
                    "id": request_id,
                    "text": message["text"],
                    "message_id": message["id"],
                }
            )
        elif state == "cancel":
            self.utterance = None
            await self._send_json({"type": "speech", "state": "cancelled", "id": request_id})
        else:
            raise BadRequest("state must be start, end or cancel")

    async def action_ping(self, frame: dict[str, Any], request_id: object) -> None:
        await self._send_json({"type": "pong", "id": request_id})

    # --- sending ---

    async def _send_json(self, event: dict[str, Any]) -> None:
        # The same write path as room events (a prepared frame, written at once).
        await self.base_send(Frame(event).ws)

    async def _error(self, code: str, detail: str, request_id: object) -> None:
        await self._send_json({"type": "error", "code": code, "detail": detail, "id": request_id})


def _stream_of(message_id: str | int) -> int | None:
    """The audio stream id of reply ``message_id`` (voice/speech.py), if it is one."""
    if isinstance(message_id, str):
        if not (message_id.isascii() and message_id.isdigit() and len(message_id) <= 18):
            return None
        message_id = int(message_id)
    return message_id & 0xFFFFFFFF if message_id > 0 else None


def _parse_after(query_string: bytes) -> tuple[int | None, str | None]:
    values = parse_qs(query_string.decode("latin-1")).get("after")
    if not values:
        return None, None
    raw = values[-1]
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw), None
    return None, "after must be a non-negative integer; going on live"
