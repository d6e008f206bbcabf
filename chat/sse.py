"""Server-sent events: the room's event stream without a WebSocket (docs/protocol.md
"Server-sent events").

The stream is an async generator served by Django under ASGI: no thread per listener, no
database query per event. It opens the same ``Subscription`` as a WebSocket connection
(chat/events/delivery/), so ordering, gap filling, replay and the bounded outbound
buffer behave identically; its frames arrive already encoded as SSE blocks. When the
client goes away Django cancels the generator; its ``finally`` leaves the room.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from accounts.auth import token_id_of
from accounts.connections import connection_slot_take
from chat import redis as redis_conn
from chat.errors import BadRequest
from chat.events import StoreUnavailable
from chat.events.delivery import SseSubscriber, Subscription, admit
from chat.events.frames import Frame
from chat.http import async_api
from core import metrics
from core.fastpath import direct_write_request

# Browsers reconnect this long after a dropped stream (the SSE "retry" field).
RETRY_MS = 3000
# What a client that arrives while the event store is unreachable is told to wait (s).
RETRY_AFTER_OUTAGE = 2


def _resume_point(request: HttpRequest) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("after")
    if raw is None or raw == "":
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadRequest("Last-Event-ID / after must be a non-negative integer")
    return int(raw)


def _counted(
    view: Callable[..., Awaitable[HttpResponseBase]],
) -> Callable[..., Coroutine[Any, Any, HttpResponseBase]]:
    """Count the handshake: a stream opened, or refused with its HTTP status."""

    @wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = await view(request, *args, **kwargs)
        status = response.status_code
        metrics.handshake("sse", None if status == 200 else status)
        return response

    return wrapper


@require_GET
@_counted
@async_api
async def room_events(request: HttpRequest, user: User, slug: str) -> HttpResponseBase:
    room = await admit(slug=slug, user=user)
    after = _resume_point(request)
    slot = connection_slot_take(user_id=user.pk)  # 429 past PARLEY_MAX_CONNECTIONS_PER_USER
    sub = SseSubscriber(
        user_id=user.pk,
        username=user.get_username(),
        token_id=token_id_of(user),
        audio=request.GET.get("audio") == "1",
        # daphne's own request for this response (core/fastpath.py DIRECT_WRITE); absent
        # under any other server, and then the frames go the ordinary way.
        request=direct_write_request(getattr(request, "scope", {})),
    )
    subscription = Subscription(room=room, sub=sub, after=after)
    try:
        # Subscribe the process to the room before answering, so an unreachable store is
        # a clean 503 rather than a stream that dies at once.
        await subscription.prepare()
    except (StoreUnavailable, *redis_conn.UNAVAILABLE):
        slot.release()
        outage = StoreUnavailable("unreachable")
        busy = JsonResponse({"code": outage.code, "detail": outage.detail}, status=503)
        busy["Retry-After"] = str(RETRY_AFTER_OUTAGE)
        return busy

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            yield Frame(await subscription.open()).sse
            await subscription.start()
            async for chunk in sub.chunks():
                yield chunk
        except StoreUnavailable:
            return  # the store went away mid-open: the client reconnects after `retry`
        finally:
            await subscription.close()

    response = StreamingHttpResponse(slot.hold(stream()), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # nginx: pass each event on at once instead of buffering the response.
    response["X-Accel-Buffering"] = "no"
    return response
