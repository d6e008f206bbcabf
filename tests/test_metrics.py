"""GET /metrics over a real daphne (README "Metrics", docs/architecture.md "Metrics").

One reply through each transport (WebSocket, SSE, plain HTTP), then the scrape shows
what an operator alerts on: connections by transport, handshakes and refusals, events,
frames by path, fan-out and layer lag, replays, replies by state with their timings and
tokens, the model upstream, the store, and the standard process collectors. And the
endpoint is never open: a token when one is set, else loopback and the allow-list only,
never a client a proxy vouches for.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import daphne_env
from tests.support.daphne import DaphneServer
from tests.support.sse import open_sse
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-for-tests"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels (the official parser: the format holds)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def total(scrape: dict[Any, float], name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and want <= ls)


async def scrape(base: str, **headers: str) -> dict[Any, float]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        r = await http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return samples(r.text)


def is_reply(event: dict[str, Any]) -> bool:
    return event.get("type") == "message" and event["message"]["role"] == "assistant"


@pytest.fixture
def room_setup(make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    _, eve_token = make_user("eve")
    room = make_room(ann, "Watched")
    room_join(room=room, user=bob)
    return room, ann_token, bob_token, eve_token


async def test_one_reply_per_transport_shows_in_every_family(daphne_factory, llm, room_setup):
    room, ann_token, bob_token, eve_token = room_setup
    # A process of its own: its counters start at zero, so every figure below is exact.
    server = daphne_factory()
    auth = {"Authorization": f"Bearer {bob_token}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=auth, timeout=30) as http:
        ws = await RoomClient.connect(server.ws_url, room.slug, token=ann_token)
        await ws.wait_type("hello")
        sse = await open_sse(http, f"/api/rooms/{room.slug}/events")
        try:
            await sse.wait_for(lambda e: e["type"] == "hello")
            # Refused handshakes: eve is no member (WebSocket 4403, SSE 403).
            eve = await RoomClient.connect(server.ws_url, room.slug, token=eve_token)
            assert await eve.wait_closed() == 4403
            r = await http.get(
                f"/api/rooms/{room.slug}/events", headers={"Authorization": f"Bearer {eve_token}"}
            )
            assert r.status_code == 403

            # 1. Over the WebSocket.
            await ws.send(action="send", text="one", ask_ai=True)
            first = await ws.wait_for(is_reply)
            await ws.wait_terminal(first["message"]["id"])
            # 2. Sent over HTTP, watched over SSE.
            r = await http.post(f"/api/rooms/{room.slug}/messages", json={"text": "two"})
            assert r.status_code == 202, r.text
            second = r.json()["reply"]["id"]
            await sse.wait_for(
                lambda e: (
                    e.get("type") == "generation"
                    and e.get("message_id") == second
                    and e["state"] == "complete"
                )
            )
            # 3. Plain HTTP: send, then read the reply until it is done.
            r = await http.post(f"/api/rooms/{room.slug}/messages", json={"text": "three"})
            third = r.json()["reply"]["id"]
            deadline = time.monotonic() + 20
            while (await http.get(f"/api/messages/{third}")).json()["status"] != "complete":
                assert time.monotonic() < deadline, "the plain-HTTP reply never completed"
                await asyncio.sleep(0.05)  # polling is what a plain-HTTP client does
            await ws.wait_terminal(third)

            # A reconnect after the first reply replays from the room's recent frames.
            again = await RoomClient.connect(server.ws_url, room.slug, token=ann_token, after=1)
            await again.wait_terminal(third)
            await again.close()

            m = await scrape(server.http_url)
        finally:
            await sse.close()
            await ws.close()

    # Connections and rooms, as they stood at the scrape (ann's WebSocket, bob's SSE).
    assert value(m, "parley_connections", transport="websocket") == 1
    assert value(m, "parley_connections", transport="sse") == 1
    assert value(m, "parley_rooms_with_subscribers") == 1
    assert value(m, "parley_subscriptions") == 2
    assert value(m, "parley_users_online") == 2
    hs = "parley_handshakes_total"
    assert value(m, hs, transport="websocket", outcome="accepted", code="") == 2
    assert value(m, hs, transport="websocket", outcome="refused", code="4403") == 1
    assert value(m, hs, transport="sse", outcome="accepted", code="") == 1
    assert value(m, hs, transport="sse", outcome="refused", code="403") == 1

    # Delivery: three messages and three replies, each with deltas and generation events.
    assert value(m, "parley_events_emitted_total", type="message") == 6
    assert value(m, "parley_events_emitted_total", type="delta") >= 3
    assert value(m, "parley_events_emitted_total", type="generation") == 6
    emitted = total(m, "parley_events_emitted_total")
    # Every durable event was fanned out here once, and its publish-to-receipt lag taken.
    assert value(m, "parley_fanout_duration_seconds_count") == emitted
    assert value(m, "parley_layer_lag_seconds_count") == emitted
    assert value(m, "parley_frames_written_total", transport="websocket", path="prepared") > 0
    assert value(m, "parley_frames_written_total", transport="sse", path="prepared") > 0
    assert value(m, "parley_slow_reader_cuts_total", transport="websocket") == 0
    assert value(m, "parley_replays_total", source="recent") == 1

    # Replies, labelled by the configured model (on the allow-list by default).
    assert value(m, "parley_replies_started_total", model="fake-model", assistant="assistant") == 3
    ended = "parley_replies_ended_total"
    assert (
        value(m, ended, state="complete", reason="", model="fake-model", assistant="assistant") == 3
    )
    assert value(m, "parley_reply_ttft_seconds_count", model="fake-model") == 3
    assert value(m, "parley_reply_duration_seconds_count", model="fake-model") == 3
    assert value(m, "parley_reply_tokens_per_second_count", model="fake-model") == 3
    assert value(m, "parley_tokens_total", direction="out", model="fake-model") > 0
    assert value(m, "parley_upstream_requests_total", service="model") == 3
    assert total(m, "parley_upstream_errors_total") == 0

    # The store and the process.
    assert value(m, "parley_store_up") == 1
    assert value(m, "parley_store_outages_total") == 0
    assert value(m, "process_resident_memory_bytes") > 0
    assert total(m, "python_gc_collections_total") > 0


async def test_a_model_failure_counts_as_an_upstream_error(daphne_factory, llm, room_setup):
    from tests.support.openai_server import Scenario

    room, ann_token, _, _ = room_setup
    llm.set_default(Scenario.error_status(500, "model overloaded"))
    server = daphne_factory()
    ws = await RoomClient.connect(server.ws_url, room.slug, token=ann_token)
    try:
        await ws.wait_type("hello")
        await ws.send(action="send", text="one", ask_ai=True)
        reply = await ws.wait_for(is_reply)
        end = await ws.wait_terminal(reply["message"]["id"])
        assert end["state"] == "failed"
    finally:
        await ws.close()
    m = await scrape(server.http_url)
    assert value(m, "parley_upstream_errors_total", service="model", code="upstream_status") == 1
    assert (
        value(
            m,
            "parley_replies_ended_total",
            state="failed",
            reason="upstream_status",
            model="fake-model",
            assistant="assistant",
        )
        == 1
    )


async def test_with_a_token_only_its_bearer_may_scrape(daphne_factory):
    server = daphne_factory(PARLEY_METRICS_TOKEN=TOKEN)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        # Loopback is no pass when a token is set.
        assert (await http.get("/metrics")).status_code == 404
        assert (
            await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        ).status_code == 404
        assert (await http.get("/metrics", headers={"Authorization": TOKEN})).status_code == 404
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        assert "parley_events_emitted" in r.text


async def test_a_proxied_request_is_never_local(daphne_factory):
    """Without a token, loopback may scrape, but not a request a proxy forwarded: its
    X-Forwarded-For is the client's to write (daphne's --proxy-headers takes its word)."""
    server = daphne_factory()
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        assert (await http.get("/metrics")).status_code == 200
        spoofed = {"X-Forwarded-For": "127.0.0.1"}
        assert (await http.get("/metrics", headers=spoofed)).status_code == 404
        assert (await http.get("/metrics", headers={"X-Real-IP": "127.0.0.1"})).status_code == 404


def _outside_address() -> str:
    """One of this machine's own addresses that is not loopback, to connect from."""
    for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
        address = str(info[4][0])
        if not address.startswith("127."):
            return address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's source
        address = str(s.getsockname()[0])
    assert not address.startswith("127."), "this machine has no address but loopback"
    return address


