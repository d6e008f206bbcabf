"""One OpenTelemetry trace per AI turn (core/tracing.py, PARLEY_TRACING=on), over a real
daphne whose spans go to the SDK's InMemorySpanExporter (PARLEY_TRACING_EXPORTER=memory)
and are read through the process's SIGUSR1 debug dump (PARLEY_FASTPATH_STATS=1).

Off (the default), a reply is served as ever on a server where opentelemetry cannot be
imported (as without the "otel" extra), and the same dump says nothing of it was imported.
On without what it needs, the server refuses to start and says what to install.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest
from django.test import override_settings

from core import checks, tracing
from tests.support.daphne import ROOT, DaphneServer
from tests.support.openai_server import Scenario
from tests.support.rooms import ask
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)

TRACED = {
    "PARLEY_TRACING": "on",
    "PARLEY_TRACING_EXPORTER": "memory",
    "PARLEY_FASTPATH_STATS": "1",
}


class Dump:
    """The tracing state of a daphne started with PARLEY_FASTPATH_STATS=1, over SIGUSR1."""

    def __init__(self, server: DaphneServer) -> None:
        self.server = server
        self.reads = 0

    async def read(self) -> dict[str, Any]:
        assert self.server.proc is not None
        self.reads += 1
        needle = f"{tracing.DEBUG_LOG_PREFIX}{self.reads}: "
        os.kill(self.server.proc.pid, signal.SIGUSR1)
        line = await asyncio.to_thread(self.server.wait_log, needle, 10)
        return json.loads(line.partition(needle)[2])

    async def turn(self, message_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The finished spans of the reply's trace, by name, once its root has ended (the
        root ends just after the terminal event is out, so the test may see that first)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = (await self.read())["spans"]
            roots = [
                s
                for s in spans
                if s["name"] == "parley.turn"
                and str(s["attributes"].get("parley.message.id")) == message_id
            ]
            if roots:
                assert len(roots) == 1, roots
                root = roots[0]
                tree = [s for s in spans if s["trace_id"] == root["trace_id"]]
                return {s["name"]: s for s in tree} | {"_all": tree}
            assert time.monotonic() < deadline, f"no trace for reply {message_id}: {spans}"


@pytest.fixture
def room(make_user, make_room):
    ann, token = make_user("ann")
    return make_room(ann, "Traced"), token


def assert_one_turn(turn: dict[str, Any], *, room_id: int) -> None:
    """The shape of every turn's trace: a root with its two children, in time order."""
    root, queued, model = turn["parley.turn"], turn["parley.turn.queued"], turn["parley.model"]
    assert len(turn["_all"]) == 3, [s["name"] for s in turn["_all"]]  # never one per token
    assert root["parent_id"] is None
    assert queued["parent_id"] == root["span_id"]
    assert model["parent_id"] == root["span_id"]
    attrs = root["attributes"]
    assert attrs["parley.room.id"] == room_id
    assert attrs["parley.assistant"] == "assistant"
    assert attrs["gen_ai.request.model"] == "fake-model"
    assert root["start_ns"] == queued["start_ns"]
    assert queued["end_ns"] <= model["start_ns"] <= model["end_ns"] <= root["end_ns"]


def no_text(turn: dict[str, Any], *texts: str) -> None:
    """No span carries a message's text, in any attribute."""
    for span in turn["_all"]:
        for value in span["attributes"].values():
            for text in texts:
                assert text not in str(value), (span["name"], value)


async def test_a_reply_is_one_trace_from_the_send_to_its_end(daphne_factory, llm, room):
    room, token = room
    server = daphne_factory(**TRACED)
    dump = Dump(server)
    # The first reply is paced by the test; the second waits in line behind it.
    llm.script(Scenario.stepped(["Hello", " there"]), Scenario.normal(["Second", " answer"]))
    ws = await RoomClient.connect(server.ws_url, room.slug, token=token)
    try:
        await ws.wait_type("hello")
        before = len(llm.requests)
        sent_ns = time.time_ns()
        first = await ask(ws, "first question", ask_ai=True)
        await llm.await_request(before)
        second = await ask(ws, "second question", ask_ai=True)
        llm.step()
        llm.step()
        first_end = await ws.wait_terminal(first, start=0)
        second_end = await ws.wait_terminal(second, start=0)
        assert first_end["state"] == second_end["state"] == "complete"
        one = await dump.turn(first)
        two = await dump.turn(second)
    finally:
        await ws.close()

    for turn in (one, two):
        assert_one_turn(turn, room_id=room.pk)
        no_text(turn, "first question", "second question", "Hello", "Second")
    root, model = one["parley.turn"], one["parley.model"]
    # From the send (accepted after the test sent it) to the end, with the outcome.
    assert sent_ns <= root["start_ns"]
    assert root["attributes"]["parley.reply.state"] == "complete"
    assert root["attributes"]["gen_ai.usage.output_tokens"] > 0
    assert root["attributes"]["gen_ai.usage.input_tokens"] > 0
    assert root["status"] == "UNSET"
    # The model's first token: one event, inside the model request.
    (first_token,) = model["events"]
    assert first_token["name"] == "first_token"
    assert model["start_ns"] <= first_token["ns"] <= model["end_ns"]
    # The second reply waited in line until the first had ended: its queued span says so.
    assert two["parley.turn.queued"]["end_ns"] >= root["end_ns"]
    assert two["parley.turn"]["trace_id"] != root["trace_id"]


