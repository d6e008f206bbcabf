"""Qwen-TTS (DashScope) in all three voice modes, against a loopback server speaking its
protocols: the HTTP API with its audio-file download, the same API over SSE, and the
realtime WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import pytest
from pytest_django.fixtures import Settings

from tests.support.tts.common import pcm_rms, tone
from tests.support.tts.qwen import (
    GENERATION_PATH,
    QWEN_SAMPLE_RATE,
    FakeQwenServer,
    QwenRealtimeScenario,
    QwenScenario,
)
from voice.engines.base import (
    MAX_CHUNK_SECONDS,
    AudioChunk,
    SegmentingSession,
    TTSError,
    TTSSession,
)
from voice.engines.qwen import QwenEngine
from voice.registry import build_engine

KEY = "sk-test-qwen"
TEXT = "Hello there, how can I help you today?"
# A user who presses stop: the service sees the connection close within this.
STOP_DEADLINE = 0.2

EngineFactory = Callable[..., QwenEngine]


@pytest.fixture(params=["thread", "loop"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeQwenServer]:
    """The fake in a background thread (as daphne tests use it) and in the test's loop."""
    fake = FakeQwenServer(api_key=KEY, realtime_model="qwen3-tts-flash-realtime")
    if request.param == "thread":
        with fake:
            yield fake
    else:
        async with fake:
            yield fake
    assert fake.protocol_errors == []


@pytest.fixture
async def make_engine(server: FakeQwenServer) -> AsyncIterator[EngineFactory]:
    made: list[QwenEngine] = []

    def make(**overrides: object) -> QwenEngine:
        options: dict[str, object] = {
            "api_key": KEY,
            "base_url": server.base_url,
            "realtime_url": server.realtime_url,
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
        }
        options.update(overrides)
        engine = QwenEngine(**options)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.aclose()


def audio_for(*texts: str, ms_per_char: float = 20.0) -> bytes:
    """What the fake says for each text, in order."""
    return b"".join(tone(len(text) * ms_per_char / 1000, QWEN_SAMPLE_RATE) for text in texts)


async def collect(stream: AsyncGenerator[AudioChunk, None]) -> list[AudioChunk]:
    async with contextlib.aclosing(stream) as chunks:
        return [chunk async for chunk in chunks]


async def drain(session: TTSSession) -> bytes:
    return b"".join([chunk.pcm async for chunk in session])


async def read_all(source: TTSSession | AsyncGenerator[AudioChunk, None]) -> None:
    if isinstance(source, TTSSession):
        async with source as session:
            await session.feed("Hello there. ")
            await session.finish()
            await drain(session)
    else:
        await collect(source)


async def error_of(source: TTSSession | AsyncGenerator[AudioChunk, None]) -> TTSError:
    with pytest.raises(TTSError) as caught:
        await read_all(source)
    return caught.value


def assert_chunked(chunks: list[AudioChunk]) -> None:
    assert {c.sample_rate for c in chunks} == {QWEN_SAMPLE_RATE}
    assert len(chunks) > 1
    assert all(len(c.pcm) % 2 == 0 and c.duration <= MAX_CHUNK_SECONDS for c in chunks)


# -- normal: one request, one audio file ---------------------------------------------------


