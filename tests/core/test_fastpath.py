"""core/fastpath.py and its start-up check (core/fastpath_check.py).

Over a real daphne: a reply reaches a WebSocket member and an SSE member by the fast path
(prepared frames, direct chunks) and never by daphne's own; a reader that stops reading
is cut off (4408, or its event stream aborted) and counted. The daphne under test logs
its counters on SIGUSR1 (PARLEY_FASTPATH_STATS=1, off by default).

In process: the start-up check refuses daphne, autobahn or Twisted when a private name
the patch uses is gone, when a field is renamed in an ``__init__``, when a write lands
where ``unsent_bytes`` does not look, and when a version is not one the tests passed on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import os
import re
import signal
import socket
from typing import Any

import httpx
import pytest

from core import fastpath, fastpath_check
from core.fastpath_check import SUPPORTED_VERSIONS, FastPathUnsupported
from tests.support.daphne import ROOT, DaphneServer
from tests.support.openai_server import Scenario
from tests.support.rooms import ask
from tests.support.sse import open_sse
from tests.support.wsclient import RoomClient

# Small enough that a stalled reader passes it within a second of a fast reply.
LIMIT = 64 * 1024


# --- Over a real daphne ------------------------------------------------------------------


class Counters:
    """The counters of a daphne started with PARLEY_FASTPATH_STATS=1, read over SIGUSR1."""

    def __init__(self, server: DaphneServer) -> None:
        self.server = server
        self.reads = 0

    async def read(self) -> dict[str, int]:
        assert self.server.proc is not None
        self.reads += 1
        needle = f"{fastpath.STATS_LOG_PREFIX}{self.reads}: "
        os.kill(self.server.proc.pid, signal.SIGUSR1)
        line = await asyncio.to_thread(self.server.wait_log, needle, 10)
        return json.loads(line.partition(needle)[2])


def grew(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in before}


@pytest.fixture
def served(daphne_factory):
    server = daphne_factory(PARLEY_FASTPATH_STATS="1", PARLEY_WS_MAX_BUFFER=str(LIMIT))
    return server, Counters(server)


@pytest.fixture
def two_members(make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Fast path")
    room_join(room=room, user=bob)
    return room, ann_token, bob_token


def both_online(event: dict[str, Any]) -> bool:
    return event.get("type") in ("hello", "presence") and len(event.get("online", ())) == 2


def finished(reply: str):
    return lambda e: (
        e.get("type") == "generation" and e.get("message_id") == reply and e["state"] == "complete"
    )


@pytest.mark.django_db(transaction=True)
async def test_a_reply_reaches_websocket_and_sse_members_by_the_fast_path_only(
    served, llm, two_members
):
    server, counters = served
    room, ann_token, bob_token = two_members
    pieces = [f"f{i} " for i in range(20)]
    llm.set_default(Scenario.slow(pieces, delay=0.01))
    headers = {"Authorization": f"Bearer {ann_token}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=30) as http:
        sse = await open_sse(http, f"/api/rooms/{room.slug}/events")
        ws = await RoomClient.connect(server.ws_url, room.slug, token=bob_token)
        try:
            # Both subscribed and past their catch-up. The stream has delivered an event of
            # its subscription, so its body has started and it takes direct writes now.
            await ws.wait_for(both_online)
            await sse.wait_for(both_online)
            before = await counters.read()
            reply = await ask(ws, ask_ai=True)
            await ws.wait_for(finished(reply))
            await sse.wait_for(finished(reply))
            delta = grew(before, await counters.read())
            assert ws.text_of(reply) == sse.text_of(reply) == "".join(pieces)

            def frames_of(events: list[dict[str, Any]]) -> int:
                return sum(1 for e in events if e.get("message_id") == reply)

            assert delta["ws_plain"] == 0, delta
            assert delta["sse_buffered"] == 0, delta
            assert delta["ws_prepared"] >= frames_of(ws.events), delta
            assert delta["sse_direct"] >= frames_of(sse.events), delta
            assert (delta["ws_cut"], delta["sse_cut"]) == (0, 0), delta
        finally:
            await ws.close()
            await sse.close()


def stalled_socket(port: int) -> socket.socket:
    """A client that stops reading: a tiny receive buffer (set before connecting: shrinking
    a window already advertised stalls TCP itself), and nothing calls recv once it's open."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def open_stalled_websocket(port: int, slug: str, token: str) -> socket.socket:
    sock = stalled_socket(port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/rooms/{slug}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: not one byte of a frame read
        byte = sock.recv(1)
        assert byte, f"the handshake was cut: {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_close_code(sock: socket.socket) -> int | None:
    """Read the connection's backlog frame by frame up to its close frame; its code."""
    data = bytearray()
    while True:
        while len(data) >= 2:
            opcode, size, head = data[0] & 0x0F, data[1] & 0x7F, 2
            if size == 126:
                size, head = int.from_bytes(data[2:4], "big"), 4
            elif size == 127:
                size, head = int.from_bytes(data[2:10], "big"), 10
            if len(data) < head + size:
                break
            payload = bytes(data[head : head + size])
            del data[: head + size]
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_that_stops_reading_is_closed_4408_and_counted(served, llm, two_members):
    server, counters = served
    room, ann_token, bob_token = two_members
    stalled = await asyncio.to_thread(open_stalled_websocket, server.port, room.slug, bob_token)
    ann = await RoomClient.connect(server.ws_url, room.slug, token=ann_token)
    try:
        await ann.wait_for(both_online)
        before = await counters.read()
        llm.set_default(Scenario.endless(("y" * 2000,), interval=0.002))
        reply = await ask(ann, ask_ai=True)
        await asyncio.to_thread(server.wait_log, f"WebSocket that fell {LIMIT} bytes behind", 60)
        await ann.send(action="stop", message_id=reply)
        await ann.wait_for(lambda e: e.get("type") == "generation" and e["state"] == "stopped")
        # The stalled client reads again: its backlog, then the 4408 close frame.
        assert await asyncio.to_thread(read_close_code, stalled) == 4408
        delta = grew(before, await counters.read())
        assert delta["ws_cut"] == 1, delta
        assert delta["ws_plain"] == 0, delta
        assert delta["ws_prepared"] > 0, delta
    finally:
        stalled.close()
        await ann.close()


def read_to_the_end(sock: socket.socket) -> bytes:
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            got += chunk
    return got


@pytest.mark.django_db(transaction=True)
async def test_an_event_stream_that_stops_reading_is_aborted_and_counted(served, llm, two_members):
    server, counters = served
    room, ann_token, bob_token = two_members
    stalled = await asyncio.to_thread(stalled_socket, server.port)
    stalled.sendall(
        f"GET /api/rooms/{room.slug}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {bob_token}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    ann = await RoomClient.connect(server.ws_url, room.slug, token=ann_token)
    try:
        await ann.wait_for(both_online)  # the stream is subscribed
        before = await counters.read()
        llm.set_default(Scenario.endless(("y" * 2000,), interval=0.002))
        reply = await ask(ann, ask_ai=True)
        await asyncio.to_thread(server.wait_log, "streamed response that fell", 60)
        await ann.send(action="stop", message_id=reply)
        await ann.wait_for(lambda e: e.get("type") == "generation" and e["state"] == "stopped")
        # The response was dropped, not ended: no last chunk.
        received = await asyncio.to_thread(read_to_the_end, stalled)
        assert received.startswith(b"HTTP/1.1 200"), received[:100]
        assert not received.endswith(b"\r\n0\r\n\r\n")
        delta = grew(before, await counters.read())
        assert delta["sse_cut"] == 1, delta
    finally:
        stalled.close()
        await ann.close()


# --- The start-up check, in process -------------------------------------------------------


def resolve(dotted: str) -> Any:
    """A module, or a class in one, by its dotted name."""
    with contextlib.suppress(ModuleNotFoundError):
        return importlib.import_module(dotted)
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_pinned_versions_are_the_supported_ones_and_pass_the_check():
    pins = dict(
        re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    )
    for distribution, versions in SUPPORTED_VERSIONS.items():
        assert pins[distribution] in versions, distribution
    fastpath_check.check_versions()
    fastpath_check.check_private_names()


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        ("daphne.ws_protocol.WebSocketProtocol", "serverSend"),
        ("daphne.ws_protocol.WebSocketProtocol", "handle_reply"),
        ("daphne.http_protocol.WebRequest", "handle_reply"),
        ("daphne.server.Server", "create_application"),
        ("autobahn.websocket.protocol", "PreparedMessage"),
        ("autobahn.websocket.protocol.WebSocketProtocol", "sendPreparedMessage"),
        ("autobahn.websocket.protocol.WebSocketProtocol", "STATE_OPEN"),
        ("twisted.internet.abstract.FileDescriptor", "dataBuffer"),
        ("twisted.internet.abstract.FileDescriptor", "offset"),
        ("twisted.web.http.Request", "_disconnected"),
        ("twisted.web.http.Request", "startedWriting"),
    ],
)
def test_a_private_name_that_is_gone_refuses_to_start(monkeypatch, owner, name):
    monkeypatch.delattr(resolve(owner), name)
    with pytest.raises(FastPathUnsupported) as refused:
        fastpath.install(LIMIT)
    message = str(refused.value)
    assert f".{name}, which core/fastpath.py needs" in message
    assert "requirements.txt" in message


