"""The OpenAI-compatible speech engine against a real loopback server speaking the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import pytest

from tests.support.tts.common import pcm_rms, tone
from tests.support.tts.openai import PCM_SAMPLE_RATE, FakeSpeechServer, SpeechScenario
from voice.engines.base import MAX_CHUNK_SECONDS, AudioChunk, TTSError
from voice.engines.openai import OpenAISpeechEngine

TEXT = "Hello there, how can I help you today?"
# A user who presses stop: the speech server sees the connection close within this.
STOP_DEADLINE = 0.2

EngineFactory = Callable[..., OpenAISpeechEngine]


@pytest.fixture(params=["thread", "loop"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeSpeechServer]:
    """The fake in a background thread (as daphne tests use it) and in the test's loop."""
    fake = FakeSpeechServer(api_key="sk-test")
    if request.param == "thread":
        with fake:
            yield fake
    else:
        async with fake:
            yield fake


@pytest.fixture
async def make_engine(server: FakeSpeechServer) -> AsyncIterator[EngineFactory]:
    made: list[OpenAISpeechEngine] = []

    def make(**overrides: object) -> OpenAISpeechEngine:
        options: dict[str, object] = {
            "base_url": server.base_url,
            "api_key": "sk-test",
            "model": "gpt-4o-mini-tts",
            "voice": "alloy",
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
        }
        options.update(overrides)
        engine = OpenAISpeechEngine(**options)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.aclose()


async def collect(stream: AsyncGenerator[AudioChunk, None]) -> list[AudioChunk]:
    async with contextlib.aclosing(stream) as chunks:
        return [chunk async for chunk in chunks]


async def read_into(got: list[AudioChunk], chunks: AsyncIterator[AudioChunk]) -> None:
    async for chunk in chunks:
        got.append(chunk)


async def error_of(stream: AsyncGenerator[AudioChunk, None]) -> TTSError:
    with pytest.raises(TTSError) as caught:
        await collect(stream)
    return caught.value


def expected_audio(text: str, rate: int, ms_per_char: float = 30.0) -> bytes:
    return tone(len(text) * ms_per_char / 1000, rate)


