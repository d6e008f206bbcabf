"""The OpenAI-compatible backend against a real loopback server speaking the real protocol."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from chat.llm.base import ChatMessage, LLMError, Usage
from chat.llm.openai import OpenAIBackend
from tests.support.openai_server import FakeOpenAIServer, Scenario

MESSAGES = [
    ChatMessage(role="system", content="You are helpful."),
    ChatMessage(role="user", content="alice: what is 2+2?"),
]
# The promise to a user who presses stop: the model server sees the connection close
# within 100 ms (docs/protocol.md "Who controls a reply").
STOP_DEADLINE = 0.1

BackendFactory = Callable[..., OpenAIBackend]


@pytest.fixture(params=["thread", "loop"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeOpenAIServer]:
    """The fake in a background thread (as daphne tests use it) and in the test's loop."""
    fake = FakeOpenAIServer()
    if request.param == "thread":
        with fake:
            yield fake
    else:
        async with fake:
            yield fake


@pytest.fixture
async def make_backend(server: FakeOpenAIServer) -> AsyncIterator[BackendFactory]:
    made: list[OpenAIBackend] = []

    def make(**overrides: object) -> OpenAIBackend:
        options: dict[str, object] = {
            "base_url": server.base_url,
            "api_key": "sk-test",
            "model": "gpt-test",
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
            "max_tokens": 64,
            "temperature": 0.5,
        }
        options.update(overrides)
        backend = OpenAIBackend(**options)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


async def collect(backend: OpenAIBackend, usage: Usage | None = None) -> list[str]:
    return [piece async for piece in backend.stream(MESSAGES, usage or Usage())]


async def collect_until_error(
    backend: OpenAIBackend, usage: Usage | None = None
) -> tuple[list[str], LLMError]:
    got: list[str] = []
    try:
        async for piece in backend.stream(MESSAGES, usage or Usage()):
            got.append(piece)
    except LLMError as error:
        return got, error
    pytest.fail(f"the stream ended without LLMError after {got!r}")


