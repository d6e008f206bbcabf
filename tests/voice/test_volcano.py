"""Volcano Engine bidirectional TTS against a loopback server speaking its binary protocol."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import pytest

from tests.support.tts.common import pcm_rms, tone
from tests.support.tts.volcano import (
    CANCEL_SESSION,
    FINISH_SESSION,
    SESSION_CANCELED,
    SESSION_FINISHED,
    START_CONNECTION,
    START_SESSION,
    TASK_REQUEST,
    FakeVolcanoServer,
    VolcanoScenario,
)
from voice.engines.base import AudioChunk, TTSError, TTSSession
from voice.engines.volcano import (
    Event,
    Frame,
    FrameError,
    MsgType,
    VolcanoEngine,
    client_frame,
    decode_frame,
    encode_frame,
)

RATE = 24000
# Stopping must feel instant: after cancel() the reader gets no more audio, at once.
STOP_DEADLINE = 0.1

EngineFactory = Callable[..., VolcanoEngine]


@pytest.fixture(params=["thread", "loop"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeVolcanoServer]:
    """The fake in a background thread (as daphne tests use it) and in the test's loop."""
    fake = FakeVolcanoServer(app_key="app-1", access_key="secret-1", resource_id="seed-tts-1.0")
    if request.param == "thread":
        with fake:
            yield fake
    else:
        async with fake:
            yield fake
    assert fake.protocol_errors == []


@pytest.fixture
async def make_engine(server: FakeVolcanoServer) -> AsyncIterator[EngineFactory]:
    made: list[VolcanoEngine] = []

    def make(**overrides: object) -> VolcanoEngine:
        options: dict[str, object] = {
            "url": server.url,
            "app_key": "app-1",
            "access_key": "secret-1",
            "resource_id": "seed-tts-1.0",
            "speaker": "zh_female_shuangkuaisisi_moon_bigtts",
            "sample_rate": RATE,
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
            "cancel_timeout": 1.0,
        }
        options.update(overrides)
        engine = VolcanoEngine(**options)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.aclose()


def audio_for(*texts: str, ms_per_char: float = 20.0, rate: int = RATE) -> bytes:
    """What the fake says for each TaskRequest text, in order."""
    return b"".join(tone(len(text) * ms_per_char / 1000, rate) for text in texts)


async def drain(session: TTSSession) -> bytes:
    return b"".join([chunk.pcm async for chunk in session])


async def collect(stream: AsyncGenerator[AudioChunk, None]) -> list[AudioChunk]:
    async with contextlib.aclosing(stream) as chunks:
        return [chunk async for chunk in chunks]


# -- the codec, against the byte layouts of the vendor's page ------------------------------


def test_start_connection_is_the_documented_bytes() -> None:
    # 交互示例, StartConnection: v1/4-byte header, full-client request with event, JSON,
    # event 1, payload size 2, "{}".
    frame = client_frame(Event.START_CONNECTION, {})
    assert frame == bytes.fromhex("111410000000000100000002") + b"{}"


def test_a_session_frame_carries_its_session_id() -> None:
    frame = client_frame(Event.FINISH_SESSION, {}, "nxckjoejnkeg")
    assert frame == (
        bytes.fromhex("11141000000000660000000c")
        + b"nxckjoejnkeg"
        + bytes.fromhex("00000002")
        + b"{}"
    )


def test_server_frames_decode() -> None:
    started = (
        bytes.fromhex("119410000000003200000007") + b"bxnweiu" + bytes.fromhex("00000002") + b"{}"
    )
    frame = decode_frame(started)
    assert (frame.msg_type, frame.event, frame.connect_id, frame.session_id) == (
        MsgType.FULL_SERVER_RESPONSE,
        Event.CONNECTION_STARTED,
        "bxnweiu",
        None,
    )
    audio = (
        bytes.fromhex("11b400000000016000000003")
        + b"s-1"
        + bytes.fromhex("00000004")
        + b"\x01\x00\x02\x00"
    )
    frame = decode_frame(audio)
    assert (frame.msg_type, frame.event, frame.session_id, frame.payload) == (
        MsgType.AUDIO_ONLY_SERVER,
        Event.TTS_RESPONSE,
        "s-1",
        b"\x01\x00\x02\x00",
    )
    error = bytes.fromhex("11f0100002faf0800000000f") + b'{"error":"bad"}'
    frame = decode_frame(error)
    assert (frame.msg_type, frame.error_code, frame.event, frame.json()) == (
        MsgType.ERROR,
        50000000,
        None,
        {"error": "bad"},
    )