async def test_pcm_is_requested_and_streamed_back_at_24_khz(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    engine = make_engine(speed=1.25, instructions="Speak warmly.")
    assert engine.sample_rate == PCM_SAMPLE_RATE

    chunks = await collect(engine.synthesize(f"  {TEXT} "))

    request = server.request(0)
    assert request.method == "POST"
    assert request.path == "/v1/audio/speech"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body == {
        "model": "gpt-4o-mini-tts",
        "input": TEXT,
        "voice": "alloy",
        "response_format": "pcm",
        "speed": 1.25,
        "instructions": "Speak warmly.",
    }
    assert {c.sample_rate for c in chunks} == {PCM_SAMPLE_RATE}
    assert b"".join(c.pcm for c in chunks) == expected_audio(TEXT, PCM_SAMPLE_RATE)
    assert pcm_rms(chunks[0].pcm) > 1000
    assert len(chunks) > 1
    assert all(len(c.pcm) % 2 == 0 and c.duration <= MAX_CHUNK_SECONDS for c in chunks)


@pytest.mark.parametrize("exact_size", [False, True])
async def test_wav_takes_its_rate_from_the_header(
    server: FakeSpeechServer, make_engine: EngineFactory, exact_size: bool
) -> None:
    server.script(SpeechScenario.normal(wav_sample_rate=16000, exact_wav_size=exact_size))
    engine = make_engine(response_format="wav")
    assert engine.sample_rate is None  # only the header will tell

    chunks = await collect(engine.synthesize(TEXT))

    assert server.request(0).body["response_format"] == "wav"
    assert {c.sample_rate for c in chunks} == {16000}
    assert b"".join(c.pcm for c in chunks) == expected_audio(TEXT, 16000)


async def test_audio_is_passed_on_as_it_arrives(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    server.script(SpeechScenario.slow(delay=0.1))
    stream = make_engine().synthesize(TEXT)
    first = await anext(stream)
    # The first audio is here while the server is still sending the rest.
    assert first.pcm
    assert not server.request(0).finished
    rest = await collect(stream)
    assert first.pcm + b"".join(c.pcm for c in rest) == expected_audio(TEXT, PCM_SAMPLE_RATE)


async def test_closing_the_stream_closes_the_connection(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    server.script(SpeechScenario.endless(interval=0.01))
    stream = make_engine().synthesize(TEXT)
    await anext(stream)
    await anext(stream)
    stopped = time.monotonic()
    await stream.aclose()
    request = await server.await_disconnect(0)
    assert request.closed_by == "client"
    assert request.disconnected_at is not None
    assert request.disconnected_at - stopped < STOP_DEADLINE


async def test_cancelling_the_task_closes_the_connection(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    server.script(SpeechScenario.endless(interval=0.01))
    engine = make_engine()
    first_audio = asyncio.Event()

    async def speak() -> None:
        async for _ in engine.synthesize(TEXT):
            first_audio.set()

    task = asyncio.create_task(speak())
    await asyncio.wait_for(first_audio.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    request = await server.await_disconnect(0)
    assert request.closed_by == "client"


async def test_one_connection_serves_replies_one_after_another(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    await collect(engine.synthesize("First."))
    await collect(engine.synthesize("Second."))
    first, second = server.requests
    assert first.connection == second.connection
    assert [first.body["input"], second.body["input"]] == ["First.", "Second."]


async def test_blank_text_sends_no_request(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    assert await collect(make_engine().synthesize(" \n ")) == []
    assert server.requests == []


# -- errors ------------------------------------------------------------------------------


async def test_a_wrong_key_is_reported_with_the_servers_words(make_engine: EngineFactory) -> None:
    error = await error_of(make_engine(api_key="sk-wrong").synthesize(TEXT))
    assert error.code == "upstream_status"
    assert error.reason == (
        "The speech server answered HTTP 401 Unauthorized: Incorrect API key provided."
    )


async def test_an_error_status_is_reported(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    server.script(SpeechScenario.error_status(503, "The speech model is overloaded."))
    error = await error_of(make_engine().synthesize(TEXT))
    assert error.code == "upstream_status"
    assert "HTTP 503" in error.reason
    assert "overloaded" in error.reason


async def test_json_instead_of_audio_is_reported(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    server.script(SpeechScenario.json_instead("Input text is empty."))
    error = await error_of(make_engine().synthesize(TEXT))
    assert error.code == "upstream_status"
    assert error.reason == "The speech server reported an error: Input text is empty."


async def test_a_server_that_hangs_up_midway_is_reported(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    server.script(SpeechScenario.disconnect(after=2))
    got: list[AudioChunk] = []
    with pytest.raises(TTSError) as caught:
        await read_into(got, make_engine().synthesize(TEXT))
    assert caught.value.code == "disconnected"
    assert got  # what had arrived was passed on


async def test_a_silent_server_times_out(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    server.script(SpeechScenario.hang(after=1))
    error = await error_of(make_engine(read_timeout=0.3).synthesize(TEXT))
    assert error.code == "timeout"
    assert error.reason == "The speech server sent nothing for 0.3 s."


async def test_nothing_listening_is_refused(make_engine: EngineFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = make_engine(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-secret")
    error = await error_of(engine.synthesize(TEXT))
    assert error.code == "refused"
    assert error.reason == (
        f"Could not connect to the speech server at http://127.0.0.1:{port}: connection refused."
    )
    assert "sk-secret" not in error.reason


def test_a_bad_configuration_fails_at_construction() -> None:
    options: dict[str, object] = {
        "api_key": None,
        "model": "m",
        "voice": "v",
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
    }
    with pytest.raises(ValueError, match="http"):
        OpenAISpeechEngine(base_url="ftp://x", **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="response_format"):
        OpenAISpeechEngine(base_url="http://x", response_format="mp3", **options)  # type: ignore[arg-type]


# -- the realtime session of an engine without streamed input -----------------------------


async def test_the_default_session_sends_each_clean_clause_in_order(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    async with await engine.open_session() as session:
        for delta in ["**Sure**", ", here", " it is. See https://example.com/x", " now 😀."]:
            await session.feed(delta)
        first = await asyncio.wait_for(anext(session), timeout=5)
        assert server.request(0).body["input"] == "Sure,"  # spoken before the text ended
        await session.finish()
        rest = [chunk async for chunk in session]

    inputs = [r.body["input"] for r in server.requests]
    assert inputs == ["Sure,", "here it is.", "See now."]
    audio = first.pcm + b"".join(c.pcm for c in rest)
    assert audio == b"".join(expected_audio(text, PCM_SAMPLE_RATE) for text in inputs)


async def test_a_failing_clause_ends_the_session_with_the_error(
    server: FakeSpeechServer, make_engine: EngineFactory
) -> None:
    server.script(SpeechScenario.normal(), SpeechScenario.error_status(500, "boom"))
    async with await make_engine().open_session() as session:
        await session.feed("One, two, three.")
        await session.finish()
        got: list[AudioChunk] = []
        with pytest.raises(TTSError) as caught:
            await read_into(got, session)
    assert caught.value.code == "upstream_status"
    assert got  # "One," was spoken before "two," failed
    assert [r.body["input"] for r in server.requests] == ["One,", "two,"]