async def test_normal_mode_asks_for_the_whole_text_then_downloads_its_audio_file(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    chunks = await collect(make_engine(language_type="English").synthesize(f"  {TEXT} "))

    assert b"".join(c.pcm for c in chunks) == audio_for(TEXT)
    assert pcm_rms(chunks[0].pcm) > 1000
    assert_chunked(chunks)
    generation, download = server.http.requests
    assert (generation.kind, generation.method, generation.path) == (
        "generation",
        "POST",
        GENERATION_PATH,
    )
    assert generation.headers["authorization"] == f"Bearer {KEY}"
    assert not generation.sse
    assert generation.body == {
        "model": "qwen3-tts-flash",
        "input": {"text": TEXT, "voice": "Cherry", "language_type": "English"},
    }
    # The file comes from the vendor's store, which is not given the key.
    assert (download.kind, download.method) == ("file", "GET")
    assert "authorization" not in download.headers


async def test_blank_text_sends_nothing(server: FakeQwenServer, make_engine: EngineFactory) -> None:
    engine = make_engine()
    assert await collect(engine.synthesize("  \n ")) == []
    assert await collect(engine.synthesize_streaming(" ")) == []
    assert server.http.requests == []


async def test_the_audio_file_is_passed_on_as_it_downloads(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.http.script(QwenScenario.slow(delay=0.1))
    stream = make_engine().synthesize(TEXT)
    first = await anext(stream)
    assert first.pcm
    assert not server.http.request(1).finished  # the file is still coming
    rest = await collect(stream)
    assert first.pcm + b"".join(c.pcm for c in rest) == audio_for(TEXT)


# -- streaming: each sentence over SSE -------------------------------------------------------


async def test_streaming_mode_speaks_each_sentence_over_sse_as_the_reply_arrives(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    async with SegmentingSession(engine, clause_mode=False) as session:
        await session.feed("Hello there, friend. How")
        # The first sentence is spoken while the rest of the reply is still being written.
        first = await asyncio.wait_for(anext(session), timeout=5)
        await session.feed(" are **you**?")
        await session.finish()
        audio = first.pcm + await drain(session)

    assert audio == audio_for("Hello there, friend.", "How are you?")
    requests = server.http.requests
    assert [r.kind for r in requests] == ["generation", "generation"]  # no file to fetch
    assert all(r.sse and r.headers["x-dashscope-sse"] == "enable" for r in requests)
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in requests)
    assert [r.body["input"]["text"] for r in requests] == ["Hello there, friend.", "How are you?"]


async def test_sse_audio_is_passed_on_as_it_arrives(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.http.script(QwenScenario.slow(delay=0.1))
    stream = make_engine().synthesize_streaming(TEXT)
    first = await anext(stream)
    assert first.pcm
    assert not server.http.request(0).finished
    rest = await collect(stream)
    chunks = [first, *rest]
    assert b"".join(c.pcm for c in chunks) == audio_for(TEXT)
    assert_chunked(chunks)


async def test_one_connection_serves_sentences_one_after_another(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    await collect(engine.synthesize_streaming("First sentence."))
    await collect(engine.synthesize_streaming("Second sentence."))
    first, second = server.http.requests
    assert first.connection == second.connection


# -- realtime: the WebSocket -----------------------------------------------------------------


async def test_realtime_text_goes_out_as_it_arrives_and_audio_comes_back_before_the_end(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    async with await engine.open_session() as session:
        await session.feed("Hello there. ")
        await session.feed("How")
        # The first words reach the service on their own, before the reply is complete...
        (first_text,) = await server.realtime.await_events("input_text_buffer.append", 1)
        assert first_text.text == "Hello there."
        # ...and their audio is back while the model is still writing.
        first = await asyncio.wait_for(anext(session), timeout=5)
        assert first.sample_rate == QWEN_SAMPLE_RATE
        await session.feed(" are **you**? ")
        await server.realtime.await_events("input_text_buffer.append", 2)
        assert server.realtime.events_of("session.finish") == []
        await session.feed("你好，世界😀！")
        await session.finish()
        audio = first.pcm + await drain(session)

    texts = [e.text or "" for e in server.realtime.events_of("input_text_buffer.append")]
    assert "".join(texts) == "Hello there. How are you? 你好，世界！"
    assert audio == audio_for(*texts)
    kinds = [e.type for e in server.realtime.events]
    assert kinds[0] == "session.update"
    assert kinds[-1] == "session.finish"
    assert set(kinds[1:-1]) == {"input_text_buffer.append"}
    (update,) = server.realtime.events_of("session.update")
    assert update.payload["session"] == {
        "voice": "Cherry",
        "mode": "server_commit",
        "response_format": "pcm",
        "sample_rate": QWEN_SAMPLE_RATE,
        "language_type": "Auto",
    }
    (sock,) = server.realtime.sockets
    headers = {name.lower(): value for name, value in sock.headers.items()}
    assert headers["authorization"] == f"Bearer {KEY}"
    assert sock.model == "qwen3-tts-flash-realtime"
    # The service closes the socket after session.finished; so do we.
    await server.realtime.await_closed(1)


async def test_realtime_one_shot_text(server: FakeQwenServer, make_engine: EngineFactory) -> None:
    """Text that is complete before the session has started goes out as one append."""
    engine = make_engine()
    session = await engine.open_session()
    await session.feed("One. ")
    await session.feed("Two.")
    await session.finish()
    audio = await drain(session)
    await session.aclose()
    assert [e.text for e in server.realtime.events_of("input_text_buffer.append")] == ["One. Two."]
    assert audio == audio_for("One. Two.")


# -- stopping --------------------------------------------------------------------------------


async def test_cancelling_sse_closes_the_request_at_once(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.http.script(QwenScenario.endless(interval=0.01))
    engine = make_engine()
    heard = asyncio.Event()

    async def speak() -> None:
        async for _ in engine.synthesize_streaming(TEXT):
            heard.set()

    task = asyncio.create_task(speak())
    await asyncio.wait_for(heard.wait(), timeout=5)
    stopped = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    request = await server.http.await_disconnect(0)
    assert request.closed_by == "client"
    assert request.disconnected_at is not None
    assert request.disconnected_at - stopped < STOP_DEADLINE
    assert not request.finished


async def test_closing_the_normal_stream_mid_download_closes_the_download(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.http.script(QwenScenario.endless(interval=0.01))
    stream = make_engine().synthesize(TEXT)
    await anext(stream)
    stopped = time.monotonic()
    await stream.aclose()
    download = await server.http.await_disconnect(1)
    assert download.kind == "file"
    assert download.closed_by == "client"
    assert download.disconnected_at is not None
    assert download.disconnected_at - stopped < STOP_DEADLINE


async def test_cancelling_a_realtime_session_closes_its_socket_at_once(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.realtime.script(QwenRealtimeScenario.endless(interval=0.01))
    engine = make_engine()
    session = await engine.open_session()
    await session.feed("Talk forever. ")
    await anext(session)
    await anext(session)

    pending = asyncio.create_task(anext(session))  # a reader waiting for more
    await asyncio.sleep(0)  # one loop turn: the reader is now blocked on the next chunk
    stopped = time.monotonic()
    await session.cancel()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, timeout=STOP_DEADLINE)
    with pytest.raises(StopAsyncIteration):
        await anext(session)
    sock = await server.realtime.await_closed(1)
    assert sock.closed_at is not None
    assert sock.closed_at - stopped < STOP_DEADLINE
    await session.aclose()
    assert server.realtime.events_of("session.finish") == []


async def test_cancel_while_the_handshake_is_pending_returns_at_once() -> None:
    """A server that accepts TCP and never answers the WebSocket handshake."""
    accepted = asyncio.Event()
    left = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # until the client leaves
        left.set()
        writer.close()

    mute_server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = mute_server.sockets[0].getsockname()[1]
    engine = QwenEngine(
        api_key=KEY,
        realtime_url=f"ws://127.0.0.1:{port}/api-ws/v1/realtime",
        connect_timeout=10.0,
        read_timeout=5.0,
    )
    try:
        session = await engine.open_session()
        await session.feed("Hello.")
        await asyncio.wait_for(accepted.wait(), timeout=5)
        started = time.monotonic()
        await session.cancel()
        with pytest.raises(StopAsyncIteration):
            await anext(session)
        await session.aclose()
        assert time.monotonic() - started < STOP_DEADLINE
        await asyncio.wait_for(left.wait(), timeout=STOP_DEADLINE)
    finally:
        await engine.aclose()
        mute_server.close()
        await mute_server.wait_closed()


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["normal", "streaming", "realtime"])
async def test_a_wrong_key_is_reported_with_the_services_words(
    make_engine: EngineFactory, mode: str
) -> None:
    engine = make_engine(api_key="sk-wrong")
    source: TTSSession | AsyncGenerator[AudioChunk, None]
    if mode == "normal":
        source = engine.synthesize(TEXT)
    elif mode == "streaming":
        source = engine.synthesize_streaming(TEXT)
    else:
        source = await engine.open_session()
    error = await error_of(source)
    assert error.code == "upstream_status"
    assert "HTTP 401" in error.reason
    assert "Invalid API-key provided. (InvalidApiKey)" in error.reason
    assert "DASHSCOPE_API_KEY" in error.reason
    assert "sk-wrong" not in error.reason


@pytest.mark.parametrize("sse", [False, True])
async def test_an_error_status_is_reported_with_its_code(
    server: FakeQwenServer, make_engine: EngineFactory, sse: bool
) -> None:
    server.http.script(
        QwenScenario.error_status(400, "InvalidParameter", "Voice is not supported.")
    )
    engine = make_engine()
    error = await error_of(engine.synthesize_streaming(TEXT) if sse else engine.synthesize(TEXT))
    assert error.code == "upstream_status"
    assert error.reason == (
        "The Qwen speech service answered HTTP 400 Bad Request: "
        "Voice is not supported. (InvalidParameter)"
    )


async def test_an_error_event_mid_stream_is_reported(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.http.script(QwenScenario.error_event(after=2, code="DataInspectionFailed"))
    error = await error_of(make_engine().synthesize_streaming(TEXT))
    assert error.code == "upstream_status"
    assert "inappropriate content" in error.reason
    assert "DataInspectionFailed" in error.reason


@pytest.mark.parametrize("sse", [False, True])
async def test_a_service_that_hangs_up_midway_is_reported(
    server: FakeQwenServer, make_engine: EngineFactory, sse: bool
) -> None:
    server.http.script(QwenScenario.disconnect(after=2))
    engine = make_engine()
    error = await error_of(engine.synthesize_streaming(TEXT) if sse else engine.synthesize(TEXT))
    assert error.code == "disconnected"
    assert "closed the connection before the audio was complete" in error.reason


async def test_a_silent_service_times_out(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.http.script(QwenScenario.hang(after=0))
    error = await error_of(make_engine(read_timeout=0.3).synthesize(TEXT))
    assert error.code == "timeout"
    assert error.reason == "The Qwen speech service sent nothing for 0.3 s."


async def test_an_answer_without_an_audio_url_is_malformed(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.http.script(QwenScenario.no_url())
    error = await error_of(make_engine().synthesize(TEXT))
    assert error.code == "malformed"
    assert error.reason == "The Qwen speech service answered without an audio URL."


async def test_an_expired_audio_file_is_reported_with_the_stores_words(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.http.script(QwenScenario.file_error(403))
    error = await error_of(make_engine().synthesize(TEXT))
    assert error.code == "upstream_status"
    assert error.reason == (
        "The Qwen audio file server answered HTTP 403 Forbidden: Request has expired."
    )


@pytest.mark.parametrize(
    ("scenario", "code", "words"),
    [
        (
            QwenRealtimeScenario.reject_session("Invalid value: 'Nobody'."),
            "upstream_status",
            "while starting the session: Invalid value: 'Nobody'. (invalid_value)",
        ),
        (
            QwenRealtimeScenario.fail_after_text("InternalError", "synthesis failed"),
            "upstream_status",
            "while speaking: synthesis failed (InternalError)",
        ),
        (QwenRealtimeScenario.drop_after_text(), "disconnected", "closed the connection"),
    ],
)
async def test_a_realtime_failure_ends_the_session_with_it(
    server: FakeQwenServer,
    make_engine: EngineFactory,
    scenario: QwenRealtimeScenario,
    code: str,
    words: str,
) -> None:
    server.realtime.script(scenario)
    error = await error_of(await make_engine().open_session())
    assert error.code == code
    assert words in error.reason


async def test_a_realtime_service_silent_after_finish_times_out(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.realtime.script(QwenRealtimeScenario.silent_finish())
    error = await error_of(await make_engine(read_timeout=0.3).open_session())
    assert error.code == "timeout"
    assert error.reason == "The Qwen speech service sent nothing for 0.3 s."


async def test_feed_and_finish_never_raise_for_the_services_failures(
    server: FakeQwenServer, make_engine: EngineFactory
) -> None:
    server.realtime.script(QwenRealtimeScenario.fail_after_text())
    async with await make_engine().open_session() as session:
        await session.feed("One. ")
        with pytest.raises(TTSError):
            await drain(session)
        await session.feed("Two. ")  # the reply goes on; its speech has failed
        await session.finish()
        with pytest.raises(StopAsyncIteration):
            await anext(session)


@pytest.mark.parametrize("mode", ["normal", "realtime"])
async def test_nothing_listening_is_refused(mode: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = QwenEngine(
        api_key=KEY,
        base_url=f"http://127.0.0.1:{port}/api/v1",
        realtime_url=f"ws://127.0.0.1:{port}/api-ws/v1/realtime",
        connect_timeout=2.0,
        read_timeout=2.0,
    )
    try:
        source = engine.synthesize(TEXT) if mode == "normal" else await engine.open_session()
        error = await error_of(source)
    finally:
        await engine.aclose()
    assert error.code == "refused"
    scheme = "http" if mode == "normal" else "ws"
    assert error.reason == (
        f"Could not connect to the Qwen speech service at {scheme}://127.0.0.1:{port}: "
        "connection refused."
    )


def test_a_bad_configuration_fails_at_construction() -> None:
    options: dict[str, object] = {"api_key": KEY, "connect_timeout": 1.0, "read_timeout": 1.0}
    with pytest.raises(ValueError, match="QWEN_TTS_BASE_URL"):
        QwenEngine(base_url="wss://x", **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="QWEN_TTS_REALTIME_URL"):
        QwenEngine(realtime_url="https://x", **options)  # type: ignore[arg-type]


def test_the_registry_builds_it_from_settings(settings: Settings) -> None:
    settings.TTS_BACKEND = "qwen"
    settings.DASHSCOPE_API_KEY = KEY
    settings.QWEN_TTS_VOICE = "Ethan"
    engine = build_engine()
    assert isinstance(engine, QwenEngine)
    assert engine.voice == "Ethan"
    assert engine.url == (
        "https://dashscope.aliyuncs.com/api/v1/services/aigc/multimodal-generation/generation"
    )
    assert engine.realtime_url == (
        "wss://dashscope.aliyuncs.com/api-ws/v1/realtime?model=qwen3-tts-flash-realtime"
    )