def test_connection_failed_decodes_with_or_without_a_connection_id() -> None:
    meta = b'{"status_code":45000000,"message":"unauthorized"}'
    size = len(meta).to_bytes(4, "big")
    with_id = bytes.fromhex("119410000000003300000007") + b"bxnweiu" + size + meta
    without_id = bytes.fromhex("1194100000000033") + size + meta
    for data in (with_id, without_id):
        frame = decode_frame(data)
        assert frame.event == Event.CONNECTION_FAILED
        assert frame.json()["message"] == "unauthorized"
    assert decode_frame(with_id).connect_id == "bxnweiu"


def test_a_truncated_frame_is_refused() -> None:
    with pytest.raises(FrameError):
        decode_frame(client_frame(Event.TASK_REQUEST, {"text": "hi"}, "s")[:-1])


def test_frames_round_trip() -> None:
    for frame in [
        Frame(
            msg_type=MsgType.FULL_SERVER_RESPONSE,
            event=Event.SESSION_FINISHED,
            session_id="abc",
            payload=b'{"status_code":20000000}',
        ),
        Frame(
            msg_type=MsgType.FULL_SERVER_RESPONSE,
            event=Event.CONNECTION_FAILED,
            connect_id="c",
            payload=b"{}",
        ),
        Frame(
            msg_type=MsgType.AUDIO_ONLY_SERVER,
            event=Event.TTS_RESPONSE,
            session_id="s",
            payload=b"\x00" * 10,
            serialization=0,
        ),
        Frame(msg_type=MsgType.ERROR, error_code=45000001, payload=b'{"error":"x"}'),
    ]:
        decoded = decode_frame(encode_frame(frame))
        assert decoded.event == frame.event
        assert decoded.session_id == frame.session_id
        assert decoded.connect_id == frame.connect_id
        assert decoded.error_code == frame.error_code
        assert decoded.payload == frame.payload


# -- speaking ----------------------------------------------------------------------------