@pytest.fixture
def open_daphne(django_db_setup, django_db_blocker, fake_llm_server) -> Iterator[Any]:
    servers: list[DaphneServer] = []

    def start(**env: str) -> DaphneServer:
        with django_db_blocker.unblock():
            full = daphne_env(fake_llm_server, VOICE_PRELOAD="0", STT_PRELOAD="0", **env)
        server = DaphneServer(full, host="0.0.0.0").start()  # noqa: S104 - an outside client
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def test_an_address_off_the_allow_list_is_refused(open_daphne):
    outside = _outside_address()
    hosts = f"127.0.0.1,{outside}"
    refusing = open_daphne(DJANGO_ALLOWED_HOSTS=hosts)
    allowing = open_daphne(
        DJANGO_ALLOWED_HOSTS=hosts, PARLEY_METRICS_ALLOW=f"10.9.8.0/24,{outside}/32"
    )
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"http://{outside}:{refusing.port}/metrics")
        assert r.status_code == 404
        # The same daphne still answers loopback; the other one its allow-listed network.
        assert (await http.get(f"http://127.0.0.1:{refusing.port}/metrics")).status_code == 200
        assert (await http.get(f"http://{outside}:{allowing.port}/metrics")).status_code == 200


def test_the_dashboard_asks_only_for_families_that_exist():
    """Every parley_* series the Grafana dashboard queries is one /metrics exposes."""
    import json
    import re
    from pathlib import Path

    from prometheus_client import REGISTRY, generate_latest

    import core.metrics  # noqa: F401 - registers the families

    exposed = {
        s.name
        for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())
        for s in f.samples
    }
    exposed |= {f.name for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    dashboard = json.loads(
        (Path(__file__).parents[1] / "deploy/grafana/parley-dashboard.json").read_text()
    )
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"parley_[a-z_]+", target["expr"])
    }
    assert asked
    # A labelled family with no sample yet shows in the scrape by its name alone.
    base = {re.sub(r"_(bucket|total|count|sum)$", "", n) for n in exposed}
    missing = {
        n
        for n in asked
        if n not in exposed and re.sub(r"_(bucket|total|count|sum)$", "", n) not in base
    }
    assert not missing


