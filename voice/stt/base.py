"""The speech-to-text interface: one utterance of PCM in, its transcript out.

Shape after the TTS engines (``voice/engines/base.py``): every failure a member can hit
is an :class:`STTError` with a code and a reason the UI can show. Audio is signed 16-bit
little-endian mono PCM at any common rate; engines convert what they need.
"""

from __future__ import annotations

import io
import wave
from abc import ABC, abstractmethod
from typing import ClassVar, Final

#: Rates a client may declare for raw PCM (telephone to studio).
MIN_SAMPLE_RATE: Final = 8000
MAX_SAMPLE_RATE: Final = 48000


class STTError(Exception):
    """Codes: ``refused``, ``timeout``, ``upstream_status``, ``malformed``, ``disconnected``
    (as for TTSError), ``unavailable`` (the bundled model cannot run here)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class STTEngine(ABC):
    #: Short name, as in the STT_BACKEND setting.
    name: ClassVar[str]

    @abstractmethod
    async def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        """The words spoken in ``pcm`` (s16le mono), stripped; "" when none were heard.

        Raises :class:`STTError`; ``asyncio.CancelledError`` always propagates.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional: most engines hold nothing
        """Release connections or workers (nothing by default)."""


# Below this RMS (of 32767) an utterance is silence or hiss, not speech: no engine is asked,
# and Whisper is known to "hear" a stray "you" in silence. Quiet speech is ~300 and up.
SILENCE_RMS: Final = 40.0


def is_silent(pcm: bytes) -> bool:
    import numpy as np

    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32)
    return samples.size == 0 or float(np.sqrt(np.mean(samples * samples))) < SILENCE_RMS


def to_wav(pcm: bytes, sample_rate: int) -> bytes:
    """A mono 16-bit WAV file of ``pcm``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return out.getvalue()