async def test_text_goes_out_as_it_arrives_and_audio_comes_back_before_the_end(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    async with await engine.open_session() as session:
        await session.feed("Hello there. ")
        await session.feed("How")
        # The first words reach the service on their own, before the reply is complete...
        (first_request,) = await server.await_frames(TASK_REQUEST, 1)
        assert first_request.text == "Hello there."
        # ...and their audio is back while the model is still writing.
        first = await asyncio.wait_for(anext(session), timeout=5)
        assert first.sample_rate == RATE
        await session.feed(" are **you**? ")
        await server.await_frames(TASK_REQUEST, 2)
        assert server.frames_of(FINISH_SESSION) == []
        await session.feed("你好，世界😀！")
        await session.finish()
        audio = first.pcm + await drain(session)

    texts = [f.text or "" for f in server.frames_of(TASK_REQUEST)]
    assert "".join(texts) == "Hello there. How are you? 你好，世界！"
    assert len(texts) >= 3
    assert audio == audio_for(*texts)
    assert pcm_rms(audio) > 1000
    events = [f.event for f in server.frames]
    assert events[:2] == [START_CONNECTION, START_SESSION]
    assert events[-1] == FINISH_SESSION
    assert all(e == TASK_REQUEST for e in events[2:-1])


async def test_the_handshake_and_the_session_say_who_we_are_and_what_we_want(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    engine = make_engine(speech_rate=10, additions={"explicit_language": "zh-cn"})
    await collect(engine.synthesize("你好。"))

    (connection,) = server.connections
    headers = {name.lower(): value for name, value in connection.headers.items()}
    assert headers["x-api-app-key"] == "app-1"
    assert headers["x-api-access-key"] == "secret-1"
    assert headers["x-api-resource-id"] == "seed-tts-1.0"
    assert uuid.UUID(headers["x-api-connect-id"])
    (start,) = server.frames_of(START_SESSION)
    assert start.session_id
    assert start.payload["event"] == START_SESSION
    assert start.payload["namespace"] == "BidirectionalTTS"
    params = start.payload["req_params"]
    assert params["speaker"] == "zh_female_shuangkuaisisi_moon_bigtts"
    assert params["audio_params"] == {"format": "pcm", "sample_rate": RATE, "speech_rate": 10}
    assert params["additions"] == '{"explicit_language": "zh-cn"}'
    (task,) = server.frames_of(TASK_REQUEST)
    assert task.session_id == start.session_id
    assert task.payload["event"] == TASK_REQUEST
    assert task.text == "你好。"


@pytest.mark.parametrize("rate", [16000, 48000])
async def test_audio_comes_at_the_requested_rate(
    server: FakeVolcanoServer, make_engine: EngineFactory, rate: int
) -> None:
    chunks = await collect(make_engine(sample_rate=rate).synthesize("Hello."))
    assert {c.sample_rate for c in chunks} == {rate}
    assert b"".join(c.pcm for c in chunks) == audio_for("Hello.", rate=rate)


async def test_one_connection_serves_sessions_one_after_another(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    first = await collect(engine.synthesize("First reply."))
    second = await collect(engine.synthesize("Second reply."))

    assert b"".join(c.pcm for c in first) == audio_for("First reply.")
    assert b"".join(c.pcm for c in second) == audio_for("Second reply.")
    assert len(server.connections) == 1
    assert len(server.frames_of(START_CONNECTION)) == 1
    sessions = [f.session_id for f in server.frames_of(START_SESSION)]
    assert len(sessions) == 2
    assert sessions[0] != sessions[1]
    assert await server.await_sent(SESSION_FINISHED, 2) == 2


async def test_sessions_at_once_use_connections_of_their_own(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    one, two = await asyncio.gather(
        collect(engine.synthesize("Room one speaks.")),
        collect(engine.synthesize("Room two speaks.")),
    )
    assert b"".join(c.pcm for c in one) == audio_for("Room one speaks.")
    assert b"".join(c.pcm for c in two) == audio_for("Room two speaks.")
    assert len(server.connections) == 2
    # Both went back to the pool: the next two replies open nothing new.
    await asyncio.gather(collect(engine.synthesize("Again.")), collect(engine.synthesize("Too.")))
    assert len(server.connections) == 2


async def test_a_connection_the_service_closed_while_idle_is_replaced(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    await collect(engine.synthesize("Before."))
    await server.close_connections()
    await server.await_closed(1)

    after = await collect(engine.synthesize("After."))

    assert b"".join(c.pcm for c in after) == audio_for("After.")
    assert [c.ident for c in server.connections] == [1, 2]


# -- stopping ----------------------------------------------------------------------------


async def test_cancel_stops_the_audio_at_once_and_cancels_the_session(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    server.script(VolcanoScenario.endless(interval=0.01))
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
    assert time.monotonic() - stopped < STOP_DEADLINE
    with pytest.raises(StopAsyncIteration):
        await anext(session)

    (cancel,) = await server.await_frames(CANCEL_SESSION)
    assert cancel.session_id == server.frames_of(START_SESSION)[0].session_id
    await session.aclose()
    assert server.frames_of(FINISH_SESSION) == []
    assert await server.await_sent(SESSION_CANCELED) == 1

    # The canceled session's connection is clean: the next reply reuses it.
    assert await drain_text(engine, "Next.") == audio_for("Next.")
    assert len(server.connections) == 1


async def drain_text(engine: VolcanoEngine, text: str) -> bytes:
    return b"".join(c.pcm for c in await collect(engine.synthesize(text)))


async def test_cancel_after_finish_drops_the_rest_and_keeps_the_connection(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    server.script(VolcanoScenario.slow(interval=0.01))
    engine = make_engine()
    session = await engine.open_session()
    await session.feed("A long answer that takes a while to speak. " * 2)
    await session.finish()
    await anext(session)
    await session.cancel()
    with pytest.raises(StopAsyncIteration):
        await anext(session)
    await session.aclose()

    # FinishSession was already sent, so there was nothing to cancel: the rest of the
    # audio was dropped until SessionFinished, and the connection is reused.
    assert server.frames_of(CANCEL_SESSION) == []
    assert await server.await_sent(SESSION_FINISHED) == 1
    assert await drain_text(engine, "Next.") == audio_for("Next.")
    assert len(server.connections) == 1


async def test_an_unacknowledged_cancel_gives_up_the_connection(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    server.script(VolcanoScenario.ignore_cancel())
    engine = make_engine(cancel_timeout=0.3)
    session = await engine.open_session()
    await session.feed("Hello there. ")
    await anext(session)
    await session.cancel()
    started = time.monotonic()
    await session.aclose()
    assert time.monotonic() - started < 0.3 + 0.5
    await server.await_closed(1)

    assert await drain_text(engine, "Next.") == audio_for("Next.")
    assert [c.ident for c in server.connections] == [1, 2]


async def test_cancel_while_still_connecting_returns_at_once() -> None:
    """A server that accepts TCP and never answers the WebSocket handshake."""
    accepted = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # until the client leaves
        writer.close()

    mute_server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = mute_server.sockets[0].getsockname()[1]
    engine = VolcanoEngine(
        url=f"ws://127.0.0.1:{port}/api/v3/tts/bidirection",
        app_key="a",
        access_key="b",
        speaker="s",
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
    finally:
        await engine.aclose()
        mute_server.close()
        await mute_server.wait_closed()


async def test_cancelling_the_reading_task_ends_the_one_shot_stream(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    server.script(VolcanoScenario.endless(interval=0.01))
    engine = make_engine()
    heard = asyncio.Event()

    async def speak() -> None:
        async for _ in engine.synthesize("Go on and on."):
            heard.set()

    task = asyncio.create_task(speak())
    await asyncio.wait_for(heard.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # synthesize() finished the text before reading, so the stream was stopped by
    # dropping audio until SessionFinished; the connection stays usable.
    assert await server.await_sent(SESSION_FINISHED) == 1
    assert await drain_text(engine, "Next.") == audio_for("Next.")


# -- errors ------------------------------------------------------------------------------


async def read_all(source: TTSSession | AsyncGenerator[AudioChunk, None]) -> None:
    if isinstance(source, TTSSession):
        async with source as session:
            await drain(session)
    else:
        await collect(source)


async def error_of(source: TTSSession | AsyncGenerator[AudioChunk, None]) -> TTSError:
    with pytest.raises(TTSError) as caught:
        await read_all(source)
    return caught.value


async def test_wrong_credentials_are_reported(make_engine: EngineFactory) -> None:
    error = await error_of(make_engine(access_key="wrong").synthesize("Hello."))
    assert error.code == "upstream_status"
    assert "HTTP 401" in error.reason
    assert "VOLCANO_ACCESS_KEY" in error.reason
    assert "invalid X-Api-Access-Key" in error.reason
    assert "wrong" not in error.reason


async def test_a_failed_connection_event_is_reported(
    make_engine: EngineFactory, server: FakeVolcanoServer
) -> None:
    server.fail_connection = "resource not granted"
    error = await error_of(make_engine().synthesize("Hello."))
    assert error.code == "upstream_status"
    assert "resource not granted" in error.reason


async def test_a_session_that_fails_to_start_is_reported(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    server.script(VolcanoScenario.fail_start("speaker not found"))
    engine = make_engine()
    error = await error_of(engine.synthesize("Hello."))
    assert error.code == "upstream_status"
    assert "speaker not found" in error.reason
    assert "45000001" in error.reason
    # The failure was the session's, not the connection's.
    assert await drain_text(engine, "Again.") == audio_for("Again.")


@pytest.mark.parametrize(
    ("scenario", "code", "words"),
    [
        (VolcanoScenario.fail_after_text("text too long"), "upstream_status", "text too long"),
        (
            VolcanoScenario.error_frame(55000001, "session error"),
            "upstream_status",
            "code 55000001",
        ),
        (VolcanoScenario.drop_after_text(), "disconnected", "closed the connection"),
    ],
)
async def test_a_failure_while_speaking_ends_the_session_with_it(
    server: FakeVolcanoServer,
    make_engine: EngineFactory,
    scenario: VolcanoScenario,
    code: str,
    words: str,
) -> None:
    server.script(scenario)
    engine = make_engine()
    session = await engine.open_session()
    await session.feed("Hello there. ")
    error = await error_of(session)
    assert error.code == code
    assert words in error.reason
    # A later reply gets a working connection.
    assert await drain_text(engine, "Again.") == audio_for("Again.")


async def test_a_service_silent_after_finish_times_out(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    server.script(VolcanoScenario.silent_finish())
    error = await error_of(make_engine(read_timeout=0.3).synthesize("Hello."))
    assert error.code == "timeout"
    assert error.reason == "The Volcano speech service sent nothing for 0.3 s."


async def test_feed_and_finish_never_raise_for_the_services_failures(
    server: FakeVolcanoServer, make_engine: EngineFactory
) -> None:
    server.script(VolcanoScenario.fail_after_text())
    async with await make_engine().open_session() as session:
        await session.feed("One. ")
        with pytest.raises(TTSError):
            await drain(session)
        await session.feed("Two. ")  # the reply goes on; its speech has failed
        await session.finish()
        with pytest.raises(StopAsyncIteration):
            await anext(session)


async def test_nothing_listening_is_refused(make_engine: EngineFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = make_engine(url=f"ws://127.0.0.1:{port}/api/v3/tts/bidirection")
    error = await error_of(engine.synthesize("Hello."))
    assert error.code == "refused"
    assert "connection refused" in error.reason


def test_a_bad_configuration_fails_at_construction() -> None:
    options: dict[str, object] = {
        "app_key": "a",
        "access_key": "b",
        "speaker": "s",
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
    }
    with pytest.raises(ValueError, match="sample_rate"):
        VolcanoEngine(sample_rate=11025, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ws://"):
        VolcanoEngine(url="https://x", **options)  # type: ignore[arg-type]
