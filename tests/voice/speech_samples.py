"""Utterances for the speech-to-text tests, spoken by the bundled Piper voice."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools

from voice.engines.piper import PiperEngine

UTTERANCE = "Please tell me about the weather in Paris today."
# Words any fair transcript of UTTERANCE has.
KEY_WORDS = ("weather", "paris")


async def _speak(text: str) -> tuple[bytes, int]:
    engine = PiperEngine()
    try:
        async with contextlib.aclosing(engine.synthesize(text)) as chunks:
            parts = [chunk async for chunk in chunks]
    finally:
        await engine.aclose()
    return b"".join(c.pcm for c in parts), parts[0].sample_rate


@functools.cache
def spoken(text: str = UTTERANCE) -> tuple[bytes, int]:
    """(PCM s16le mono, sample rate) of ``text`` in the bundled voice (made once; in a
    thread of its own, so async tests may call it too)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _speak(text)).result()


def resample_16k(pcm: bytes, sample_rate: int) -> bytes:
    """The page's capture rate: what a browser's AudioWorklet sends."""
    import numpy as np

    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    count = int(len(audio) * 16000 / sample_rate)
    out = np.interp(np.linspace(0, len(audio) - 1, count), np.arange(len(audio)), audio)
    return out.astype("<i2").tobytes()


def words(text: str) -> set[str]:
    return {w.strip(".,!?;:").lower() for w in text.split()}
