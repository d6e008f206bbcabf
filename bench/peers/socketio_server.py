"""The peer: a minimal python-socketio chat server fanning a model's stream to a room.

    BENCH_MODEL_URL=http://127.0.0.1:PORT/v1 [BENCH_REDIS_URL=redis://...] \
        uvicorn bench.peers.socketio_server:app --port 9000

Every client joins the room ``bench`` on connect. ``ask`` makes the server stream a chat
completion from the same loopback model server Parley uses and ``emit`` each token to the
room as it arrives (``token``: ``{"t": text}``), then ``done``. With ``BENCH_REDIS_URL``
it uses socketio's ``AsyncRedisManager``, so several processes share the room: what
Open WebUI and Chainlit run on. It is deliberately what a team would write first: no
auth, no persistence, no replay.
"""

from __future__ import annotations

import json
import os

import httpx
import socketio

_redis = os.environ.get("BENCH_REDIS_URL")
manager = socketio.AsyncRedisManager(_redis) if _redis else None
sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, cors_allowed_origins="*")
app = socketio.ASGIApp(sio)
MODEL_URL = os.environ.get("BENCH_MODEL_URL", "http://127.0.0.1:8001/v1")
ROOM = "bench"


@sio.event
async def connect(sid: str, environ: dict, auth: object = None) -> None:
    await sio.enter_room(sid, ROOM)


@sio.event
async def ask(sid: str, data: object) -> None:
    body = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{MODEL_URL}/chat/completions", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            text = (choices[0].get("delta") or {}).get("content")
            if text:
                await sio.emit("token", {"t": text}, room=ROOM)
    await sio.emit("done", {}, room=ROOM)