def test_labels_off_the_allow_list_are_other(settings):
    from core import metrics

    settings.PARLEY_METRICS_MODELS = ["fake-model"]
    settings.PARLEY_METRICS_ASSISTANTS = ["helper"]
    assert metrics.model_label("fake-model") == "fake-model"
    assert metrics.model_label("a-model-someone-typed-in-the-admin") == "other"
    assert metrics.model_label(None) == "default"
    assert metrics.assistant_label("helper") == "helper"
    assert metrics.assistant_label("mallory") == "other"


async def test_off_a_reply_is_served_as_ever_and_metrics_are_not(daphne_factory, llm, room_setup):
    room, ann_token, _, _ = room_setup
    server = daphne_factory(PARLEY_METRICS="off")
    ws = await RoomClient.connect(server.ws_url, room.slug, token=ann_token)
    try:
        await ws.wait_type("hello")
        await ws.send(action="send", text="one", ask_ai=True)
        reply = await ws.wait_for(is_reply)
        end = await ws.wait_terminal(reply["message"]["id"])
        assert end["state"] == "complete"
        assert ws.text_of(reply["message"]["id"]) == "Hello, world!"
    finally:
        await ws.close()
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        r = await http.get("/metrics")  # from loopback, which may scrape when metrics are on
    assert r.status_code == 404


def test_off_every_instrumentation_call_is_a_no_op_and_on_again_counts():
    from prometheus_client import REGISTRY

    from core import metrics

    def emitted() -> float:
        labels = {"type": "off-test"}
        return REGISTRY.get_sample_value("parley_events_emitted_total", labels) or 0.0

    try:
        metrics.configure(enabled=False)
        metrics.event_emitted("off-test")
        metrics.reply_started(model="m", assistant="a")
        metrics.store_error("append")
        assert metrics.published_at() is None
        assert emitted() == 0
        assert REGISTRY.get_sample_value("parley_store_up") == 1
    finally:
        metrics.configure(enabled=True)
    metrics.event_emitted("off-test")
    assert emitted() == 1
    assert isinstance(metrics.published_at(), float)


@pytest.fixture
def private_redis(sole_deployment: None) -> Iterator[Any]:
    """A redis-server this test kills and restarts (the session's daphne, on the same
    database, is stopped meanwhile: tests/conftest.py ``sole_deployment``)."""
    from tests.support.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def quiet_room(make_user, make_room):
    """A room whose sends get no reply: a reply failed by the outage would hold the
    room's emits while its end waits for the store (that end's own test:
    tests/chat/test_store_faults.py)."""
    ann, ann_token = make_user("ann")
    return make_room(ann, "Quiet", assistant="mention"), ann_token