def test_a_transport_field_renamed_in_init_refuses_to_start(monkeypatch):
    from twisted.internet import abstract

    init = abstract.FileDescriptor.__init__

    def renamed(self: Any, reactor: Any = None) -> None:
        init(self, reactor)
        self._pendingWrites = self.__dict__.pop("_tempDataBuffer")

    monkeypatch.setattr(abstract.FileDescriptor, "__init__", renamed)
    with pytest.raises(FastPathUnsupported, match=r"tcp\.Server\(\)\._tempDataBuffer, which"):
        fastpath.install(LIMIT)


def test_a_send_queue_renamed_in_autobahn_refuses_to_start(monkeypatch):
    import autobahn.websocket.protocol as ws

    made = ws.WebSocketProtocol._connectionMade

    def renamed(self: Any) -> None:
        made(self)
        self._send_queue = self.__dict__.pop("send_queue")

    monkeypatch.setattr(ws.WebSocketProtocol, "_connectionMade", renamed)
    with pytest.raises(FastPathUnsupported, match=r"WebSocketProtocol\(\)\.send_queue, which"):
        fastpath.install(LIMIT)


def test_a_write_that_unsent_bytes_cannot_see_refuses_to_start(monkeypatch):
    """Every name still there, but Twisted buffers elsewhere: the bound would read 0."""
    from twisted.internet import abstract

    def write_elsewhere(self: Any, data: bytes) -> None:
        self.__dict__.setdefault("_outgoing", []).append(data)

    monkeypatch.setattr(abstract.FileDescriptor, "write", write_elsewhere)
    with pytest.raises(FastPathUnsupported, match="unsent_bytes does not look"):
        fastpath.install(LIMIT)


