"""The production topology, natively: the repo's nginx config in front of two daphne
processes on Redis and PostgreSQL (docker-compose.yml runs the same pieces in containers).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI
from tests.support.daphne import ROOT, free_port
from tests.support.openai_server import Scenario
from tests.support.sse import open_sse
from tests.support.wsclient import RoomClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.postgres]

TEMPLATE = ROOT / "deploy" / "nginx" / "parley.conf.template"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        if IN_CI:
            pytest.fail("nginx is not installed: CI must prove the production topology")
        pytest.skip("nginx is not installed (CI installs it)")
    return found


def wait_started(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """nginx logs "start worker process" once its sockets listen: wait for that line."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put("EOF")

    threading.Thread(target=pump, daemon=True).start()
    while True:
        line = lines.get(timeout=timeout)
        if "start worker process" in line:
            return
        if line == "EOF":
            raise RuntimeError("nginx exited before it started serving")


@pytest.fixture
def stack(daphne_factory, tmp_path):
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url or not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        if IN_CI:
            pytest.fail("CI must run the production topology on PostgreSQL and Redis")
        pytest.skip("needs DATABASE_URL (PostgreSQL) and REDIS_URL, as CI sets them")
    binary = nginx_binary()
    web1 = daphne_factory(REDIS_URL=redis_url)
    web2 = daphne_factory(REDIS_URL=redis_url)
    port = free_port()
    values = {
        "PARLEY_LISTEN": f"127.0.0.1:{port}",
        "PARLEY_WEB_1": f"127.0.0.1:{web1.port}",
        "PARLEY_WEB_2": f"127.0.0.1:{web2.port}",
    }
    # As the image's envsubst does: only these variables; nginx's own $vars stay.
    server_conf = re.sub(r"\$\{(PARLEY_\w+)\}", lambda m: values[m.group(1)], TEMPLATE.read_text())
    (tmp_path / "parley.conf").write_text(server_conf)
    # The wrapper the official image provides around its templates, for a non-root run.
    (tmp_path / "nginx.conf").write_text(f"""
worker_processes 1;
error_log stderr notice;
pid {tmp_path}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/parley.conf;
}}
""")
    proc = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_started(proc)
        yield f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", (web1, web2)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def members(make_user, make_room):
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    room = make_room(ann, "Production")
    room_join(room=room, user=bob)
    return room, ann_token, bob_token


async def test_rooms_work_through_nginx_across_two_processes(stack, llm, members):
    http_url, ws_url, _ = stack
    room, ann_token, bob_token = members
    pieces = [f"p{i} " for i in range(40)]
    llm.set_default(Scenario.slow(pieces, delay=0.02))
    # nginx balances connections round-robin: the two members land on different processes.
    ann = await RoomClient.connect(ws_url, room.slug, token=ann_token)
    bob = await RoomClient.connect(ws_url, room.slug, token=bob_token)
    headers = {"Authorization": f"Bearer {bob_token}", "Accept-Encoding": "gzip"}
    async with httpx.AsyncClient(base_url=http_url, headers=headers, timeout=30) as http:
        sse = await open_sse(http, f"/api/rooms/{room.slug}/events")
        try:
            await ann.wait_type("hello")
            await bob.wait_type("hello")
            await sse.wait_for(lambda e: e["type"] == "hello")
            assert "content-encoding" not in sse.response.headers
            await ann.send(action="send", text="through the proxy")
            reply = await ann.wait_for(
                lambda e: e.get("type") == "message" and e["message"]["role"] == "assistant"
            )
            reply_id = reply["message"]["id"]
            # SSE is not buffered by the proxy: a delta arrives while the reply streams.
            await sse.wait_for(lambda e: e.get("type") == "delta")
            assert not [
                e
                for e in sse.events
                if e.get("type") == "generation" and e.get("state") == "complete"
            ]
            for listener in (ann, bob):
                await listener.wait_terminal(reply_id)
            await sse.wait_for(
                lambda e: e.get("type") == "generation" and e.get("state") == "complete"
            )
            assert ann.durable() == bob.durable() == sse.durable()
            assert sse.text_of(reply_id) == "".join(pieces)
            ready = await http.get("/readyz")
            assert ready.json()["status"] == "ok"
            rooms = await http.get("/api/rooms")
            assert rooms.status_code == 200
        finally:
            await sse.close()
            await ann.close()
            await bob.close()