async def test_a_stopped_reply_ends_its_trace_with_the_stop(daphne_factory, llm, room):
    room, token = room
    server = daphne_factory(**TRACED)
    llm.set_default(Scenario.endless())
    ws = await RoomClient.connect(server.ws_url, room.slug, token=token)
    try:
        await ws.wait_type("hello")
        reply = await ask(ws, "go on forever", ask_ai=True)
        await ws.wait_for(lambda e: e.get("type") == "delta" and e["message_id"] == reply)
        await ws.send(action="stop", message_id=reply)
        assert (await ws.wait_terminal(reply))["state"] == "stopped"
        turn = await Dump(server).turn(reply)
    finally:
        await ws.close()
    assert_one_turn(turn, room_id=room.pk)
    attrs = turn["parley.turn"]["attributes"]
    assert attrs["parley.reply.state"] == "stopped"
    assert attrs["parley.reply.stop_reason"] == "user"


async def test_a_failed_model_request_marks_the_trace_as_an_error(daphne_factory, llm, room):
    room, token = room
    server = daphne_factory(**TRACED)
    llm.set_default(Scenario.error_status(500, "model overloaded"))
    ws = await RoomClient.connect(server.ws_url, room.slug, token=token)
    try:
        await ws.wait_type("hello")
        reply = await ask(ws, "fail please", ask_ai=True)
        assert (await ws.wait_terminal(reply))["state"] == "failed"
        turn = await Dump(server).turn(reply)
    finally:
        await ws.close()
    assert_one_turn(turn, room_id=room.pk)
    assert turn["parley.model"]["status"] == "ERROR"
    assert turn["parley.model"]["events"] == []  # no first token
    assert turn["parley.turn"]["status"] == "ERROR"
    assert turn["parley.turn"]["attributes"]["parley.reply.state"] == "failed"


# What an installation without the "otel" extra looks like: opentelemetry unimportable.
WITHOUT_OTEL = {"PYTHONPATH": str(ROOT / "tests" / "support" / "no_opentelemetry")}


async def test_off_a_reply_needs_and_imports_nothing_of_opentelemetry(daphne_factory, llm, room):
    room, token = room
    # Tracing off (the default), on a server where opentelemetry cannot be imported.
    server = daphne_factory(PARLEY_FASTPATH_STATS="1", **WITHOUT_OTEL)
    ws = await RoomClient.connect(server.ws_url, room.slug, token=token)
    try:
        await ws.wait_type("hello")
        reply = await ask(ws, "hello", ask_ai=True)
        assert (await ws.wait_terminal(reply))["state"] == "complete"
        assert ws.text_of(reply) == "Hello, world!"
    finally:
        await ws.close()
    state = await Dump(server).read()
    # Nothing was imported (so no span either), and the reply was served as ever.
    assert state == {"opentelemetry_imported": False, "tracing_loaded": False}


async def test_off_with_the_extra_installed_the_tracing_side_never_loads(daphne_factory, llm, room):
    room, token = room
    server = daphne_factory(PARLEY_FASTPATH_STATS="1")
    ws = await RoomClient.connect(server.ws_url, room.slug, token=token)
    try:
        await ws.wait_type("hello")
        reply = await ask(ws, "hello", ask_ai=True)
        assert (await ws.wait_terminal(reply))["state"] == "complete"
    finally:
        await ws.close()
    state = await Dump(server).read()
    # opentelemetry itself is there (redis-py imports it when installed: core/tracing.py
    # debug_state), but Parley made no tracer and no span.
    assert state["tracing_loaded"] is False
    assert "spans" not in state


def test_off_in_process_a_turn_costs_one_check() -> None:
    with override_settings(PARLEY_TRACING=False):
        assert tracing.enabled() is False
        assert (
            tracing.turn_begin(
                sent_ns=time.time_ns(), room_id=1, message_id=1, assistant="a", model="m"
            )
            is None
        )
        assert checks.tracing_installed() == []


# --- on, without what it needs: refused at start ----------------------------------------


def refused(env: dict[str, str]) -> str:
    """The log of a daphne that must refuse to start (it exits with an error)."""
    server = DaphneServer({"VOICE_PRELOAD": "0", "STT_PRELOAD": "0", **env})
    with pytest.raises(RuntimeError, match="daphne exited") as failed:
        server.start(timeout=60)
    assert server.proc is not None
    assert server.proc.wait(timeout=10) != 0
    return str(failed.value)


def test_on_without_the_sdk_refuses_to_start_and_says_what_to_install() -> None:
    log = refused({"PARLEY_TRACING": "on", **WITHOUT_OTEL})
    assert checks.NO_OPENTELEMETRY in log
    assert "pip install 'opentelemetry-api==1.45.2' 'opentelemetry-sdk==1.45.2'" in log


def test_on_with_an_exporter_nobody_installed_refuses_to_start() -> None:
    # OTEL_TRACES_EXPORTER defaults to otlp, whose package is the operator's to install.
    log = refused({"PARLEY_TRACING": "on", "OTEL_TRACES_EXPORTER": "otlp"})
    assert checks.NO_EXPORTER in log
    assert "pip install opentelemetry-exporter-otlp-proto-http" in log