def test_an_unsupported_version_refuses_to_start(monkeypatch):
    installed = fastpath_check.installed_version

    def upgraded(distribution: str) -> str:
        return "99.1.0" if distribution == "Twisted" else installed(distribution)

    monkeypatch.setattr(fastpath_check, "installed_version", upgraded)
    with pytest.raises(FastPathUnsupported, match=r"Twisted 99\.1\.0 is installed") as refused:
        fastpath.install(LIMIT)
    assert "requirements.txt" in str(refused.value)
    assert "tests/core/test_fastpath.py" in str(refused.value)


def test_unsent_bytes_never_reads_a_missing_buffer_field_as_empty():
    class Renamed:
        dataBuffer = b"unsent"
        offset = 0
        _pendingLen = 10  # what was _tempDataLen

    with pytest.raises(AttributeError, match="_tempDataLen"):
        fastpath.unsent_bytes(Renamed())


def self_signed(directory: Any) -> tuple[Any, Any]:
    """A key and a certificate for 127.0.0.1, made now (nothing is committed)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = directory / "key.pem", directory / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


@pytest.mark.django_db(transaction=True)
async def test_daphne_terminating_tls_is_served_and_says_it_has_no_bound(
    tmp_path, django_db_blocker, fake_llm_server, llm, two_members
):
    """Parley's topology terminates TLS in nginx; a daphne that terminates it itself has no
    Twisted TCP buffer to bound. It still serves (prepared frames through the TLS
    transport), and it says so: an error in the log, the connection counted unbounded."""
    import ssl

    import websockets

    from tests.conftest import daphne_env

    room, ann_token, _ = two_members
    with django_db_blocker.unblock():
        env = daphne_env(fake_llm_server, PARLEY_FASTPATH_STATS="1", VOICE_PRELOAD="0")
    server = DaphneServer(env, tls=self_signed(tmp_path)).start()
    try:
        counters = Counters(server)
        before = await counters.read()
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        headers = {"Authorization": f"Bearer {ann_token}"}
        url = f"{server.ws_url}/ws/rooms/{room.slug}/"
        async with websockets.connect(url, ssl=context, additional_headers=headers) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["type"] == "hello"
            await ws.send(json.dumps({"action": "send", "text": "go", "ask_ai": True}))
            async with asyncio.timeout(20):
                while True:
                    event = json.loads(await ws.recv())
                    if event.get("type") == "generation" and event["state"] == "complete":
                        break
        delta = grew(before, await counters.read())
        assert delta["unbounded"] == 1
        assert delta["ws_prepared"] > 0
        assert delta["ws_plain"] == 0
        assert server.wait_log("no slow-reader bound for it")
    finally:
        server.stop()
