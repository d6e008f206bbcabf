"""The room consumer in process (Channels' WebsocketCommunicator through the real router).

Untrusted input: every bad frame gets the contract's error code and the connection lives
on; close codes for who may not connect; replay, snapshot, rate limits, pause timeout and
crash recovery.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chat.llm import get_backend
from chat.models import Generation, Message, Role, Status
from chat.replies import get_manager
from config.asgi import application
from tests.support.openai_server import Scenario
from tests.support.rooms import stored

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def inproc_llm(llm, settings):
    """Point this process's model backend at the fake server."""
    settings.LLM_BACKEND = "openai"
    settings.OPENAI_BASE_URL = llm.base_url
    settings.OPENAI_API_KEY = "test-key"
    settings.LLM_MODEL = "fake-model"
    settings.LLM_READ_TIMEOUT = 2.0
    get_backend.cache_clear()
    yield llm
    get_backend.cache_clear()


class Client:
    def __init__(self, comm: WebsocketCommunicator) -> None:
        self.comm = comm
        self.events: list[dict[str, Any]] = []

    async def send(self, **frame: Any) -> None:
        await self.comm.send_to(text_data=json.dumps(frame))

    async def next(self, timeout: float = 5) -> dict[str, Any]:
        event = json.loads(await self.comm.receive_from(timeout))
        self.events.append(event)
        return event

    async def until(self, predicate, timeout: float = 5) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                if predicate(event):
                    return event

    async def error_for(self, frame_id: str) -> dict[str, Any]:
        return await self.until(lambda e: e["type"] == "error" and e.get("id") == frame_id)


async def open_ws(
    slug: str, token: str | None, *, after: int | None = None, origin: bytes | None = None
) -> tuple[WebsocketCommunicator, bool]:
    headers = []
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if origin:
        headers.append((b"origin", origin))
    path = f"/ws/rooms/{slug}/" + (f"?after={after}" if after is not None else "")
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await comm.connect()
    return comm, connected


async def joined(slug: str, token: str, **kw: Any) -> Client:
    comm, connected = await open_ws(slug, token, **kw)
    assert connected
    client = Client(comm)
    hello = await client.next()
    assert hello["type"] == "hello"
    return client


@pytest.fixture
def setup(make_user, make_room):
    from chat.services import room_join

    owner, owner_token = make_user("olga")
    member, member_token = make_user("max")
    _, outsider_token = make_user("out")
    room = make_room(owner, "Lab", assistant="mention")
    room_join(room=room, user=member)
    private = make_room(owner, "Vault", visibility="private")
    return {
        "room": room,
        "private": private,
        "owner": owner_token,
        "member": member_token,
        "outsider": outsider_token,
    }


async def close_code(comm: WebsocketCommunicator) -> int:
    output = await comm.receive_output(5)
    assert output["type"] == "websocket.close"
    return output["code"]


async def test_who_may_connect(setup):
    comm, _ = await open_ws(setup["room"].slug, None)
    assert await close_code(comm) == 4401
    comm, _ = await open_ws(setup["room"].slug, "pk_wrong")
    assert await close_code(comm) == 4401
    comm, _ = await open_ws(setup["room"].slug, setup["outsider"])
    assert await close_code(comm) == 4403
    comm, _ = await open_ws("no-such-room", setup["member"])
    assert await close_code(comm) == 4404
    comm, _ = await open_ws(setup["private"].slug, setup["member"])
    assert await close_code(comm) == 4404  # private rooms are invisible to non-members
    comm, connected = await open_ws(
        setup["room"].slug, setup["member"], origin=b"http://evil.example"
    )
    assert not connected  # a foreign page cannot open a socket with the user's cookie
    comm, connected = await open_ws(
        setup["room"].slug, setup["member"], origin=b"http://localhost:8000"
    )
    assert connected
    await comm.disconnect()


async def test_hello_presence_and_typing(setup):
    olga = await joined(setup["room"].slug, setup["owner"])
    hello = olga.events[0]
    assert hello["you"] == "olga"
    assert hello["online"] == ["olga"]
    assert hello["room"]["slug"] == setup["room"].slug
    assert hello["head"] == hello["room"]["head"]
    max_ = await joined(setup["room"].slug, setup["member"])
    assert max_.events[0]["online"] == ["max", "olga"]
    presence = await olga.until(lambda e: e["type"] == "presence" and "max" in e["online"])
    assert presence["online"] == ["max", "olga"]
    await max_.send(action="typing")
    typing = await olga.until(lambda e: e["type"] == "typing")
    assert typing == {"type": "typing", "username": "max"}
    await max_.comm.disconnect()
    presence = await olga.until(lambda e: e["type"] == "presence")
    assert presence["online"] == ["olga"]
    await olga.comm.disconnect()