@pytest.mark.redis
async def test_a_store_outage_is_counted_once_and_its_end_seen(
    daphne_factory, private_redis, quiet_room
):
    room, ann_token = quiet_room
    server = daphne_factory(REDIS_URL=private_redis.url, PARLEY_STORE_RETRY_SECONDS="0.5")
    auth = {"Authorization": f"Bearer {ann_token}"}
    url = f"/api/rooms/{room.slug}/messages"
    async with httpx.AsyncClient(base_url=server.http_url, headers=auth, timeout=30) as http:
        r = await http.post(url, json={"text": "before"})
        assert r.status_code in (200, 201, 202), r.text
        private_redis.kill()
        for text in ("during", "still during"):
            r = await http.post(url, json={"text": text})
            assert r.status_code == 503, r.text
        down = await scrape(server.http_url)
        private_redis.start()
        deadline = time.monotonic() + 30
        while (await http.post(url, json={"text": "after"})).status_code == 503:
            assert time.monotonic() < deadline, "sends never came back after the store did"
            await asyncio.sleep(0.2)  # a client retrying a busy send
        up = await scrape(server.http_url)
    assert value(down, "parley_store_up") == 0
    assert value(down, "parley_store_errors_total", operation="append") >= 2
    assert value(down, "parley_store_retries_total") >= 2
    assert value(up, "parley_store_up") == 1
    # Two failed sends, and whatever else failed meanwhile, were one outage.
    assert value(up, "parley_store_outages_total") == 1


@pytest.mark.model
async def test_speech_in_and_out_are_counted(daphne_factory, llm, room_setup):
    """The bundled Whisper hears an utterance (STT), the bundled Piper speaks the reply
    (TTS): both upstreams counted, with their timings."""
    from tests.voice.speech_samples import resample_16k, spoken
    from tests.voice.test_stt import speak

    room, ann_token, _, _ = room_setup
    pcm = resample_16k(*spoken())
    server = daphne_factory()
    ann = await RoomClient.connect(server.ws_url, room.slug, token=ann_token)
    try:
        await ann.wait_type("hello")
        await ann.send(action="audio", enabled=True)
        await speak(ann, pcm, voice="streaming")
        await ann.wait_type("speech", state="transcribed", id="u1", timeout=60)
        # The reply may be announced before the speaker is told "transcribed": from the top.
        reply = await ann.wait_for(is_reply, start=0)
        await ann.wait_terminal(reply["message"]["id"], start=0)
        await ann.wait_type("audio", state="end", timeout=60, start=0)
    finally:
        await ann.close()
    m = await scrape(server.http_url)
    assert value(m, "parley_upstream_requests_total", service="stt") == 1
    assert value(m, "parley_stt_duration_seconds_count") == 1
    assert value(m, "parley_stt_audio_seconds_sum") == pytest.approx(len(pcm) / 2 / 16000)
    assert value(m, "parley_upstream_requests_total", service="tts") == 1
    assert value(m, "parley_tts_first_byte_seconds_count") == 1
    assert total(m, "parley_upstream_errors_total") == 0


@pytest.fixture
def shared_redis(sole_deployment: None) -> Iterator[Any]:
    from tests.support.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.kill()


@pytest.mark.redis
async def test_events_from_another_process_have_their_layer_lag_taken(
    daphne_factory, shared_redis, llm, room_setup
):
    room, ann_token, bob_token, _ = room_setup
    one = daphne_factory(REDIS_URL=shared_redis.url)
    two = daphne_factory(REDIS_URL=shared_redis.url)
    ann = await RoomClient.connect(one.ws_url, room.slug, token=ann_token)
    bob = await RoomClient.connect(two.ws_url, room.slug, token=bob_token)
    try:
        await ann.wait_type("hello")
        await bob.wait_type("hello")
        await ann.send(action="send", text="across", ask_ai=True)  # born in process one
        reply = await bob.wait_for(is_reply)
        await bob.wait_terminal(reply["message"]["id"])
        await ann.wait_terminal(reply["message"]["id"])
    finally:
        await ann.close()
        await bob.close()
    born, elsewhere = await scrape(one.http_url), await scrape(two.http_url)
    emitted = total(born, "parley_events_emitted_total")
    assert emitted >= 5
    assert total(elsewhere, "parley_events_emitted_total") == 0
    # Process two received every event over the layer and timed each from its publish.
    assert value(elsewhere, "parley_layer_lag_seconds_count") == emitted
    assert value(elsewhere, "parley_fanout_duration_seconds_count") == emitted
    assert value(elsewhere, "parley_layer_lag_seconds_sum") < emitted * 1.0