@pytest.fixture
def unused_port() -> Iterator[int]:
    """A port bound but not listening, so connecting to it is refused; nobody can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- a reply --------------------------------------------------------------------------------


async def test_streams_the_exact_pieces_and_usage(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    pieces = ["Two", " plus", " two", " is", " **4**.", "\n", "ünïcødé 🎉"]
    server.script(Scenario.normal(pieces, prompt_tokens=23))
    usage = Usage()

    assert await collect(make_backend(), usage) == pieces

    assert (usage.prompt_tokens, usage.completion_tokens) == (23, len(pieces))
    # The fake may run in another thread and mark the request a moment after the client read
    # it all; wait_finished times out (and fails) if the response was cut short.
    assert (await server.await_finished(0)).finished


async def test_request_carries_model_messages_limits_and_key(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    await collect(make_backend(base_url=server.base_url + "/"))

    request = server.request(0)
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "alice: what is 2+2?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.5,
    }


async def test_no_key_sends_no_authorization(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    assert await collect(make_backend(api_key="")) == ["Hello", ", ", "world", "!"]

    assert "authorization" not in server.request(0).headers


async def test_skips_sse_comments_and_other_fields(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    server.script(Scenario.normal(["a", "b"], sse_extras=True))

    assert await collect(make_backend()) == ["a", "b"]


async def test_slow_stream_delivers_each_piece_as_it_comes(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    delay = 0.1
    server.script(Scenario.slow(["one", " two", " three"], delay=delay))
    arrivals: list[tuple[str, float]] = []

    async for piece in make_backend(read_timeout=2.0).stream(MESSAGES, Usage()):
        arrivals.append((piece, time.monotonic()))

    assert [piece for piece, _ in arrivals] == ["one", " two", " three"]
    # Streamed, not buffered until the end: the first piece came well before the last.
    assert arrivals[-1][1] - arrivals[0][1] >= 1.5 * delay


async def test_connection_is_reused_after_a_complete_reply(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    backend = make_backend()
    await collect(backend)
    await collect(backend)

    assert server.request(0).connection == server.request(1).connection


async def test_aclose_of_the_backend_closes_its_pooled_connection(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    backend = make_backend()
    await collect(backend)
    assert server.request(0).disconnected_at is None  # kept alive for the next reply

    await backend.aclose()

    record = await server.await_disconnect(0, timeout=2)
    assert record.closed_by == "client"
    assert record.finished


# -- failures a user sees --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Incorrect API key provided: sk-wrong."),
        (500, "The server had an error while processing your request."),
        (404, "The model `gpt-nope` does not exist or you do not have access to it."),
    ],
)
async def test_error_status_carries_the_server_message(
    server: FakeOpenAIServer, make_backend: BackendFactory, status: int, message: str
) -> None:
    server.script(Scenario.error_status(status, message))

    got, error = await collect_until_error(make_backend())

    assert got == []
    assert error.code == "upstream_status"
    assert str(status) in error.reason
    assert message in error.reason


async def test_long_error_message_is_cut(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    server.script(Scenario.error_status(500, "x" * 100_000))

    _, error = await collect_until_error(make_backend())

    assert error.code == "upstream_status"
    assert "xxxx" in error.reason
    assert len(error.reason) < 400


async def test_wrong_key_on_a_server_that_checks(
    make_backend: BackendFactory,
) -> None:
    async with FakeOpenAIServer(api_key="sk-right") as strict:
        _, error = await collect_until_error(make_backend(base_url=strict.base_url))

    assert error.code == "upstream_status"
    assert "401" in error.reason
    assert "Incorrect API key" in error.reason


async def test_malformed_chunk_after_good_pieces(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    server.script(Scenario.malformed(["good", " start", " lost"], after=2))

    got, error = await collect_until_error(make_backend())

    assert got == ["good", " start"]
    assert error.code == "malformed"


@pytest.mark.parametrize(
    "bad_line",
    [
        'data: {"choices": "not a list"}',
        'data: {"choices": [{"delta": {"content": 42}}]}',
        "data: [1, 2, 3]",
    ],
)
async def test_chunk_of_the_wrong_shape_is_malformed(
    server: FakeOpenAIServer, make_backend: BackendFactory, bad_line: str
) -> None:
    server.script(Scenario.malformed(["ok"], after=1, bad_line=bad_line))

    got, error = await collect_until_error(make_backend())

    assert got == ["ok"]
    assert error.code == "malformed"


async def test_error_event_mid_stream(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    server.script(Scenario.error_event(["partial"], after=1, message="CUDA out of memory"))

    got, error = await collect_until_error(make_backend())

    assert got == ["partial"]
    assert error.code == "upstream_status"
    assert "CUDA out of memory" in error.reason


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close-delimited"])
async def test_server_closing_mid_reply_is_disconnected(
    server: FakeOpenAIServer, make_backend: BackendFactory, chunked: bool
) -> None:
    server.script(Scenario.disconnect(["half", " a", " reply"], after=2, chunked=chunked))

    got, error = await collect_until_error(make_backend())

    assert got == ["half", " a"]
    assert error.code == "disconnected"


async def test_silent_server_times_out_and_is_hung_up_on(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    server.script(Scenario.hang(["thinking"], after=1))

    started = time.monotonic()
    async with asyncio.timeout(5):
        got, error = await collect_until_error(make_backend(read_timeout=0.5))

    assert got == ["thinking"]
    assert error.code == "timeout"
    assert 0.4 <= time.monotonic() - started < 3
    record = await server.await_disconnect(0, timeout=2)
    assert record.closed_by == "client"


async def test_nothing_listening_is_refused(make_backend: BackendFactory, unused_port: int) -> None:
    backend = make_backend(base_url=f"http://127.0.0.1:{unused_port}/v1")

    _, error = await collect_until_error(backend)

    assert error.code == "refused"
    assert f"127.0.0.1:{unused_port}" in error.reason
    assert "refused" in error.reason


async def test_unknown_host_is_refused(make_backend: BackendFactory) -> None:
    backend = make_backend(base_url="http://no-such-host.invalid/v1")

    _, error = await collect_until_error(backend)

    assert error.code == "refused"


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        OpenAIBackend(
            base_url="localhost:11434",
            api_key=None,
            model="m",
            connect_timeout=1,
            read_timeout=1,
        )


# -- stopping --------------------------------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    server.script(Scenario.endless(interval=0.01))
    backend = make_backend()
    first_piece = asyncio.Event()
    got: list[str] = []

    async def consume() -> None:
        async for piece in backend.stream(MESSAGES, Usage()):
            got.append(piece)
            first_piece.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await first_piece.wait()
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    record = await server.await_disconnect(0, timeout=2)
    assert record.closed_by == "client"
    assert not record.finished
    assert record.disconnected_at is not None
    assert record.disconnected_at - cancelled_at < STOP_DEADLINE
    assert got


async def test_aclose_of_the_stream_closes_the_upstream_connection(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    server.script(Scenario.endless(interval=0.01))
    stream = make_backend().stream(MESSAGES, Usage())
    assert await anext(stream) == "tick "

    closed_at = time.monotonic()
    await stream.aclose()

    record = await server.await_disconnect(0, timeout=2)
    assert record.closed_by == "client"
    assert not record.finished
    assert record.disconnected_at is not None
    assert record.disconnected_at - closed_at < STOP_DEADLINE


async def test_cancel_while_the_server_is_silent_closes_the_connection(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    server.script(Scenario.hang(after=0))
    task = asyncio.create_task(collect(make_backend()))
    await server.await_request(0)

    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    record = await server.await_disconnect(0, timeout=2)
    assert record.disconnected_at is not None
    assert record.disconnected_at - cancelled_at < STOP_DEADLINE


async def test_next_reply_after_a_stop_uses_a_fresh_connection(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    server.script(Scenario.endless(interval=0.01), Scenario.normal(["fresh"]))
    backend = make_backend()
    stream = backend.stream(MESSAGES, Usage())
    await anext(stream)
    await stream.aclose()

    assert await collect(backend) == ["fresh"]

    assert server.request(1).connection != server.request(0).connection