async def test_bad_frames_get_errors_and_the_connection_lives(setup, settings):
    settings.PARLEY_MAX_MESSAGE_CHARS = 100
    c = await joined(setup["room"].slug, setup["member"])
    cases = [
        ('{"action": "send", "id": "a", "text": 5}', "a", "bad_request"),
        ('{"action": "send", "id": "b", "text": "   "}', "b", "bad_request"),
        ('{"action": "send", "id": "c", "text": "' + "x" * 101 + '"}', "c", "too_long"),
        ('{"action": "fly", "id": "d"}', "d", "unknown_action"),
        ('{"action": "__init__", "id": "e"}', "e", "unknown_action"),
        ('{"id": "f"}', "f", "bad_request"),
        ('{"action": "pause", "id": "g"}', "g", "bad_request"),
        ('{"action": "pause", "id": "h", "message_id": "999999"}', "h", "not_found"),
        ('{"action": "stop", "id": "i", "message_id": {"x": 1}}', "i", "bad_request"),
        ('{"action": "audio", "id": "j", "enabled": "yes"}', "j", "bad_request"),
        ('{"action": "send", "id": "k", "text": "hi", "client_id": 7}', "k", "bad_request"),
        ('{"action": "send", "id": "l", "text": "hi", "ask_ai": "maybe"}', "l", "bad_request"),
        ('{"action": "send", "id": "m", "text": "hi", "voice": "loud"}', "m", "bad_request"),
    ]
    for raw, frame_id, code in cases:
        await c.comm.send_to(text_data=raw)
        error = await c.error_for(frame_id)
        assert error["code"] == code, raw
        assert error["detail"]
    await c.comm.send_to(text_data="not json at all")
    error = await c.until(lambda e: e["type"] == "error")
    assert (error["code"], error["id"]) == ("bad_json", None)
    await c.comm.send_to(text_data="[1, 2]")
    assert (await c.until(lambda e: e["type"] == "error"))["code"] == "bad_request"
    await c.comm.send_to(bytes_data=b"\x00\x01")
    assert (await c.until(lambda e: e["type"] == "error"))["code"] == "bad_request"
    await c.send(action="ping", id=42)
    assert await c.until(lambda e: e["type"] == "pong") == {"type": "pong", "id": 42}
    # Nothing was stored by all that.
    assert await sync_to_async(Message.objects.count)() == 0
    await c.comm.send_to(text_data=json.dumps({"action": "send", "text": "x" * 70000}))
    assert await close_code(c.comm) == 1009


async def test_error_reaches_only_the_sender(setup):
    a = await joined(setup["room"].slug, setup["owner"])
    b = await joined(setup["room"].slug, setup["member"])
    await a.send(action="nope", id="x")
    await a.error_for("x")
    await b.send(action="ping", id="sync")
    await b.until(lambda e: e["type"] == "pong")
    assert not [e for e in b.events if e["type"] == "error"]
    await a.comm.disconnect()
    await b.comm.disconnect()


async def test_send_rate_limit(setup, settings):
    settings.PARLEY_SEND_BURST = 2
    settings.PARLEY_SEND_PER_SECOND = 0.5
    c = await joined(setup["room"].slug, setup["member"])
    for i in range(2):
        await c.send(action="send", text=f"hi {i}", id=f"s{i}")
        await c.until(lambda e: e["type"] == "message")
    await c.send(action="send", text="one too many", id="s3")
    error = await c.error_for("s3")
    assert error["code"] == "rate_limited"
    assert 0 < error["retry_after"] <= 2
    await c.comm.disconnect()


async def test_mention_mode_replies_only_when_asked(setup, inproc_llm):
    start = len(inproc_llm.requests)
    c = await joined(setup["room"].slug, setup["member"])
    await c.send(action="send", text="just chatting")
    msg = await c.until(lambda e: e["type"] == "message")
    assert msg["message"]["role"] == "user"
    await c.send(action="send", text="hey @Assistant, a question")
    await c.until(lambda e: e["type"] == "message" and e["message"]["role"] == "user")
    reply = await c.until(lambda e: e["type"] == "message")
    assert reply["message"]["role"] == "assistant"
    assert reply["message"]["reply_to"] is not None
    await c.until(lambda e: e["type"] == "generation" and e["state"] == "complete")
    await c.send(action="send", text="and now", ask_ai=True)
    await c.until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant")
    await c.until(lambda e: e["type"] == "generation" and e["state"] == "complete")
    assert len(inproc_llm.requests) - start == 2  # the model was asked twice, not thrice
    await c.comm.disconnect()


