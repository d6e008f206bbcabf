"""The raw wire of /v1/ with plain httpx: the SSE framing OpenAI's clients parse, the
error shape for every refusal (404 and 405 too), and Hypothesis bodies that never get a
500 (tests/test_hostile_input.py's strategies)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.openai_server import Scenario
from tests.test_hostile_input import HOSTILE, json_values, nasty_text, strings

pytestmark = pytest.mark.django_db(transaction=True)

PIECES = ("one ", "two ", "three")


@pytest.fixture
def http(team) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {team['ann']}"}
    with httpx.Client(base_url=f"{team['server'].http_url}/v1", headers=headers, timeout=30) as c:
        yield c


def blocks(raw: str) -> list[dict[str, str]]:
    """SSE blocks as fields; asserts every line is a field or a comment."""
    found = []
    assert raw.endswith("\n\n"), raw[-200:]
    for block in raw.split("\n\n")[:-1]:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            name, sep, value = line.partition(": ")
            assert sep, line
            assert name in ("data", "event", "id", "retry"), line
            fields[name] = value
        if fields:
            found.append(fields)
    return found


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert isinstance(error["type"], str)
    return error


def test_chat_completion_chunks_are_data_lines_ending_with_done(team, http, llm):
    llm.set_default(Scenario.normal(PIECES))
    body = {
        "model": f"parley/{team['room'].slug}",
        "messages": [{"role": "user", "content": "count"}],
        "stream": True,
    }
    with http.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        raw = r.read().decode()
    found = blocks(raw)
    assert all(set(b) == {"data"} for b in found), found
    assert found[-1]["data"] == "[DONE]"
    chunks = [json.loads(b["data"]) for b in found[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "".join(PIECES)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"


def test_response_events_name_their_type_and_carry_the_room_seq(team, http, llm):
    llm.set_default(Scenario.normal(PIECES))
    body = {"model": f"parley/{team['room'].slug}", "input": "count", "stream": True}
    with http.stream("POST", "/responses", json=body) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    found = blocks(raw)
    events = [json.loads(b["data"]) for b in found]
    assert [b["event"] for b in found] == [e["type"] for e in events]
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    seqs = [e["sequence_number"] for e in events]
    assert seqs == sorted(seqs)
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len({e["sequence_number"] for e in deltas}) == len(deltas)  # one room event each
    # The seq is the room's: a member replaying after it gets the reply's next event.
    r = http.get(f"/responses/{events[0]['response']['id']}")
    assert r.json()["output"][0]["content"][0]["text"] == "".join(PIECES)


def test_unknown_urls_and_methods_are_openai_errors(team, http):
    assert_openai_error(http.get("/nothing/here"), 404)
    error = assert_openai_error(http.get("/chat/completions"), 405)
    assert "POST" in error["message"]
    assert_openai_error(http.get("/responses/resp_999999999"), 404)
    assert_openai_error(http.get("/responses/msg_1"), 404)
    assert_openai_error(http.post("/responses/resp_1/cancel"), 404)
    r = http.get("/models", headers={"Authorization": "Bearer nope"})
    assert assert_openai_error(r, 401)["code"] == "invalid_api_key"
    r = httpx.get(f"{team['server'].http_url}/v1/models")
    assert_openai_error(r, 401)
    error = assert_openai_error(http.post("/chat/completions", content=b"{not json"), 400)
    assert error["type"] == "invalid_request_error"
    assert_openai_error(http.get("/responses/resp_1?stream=true&starting_after=x"), 404)
    # A lone surrogate travels as a JSON escape (no client library will encode one).
    raw = '{"model": "parley/%s", "messages": [{"role": "user", "content": "a \\ud800"}]}'
    r = http.post("/chat/completions", content=(raw % team["room"].slug).encode())
    error = assert_openai_error(r, 400)
    assert (error["param"], error["type"]) == ("messages[0].content", "invalid_request_error")
    assert "surrogate" in error["message"]


# A body's fields as OpenAI clients send them, with hostile values.
FIELDS = [
    "model",
    "messages",
    "input",
    "stream",
    "stream_options",
    "n",
    "tools",
    "temperature",
    "max_tokens",
    "max_output_tokens",
    "stop",
    "background",
    "instructions",
]


@st.composite
def openai_bodies(draw: Any, model: str) -> bytes:
    kind = draw(st.sampled_from(["object", "object", "object", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=60))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]) | strings},
        optional={
            "content": strings
            | json_values
            | st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["text", "input_text", "image_url"]) | strings},
                    optional={"text": strings | json_values},
                ),
                max_size=3,
            )
        },
    )
    body: dict[str, Any] = draw(
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=5)
    )
    if draw(st.booleans()):
        body["model"] = draw(st.sampled_from([model, f"{model}/assistant"]) | nasty_text)
    if draw(st.booleans()):
        body["messages"] = draw(st.lists(message, max_size=3))
    if draw(st.booleans()):
        body["input"] = draw(strings | st.lists(message, max_size=2))
    return json.dumps(body).encode()


def test_bodies_never_get_a_500(team, http, llm):
    llm.set_default(Scenario.normal(("ok",)))
    model = f"parley/{team['room'].slug}"
    start = len(team["server"].lines)

    @HOSTILE
    @given(
        body=openai_bodies(model),
        endpoint=st.sampled_from(["/chat/completions", "/responses"]),
        name=nasty_text,
    )
    def check(body: bytes, endpoint: str, name: str) -> None:
        r = http.post(endpoint, content=body, headers={"Content-Type": "application/json"})
        # 503 only as the room's line being full (background replies pile up): `busy`.
        assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:500])
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "busy", r.text
        elif r.status_code >= 400:
            assert_openai_error(r, r.status_code)
        quoted = name.encode("utf-8", "surrogatepass").hex()
        for path in (f"/models/{quoted}x", f"/responses/{quoted}x", f"/models/parley/{quoted}x"):
            got = http.get(path)
            assert got.status_code in (404, 400), got.text[:300]
            assert_openai_error(got, got.status_code)

    check()
    log = "\n".join(team["server"].lines[start:])
    assert "Traceback" not in log, log[-4000:]
    assert " 500 " not in log


def test_a_retry_with_the_same_idempotency_key_posts_nothing_twice(team, http, llm):
    """The SDKs' ``Idempotency-Key`` is the send's client_id: a client retrying a request
    whose answer it lost gets the first request's reply, and the room holds the question
    once."""
    from chat.models import Message

    llm.set_default(Scenario.normal(PIECES))
    room = team["room"]
    body = {"model": f"parley/{room.slug}", "messages": [{"role": "user", "content": "once"}]}
    key = {"Idempotency-Key": "retry-7f3a"}
    start = len(llm.requests)
    first = http.post("/chat/completions", json=body, headers=key)
    assert first.status_code == 200, first.text
    again = http.post("/chat/completions", json=body, headers=key)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["choices"][0]["message"]["content"] == "".join(PIECES)
    # Retried as a stream, and on the Responses API: the same reply, whole, and its end.
    with http.stream("POST", "/chat/completions", json={**body, "stream": True}, headers=key) as r:
        found = blocks(r.read().decode())
    assert found[-1]["data"] == "[DONE]"
    chunks = [json.loads(b["data"]) for b in found[:-1]]
    assert {c["id"] for c in chunks} == {first.json()["id"]}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "".join(PIECES)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    again_body = {"model": body["model"], "input": "once", "stream": True}
    with http.stream("POST", "/responses", json=again_body, headers=key) as r:
        events = [json.loads(b["data"]) for b in blocks(r.read().decode())]
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "".join(PIECES)
    asked = Message.objects.filter(room=room, text="once")
    assert asked.count() == 1
    assert len(llm.requests) == start + 1  # the model was asked once
    # Another key is another question.
    other = http.post("/chat/completions", json=body, headers={"Idempotency-Key": "retry-8e2b"})
    assert other.json()["id"] != first.json()["id"]
    assert asked.count() == 2
