"""The HTTP and SSE fallbacks over a real daphne (docs/protocol.md "Server-sent events", "HTTP").

They call the same services as the WebSocket, so mixed use works: send over HTTP and
watch over the WebSocket or SSE, and both see the same durable events with the same seq.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import Message
from tests.support.openai_server import Scenario
from tests.support.rooms import stored
from tests.support.sse import open_sse
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def room_setup(make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    _, eve_token = make_user("eve")
    room = make_room(ann, "Fallback")
    room_join(room=room, user=bob)
    return room, ann_token, bob_token, eve_token


def client(daphne, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=daphne.http_url, headers=headers, timeout=30)


async def test_sse_and_websocket_listeners_see_identical_events(daphne, llm, room_setup):
    room, ann_token, bob_token, _ = room_setup
    pieces = [f"s{i} " for i in range(20)]
    llm.set_default(Scenario.slow(pieces, delay=0.01))
    ws = await RoomClient.connect(daphne.ws_url, room.slug, token=bob_token)
    await ws.wait_type("hello")
    async with client(daphne, ann_token) as http:
        sse = await open_sse(http, f"/api/rooms/{room.slug}/events", {"Accept-Encoding": "gzip"})
        try:
            headers = sse.response.headers
            assert headers["content-type"].startswith("text/event-stream")
            assert headers["cache-control"] == "no-cache"
            assert headers["x-accel-buffering"] == "no"
            assert "content-encoding" not in headers
            hello = await sse.wait_for(lambda e: e["type"] == "hello")
            assert sse.retry == 3000
            assert sse.events[0] is hello
            # Send over HTTP; watch over SSE and the WebSocket.
            r = await http.post(
                f"/api/rooms/{room.slug}/messages", json={"text": "hello", "client_id": "h1"}
            )
            assert r.status_code == 202, r.text
            reply_id = r.json()["reply"]["id"]
            assert r.json()["message"]["client_id"] == "h1"
            assert r.json()["reply"]["status"] == "queued"

            def done(e):
                return (
                    e.get("type") == "generation"
                    and e.get("message_id") == reply_id
                    and e["state"] == "complete"
                )  # noqa: E731

            await sse.wait_for(done)
            await ws.wait_for(done)
            assert sse.durable() == ws.durable()
            assert sse.ids == [str(e["seq"]) for e in sse.durable()]
            assert sse.text_of(reply_id) == "".join(pieces)
            saved = await stored(reply_id)
            assert saved.text == "".join(pieces)
        finally:
            await sse.close()
            await ws.close()


SSE_FIELDS = ("id: ", "event: ", "data: ", "retry: ", ": ")


class Http10Sse:
    """An SSE stream read as an HTTP/1.0 client (an old proxy) reads it: no chunked
    encoding, the body runs until the server ends it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.head = b""
        self.body = b""

    @classmethod
    async def open(cls, daphne, path: str, token: str) -> Http10Sse:
        reader, writer = await asyncio.open_connection("127.0.0.1", daphne.port)
        writer.write(
            f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        stream = cls(reader, writer)
        stream.head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return stream

    async def read_until(self, marker: str) -> list[dict]:
        async with asyncio.timeout(10):
            while marker.encode() not in self.body:
                chunk = await self.reader.read(65536)
                assert chunk, f"the stream ended before {marker!r}: {self.body[-300:]!r}"
                self.body += chunk
        lines = self.body.decode().split("\n")
        # Nothing but SSE fields: no chunk-size lines or stray CRLFs in the body.
        stray = [line for line in lines if line and not line.startswith(SSE_FIELDS)]
        assert not stray, stray
        return [json.loads(line[6:]) for line in lines if line.startswith("data: ")]

    def close(self) -> None:
        self.writer.close()


async def test_an_http10_sse_reader_gets_the_same_live_events(daphne, llm, room_setup):
    # Parley writes SSE chunks straight to the socket when it can; a response that is not
    # chunked (HTTP/1.0) goes the ordinary way and must read the same.
    room, ann_token, bob_token, _ = room_setup
    pieces = [f"o{i} " for i in range(10)]
    llm.set_default(Scenario.slow(pieces, delay=0.01))
    ws = await RoomClient.connect(daphne.ws_url, room.slug, token=bob_token)
    sse = await Http10Sse.open(daphne, f"/api/rooms/{room.slug}/events", ann_token)
    try:
        assert b" 200 " in sse.head.split(b"\r\n")[0], sse.head
        assert b"chunked" not in sse.head.lower()
        await ws.wait_type("hello")
        await sse.read_until('"type":"hello"')
        await ws.send(action="send", text="go", ask_ai=True)
        events = await sse.read_until('"state":"complete"')
        await ws.wait_for(lambda e: e.get("type") == "generation" and e["state"] == "complete")
    finally:
        sse.close()
        await ws.close()
    assert events[0]["type"] == "hello"
    assert [e for e in events if "seq" in e] == ws.durable()


async def test_sse_resumes_with_last_event_id_and_too_old_gets_a_snapshot(daphne, llm, room_setup):
    room, ann_token, _, _ = room_setup
    pieces = [f"r{i} " for i in range(50)]
    llm.set_default(Scenario.slow(pieces, delay=0.01))
    async with client(daphne, ann_token) as http:
        first = await open_sse(http, f"/api/rooms/{room.slug}/events")
        await first.wait_for(lambda e: e["type"] == "hello")
        r = await http.post(f"/api/rooms/{room.slug}/messages", json={"text": "go"})
        reply_id = r.json()["reply"]["id"]
        await first.wait_for(
            lambda e: e.get("type") == "delta" and len(first.text_of(reply_id)) > 30
        )
        await first.close()
        last_id = first.ids[-1]
        second = await open_sse(
            http, f"/api/rooms/{room.slug}/events?after=0", {"Last-Event-ID": last_id}
        )
        try:
            await second.wait_for(
                lambda e: e.get("type") == "generation" and e["state"] == "complete"
            )
            assert second.durable()[0]["seq"] == int(last_id) + 1  # the header wins over ?after
            seqs = [e["seq"] for e in first.durable() + second.durable()]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            assert first.text_of(reply_id) + second.text_of(reply_id) == "".join(pieces)
        finally:
            await second.close()
        third = await open_sse(
            http, f"/api/rooms/{room.slug}/events", {"Last-Event-ID": str(10**12)}
        )
        try:
            snap = await third.wait_for(lambda e: e["type"] == "snapshot")
            shown = {m["id"]: m for m in snap["messages"]}
            assert shown[reply_id]["text"] == "".join(pieces)
        finally:
            await third.close()
        r = await http.get(f"/api/rooms/{room.slug}/events", headers={"Last-Event-ID": "x1"})
        assert (r.status_code, r.json()["code"]) == (400, "bad_request")


async def test_wait_true_returns_the_whole_reply(daphne, llm, room_setup):
    room, ann_token, _, _ = room_setup
    llm.set_default(Scenario.slow(["The ", "whole ", "reply."], delay=0.02))
    async with client(daphne, ann_token) as http:
        r = await http.post(
            f"/api/rooms/{room.slug}/messages", json={"text": "question", "wait": True}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reply"]["text"] == "The whole reply."
    assert body["reply"]["status"] == "complete"
    assert body["message"]["text"] == "question"


async def test_wait_times_out_with_a_clear_error(daphne_factory, llm, room_setup):
    server = daphne_factory(PARLEY_WAIT_TIMEOUT="0.5")
    room, ann_token, _, _ = room_setup
    llm.set_default(Scenario.endless(("z ",), interval=0.02))
    async with client(server, ann_token) as http:
        r = await http.post(
            f"/api/rooms/{room.slug}/messages", json={"text": "question", "wait": True}
        )
        assert r.status_code == 504
        body = r.json()
        assert body["code"] == "timeout"
        assert body["reply"]["status"] in ("streaming", "queued")
        stop = await http.post(f"/api/messages/{body['reply']['id']}/stop")
        assert stop.status_code == 200


async def test_http_controls_pause_resume_stop(daphne, llm, room_setup):
    room, ann_token, bob_token, eve_token = room_setup
    llm.set_default(Scenario.endless(("t ",), interval=0.01))
    ws = await RoomClient.connect(daphne.ws_url, room.slug, token=bob_token)
    await ws.wait_type("hello")
    async with (
        client(daphne, ann_token) as ann,
        client(daphne, bob_token) as bob,
        client(daphne, eve_token) as eve,
    ):
        start = len(llm.requests)
        r = await ann.post(f"/api/rooms/{room.slug}/messages", json={"text": "go"})
        reply_id = r.json()["reply"]["id"]
        await ws.wait_type("delta", message_id=reply_id)
        r = await bob.post(f"/api/messages/{reply_id}/stop")  # bob did not ask
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        r = await eve.post(f"/api/messages/{reply_id}/stop")  # not even a member
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = await ann.post(f"/api/messages/{reply_id}/pause")
        assert r.status_code == 200
        assert r.json()["message"]["status"] == "paused"
        r = await ann.post(f"/api/messages/{reply_id}/pause")  # idempotent
        assert (r.status_code, r.json()["message"]["status"]) == (200, "paused")
        r = await ann.post(f"/api/messages/{reply_id}/resume")
        assert r.json()["message"]["status"] == "streaming"
        stop_sent = time.monotonic()
        r = await ann.post(f"/api/messages/{reply_id}/stop")
        assert r.status_code == 200
        stopped = r.json()["message"]
        assert stopped["status"] == "stopped"
        record = await asyncio.to_thread(llm.wait_disconnect, start, 5)
        assert record.disconnected_at - stop_sent < 0.1
        end = await ws.wait_terminal(reply_id)
        assert end["state"] == "stopped"
        assert stopped["text"] == ws.text_of(reply_id)
        r = await ann.post(f"/api/messages/{reply_id}/stop")
        assert (r.status_code, r.json()["code"]) == (409, "not_generating")
        r = await ann.post("/api/messages/abc/stop")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
    await ws.close()


async def test_bad_sends_get_clear_errors(daphne, room_setup, settings):
    room, ann_token, _, eve_token = room_setup
    async with client(daphne, ann_token) as http, client(daphne, eve_token) as eve:
        url = f"/api/rooms/{room.slug}/messages"
        cases = [
            (b"{nope", 400, "bad_json"),
            (b'{"text": 3}', 400, "bad_request"),
            (b'{"text": ""}', 400, "bad_request"),
            (b'{"text": "' + b"x" * 8001 + b'"}', 413, "too_long"),
            (b'{"text": "hi", "wait": "yes"}', 400, "bad_request"),
            (b'{"text": "hi", "voice": "shout"}', 400, "bad_request"),
        ]
        for body, status, code in cases:
            r = await http.post(url, content=body, headers={"Content-Type": "application/json"})
            assert (r.status_code, r.json()["code"]) == (status, code), body
        r = await eve.post(url, json={"text": "let me in"})
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        r = await eve.get(f"/api/rooms/{room.slug}/events")
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        async with httpx.AsyncClient(base_url=daphne.http_url) as anon:
            r = await anon.post(url, json={"text": "hi"})
            assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    assert await sync_to_async(Message.objects.count)() == 0


@pytest.fixture
def cookie_room(make_user, make_room):
    user, _ = make_user("cookie", password="cookie-pass-123")
    return make_room(user, "Cookies", assistant="mention")


async def test_session_cookie_send_needs_csrf(daphne, llm, cookie_room):
    room = cookie_room
    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10) as c:
        page = await c.get("/accounts/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert csrf
        await c.post(
            "/accounts/login/",
            data={
                "username": "cookie",
                "password": "cookie-pass-123",
                "csrfmiddlewaretoken": csrf.group(1),
            },
        )
        url = f"/api/rooms/{room.slug}/messages"
        assert (await c.post(url, json={"text": "no token"})).status_code == 403
        r = await c.post(
            url,
            json={"text": "with token"},
            headers={"X-CSRFToken": c.cookies["csrftoken"], "Referer": daphne.http_url + "/"},
        )
        assert r.status_code == 201  # no reply asked for in a mention room
        assert r.json()["reply"] is None


async def test_sse_pings_and_leaves_no_subscription_behind(daphne_factory, room_setup):
    server = daphne_factory(PARLEY_SSE_PING_INTERVAL="0.2")
    room, ann_token, bob_token, _ = room_setup
    ws = await RoomClient.connect(server.ws_url, room.slug, token=bob_token)
    await ws.wait_type("hello")
    async with client(server, ann_token) as http:
        sse = await open_sse(http, f"/api/rooms/{room.slug}/events")
        await sse.wait_for(lambda e: e["type"] == "hello")
        await sse.wait_comment("ping", timeout=5)
        # The SSE listener counts as online while connected...
        await ws.wait_for(lambda e: e.get("type") == "presence" and "ann" in e["online"])
        start = len(ws.events)
        await sse.close()
    # ...and its subscription is gone as soon as it disconnects.
    gone = await ws.wait_for(lambda e: e.get("type") == "presence", start=start)
    assert gone["online"] == ["bob"]
    await ws.close()