async def test_pause_timeout_ends_as_stopped(setup, inproc_llm, settings):
    settings.PARLEY_PAUSE_TIMEOUT = 0.3
    inproc_llm.set_default(Scenario.endless(("z ",), interval=0.01))
    start = len(inproc_llm.requests)
    c = await joined(setup["room"].slug, setup["member"])
    await c.send(action="send", text="go", ask_ai=True)
    reply = await c.until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant")
    reply_id = reply["message"]["id"]
    await c.until(lambda e: e["type"] == "delta")
    await c.send(action="pause", message_id=reply_id)
    await c.until(lambda e: e["type"] == "generation" and e["state"] == "paused")
    end = await c.until(lambda e: e["type"] == "generation" and e["state"] == "stopped")
    assert (end["reason"], end["by"]) == ("pause_timeout", None)
    record = await inproc_llm.await_disconnect(start)
    assert record.closed_by == "client"
    delivered = "".join(e["text"] for e in c.events if e["type"] == "delta")
    saved = await stored(reply_id)
    assert (saved.status, saved.text) == ("stopped", delivered)
    await c.comm.disconnect()


async def test_replay_after_reconnect_and_snapshot_when_too_old(setup, inproc_llm, settings):
    inproc_llm.set_default(Scenario.normal(["a", "b", "c", "d"]))
    a = await joined(setup["room"].slug, setup["member"])
    await a.send(action="send", text="q", ask_ai=True)
    await a.until(lambda e: e["type"] == "generation" and e["state"] == "complete")
    durable = [e for e in a.events if "seq" in e]
    cut = durable[1]["seq"]
    b = await joined(setup["room"].slug, setup["owner"], after=cut)
    replayed = [await b.next() for _ in range(len(durable) - 2)]
    assert replayed == durable[2:]
    await b.send(action="ping", id="p")
    assert (await b.next())["type"] in ("pong", "presence")

    settings.PARLEY_LOG_MAX_EVENTS = 3  # the log now keeps only the last three events
    await a.send(action="send", text="q2", ask_ai=True)
    await a.until(
        lambda e: (
            e["type"] == "generation" and e["state"] == "complete" and e["seq"] > durable[-1]["seq"]
        )
    )
    c = await joined(setup["room"].slug, setup["owner"], after=cut)
    snapshot = await c.until(lambda e: "seq" in e)
    assert snapshot["type"] == "snapshot"
    assert snapshot["seq"] == c.events[0]["head"]
    texts = [(m["role"], m["text"], m["status"]) for m in snapshot["messages"]]
    assert texts[-1] == ("assistant", "abcd", "complete")
    # A seq from the future (e.g. a client of another deployment) also gets a snapshot.
    d = await joined(setup["room"].slug, setup["owner"], after=10**12)
    assert (await d.until(lambda e: "seq" in e))["type"] == "snapshot"
    for client in (a, b, c, d):
        await client.comm.disconnect()


async def test_replies_left_by_a_dead_process_become_interrupted(setup, make_user, settings):
    # With Redis, a store that just came up empty (this session flushed it) grants every
    # lease one lease of grace before a missing one counts as death: keep it short.
    settings.PARLEY_WORKER_HEARTBEAT = 0.2
    settings.PARLEY_WORKER_LEASE = 1.0
    room = setup["room"]
    owner = room.owner

    def orphan() -> Message:
        ask = Message.objects.create(room=room, role=Role.USER, author=owner, text="q")
        reply = Message.objects.create(
            room=room, role=Role.ASSISTANT, text="half a rep", status=Status.STREAMING, reply_to=ask
        )
        Generation.objects.create(
            message=reply, backend="openai", queued_at=ask.created, worker="deadhost:1:dead"
        )
        return reply

    reply = await sync_to_async(orphan)()
    c = await joined(room.slug, setup["member"], after=0)
    # The process starts its reply manager (daphne does it with the server, before any
    # connection: chat/replies/manager.py start_with_server); subscribing does not.
    await get_manager().ensure_started()
    event = await c.until(lambda e: e["type"] == "generation")
    assert (event["message_id"], event["state"]) == (str(reply.pk), "interrupted")
    saved = await stored(reply.pk)
    assert (saved.status, saved.text) == ("interrupted", "half a rep")
    await c.comm.disconnect()
