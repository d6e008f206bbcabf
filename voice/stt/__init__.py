"""Speech to text: the configured engine (``STT_BACKEND``), one per process.

The bundled Whisper engine holds a model and a worker thread, so there is one per
process, shared by every event loop; the HTTP engine's connections belong to a loop and
are made afresh in each (``LoopClient``).
"""

from __future__ import annotations

import threading

from django.conf import settings

from voice.stt.base import STTEngine, STTError

__all__ = ["STTEngine", "STTError", "get_stt_engine", "preload"]

_engine: STTEngine | None = None
_lock = threading.Lock()


def build_stt_engine() -> STTEngine:
    kind = settings.STT_BACKEND
    if kind == "whisper":
        from voice.stt.whisper import WhisperEngine

        return WhisperEngine(
            model_path=settings.STT_MODEL_PATH or None,
            threads=settings.STT_THREADS,
            beam_size=settings.STT_BEAM_SIZE,
            language=settings.STT_LANGUAGE or "en",
        )
    if kind == "openai":
        from voice.stt.openai import OpenAITranscriptionEngine

        return OpenAITranscriptionEngine(
            base_url=settings.OPENAI_STT_BASE_URL or "https://api.openai.com/v1",
            api_key=settings.OPENAI_STT_API_KEY,
            model=settings.OPENAI_STT_MODEL,
            language=settings.STT_LANGUAGE,
            connect_timeout=settings.OPENAI_STT_CONNECT_TIMEOUT,
            read_timeout=settings.OPENAI_STT_READ_TIMEOUT,
        )
    raise ValueError(f"STT_BACKEND must be whisper or openai, not {kind!r}")


def get_stt_engine() -> STTEngine:
    global _engine
    with _lock:
        if _engine is None:
            _engine = build_stt_engine()
        return _engine


def reset() -> None:
    """Forget the engine (tests that change STT settings)."""
    global _engine
    with _lock:
        _engine = None


def preload() -> None:
    """Warm the bundled model in the background at start-up."""
    if settings.STT_BACKEND == "whisper" and settings.STT_PRELOAD:
        from voice.stt.whisper import WhisperEngine

        engine = get_stt_engine()
        assert isinstance(engine, WhisperEngine)
        engine.preload()
