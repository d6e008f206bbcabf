"""What most room tests do first: join a room over a real WebSocket, ask, read the database.

One version of each, for every test module (they were copied into five before).
"""

from __future__ import annotations

import uuid
from typing import Any

from asgiref.sync import sync_to_async

from chat.models import Message
from tests.support.wsclient import RoomClient


async def connect(
    server: Any, room: Any, token: str, *, audio: bool = False, **kw: Any
) -> RoomClient:
    """A member's WebSocket to ``room`` on ``server`` (a DaphneServer), once its ``hello``
    has come. ``audio``: opted in to the room's audio, and the server has taken the
    opt-in (the pong to a ping sent after it). ``kw`` goes to RoomClient.connect
    (``after``, ``origin``, ``extra_headers``)."""
    client = await RoomClient.connect(server.ws_url, room.slug, token=token, **kw)
    await client.wait_type("hello")
    if audio:
        await client.send(action="audio", enabled=True)
        await client.send(action="ping", id="opted-in")
        await client.wait_type("pong", id="opted-in")
    return client


async def ask(client: RoomClient, text: str = "go", timeout: float = 10.0, **send: Any) -> str:
    """Send ``text`` and return the id of the reply to it (not to anyone else's message).

    ``send`` adds fields to the send frame (``ask_ai=True``, ``voice="realtime"``). The
    room must answer this message (an ``always`` room, ``ask_ai``, or an @assistant).
    """
    client_id = f"c-{uuid.uuid4().hex}"
    await client.send(action="send", text=text, client_id=client_id, **send)
    mine = await client.wait_for(
        lambda e: e.get("type") == "message" and e["message"]["client_id"] == client_id,
        timeout,
    )
    reply = await client.wait_for(
        lambda e: e.get("type") == "message" and e["message"]["reply_to"] == mine["message"]["id"],
        timeout,
    )
    return str(reply["message"]["id"])


async def stored(message_id: str | int) -> Message:
    """The message as the database holds it now."""
    return await sync_to_async(Message.objects.get)(pk=int(message_id))
