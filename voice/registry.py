"""The configured speech engine, one per event loop (its connections belong to that loop)."""

from __future__ import annotations

import asyncio
import weakref

from django.conf import settings

from voice.engines.base import TTSEngine

_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TTSEngine] = (
    weakref.WeakKeyDictionary()
)


def build_engine() -> TTSEngine:
    kind = settings.TTS_BACKEND
    if kind == "piper":
        from voice.engines.piper import PiperEngine

        return PiperEngine(
            model_path=settings.PIPER_MODEL_PATH or None,
            config_path=settings.PIPER_CONFIG_PATH or None,
            intra_op_threads=settings.PIPER_THREADS,
            queue_chunks=settings.PIPER_QUEUE_CHUNKS,
        )
    if kind == "openai":
        from voice.engines.openai import OpenAISpeechEngine

        return OpenAISpeechEngine(
            base_url=settings.OPENAI_TTS_BASE_URL or "https://api.openai.com/v1",
            api_key=settings.OPENAI_TTS_API_KEY,
            model=settings.OPENAI_TTS_MODEL,
            voice=settings.OPENAI_TTS_VOICE,
            response_format=settings.OPENAI_TTS_FORMAT,
            connect_timeout=settings.OPENAI_TTS_CONNECT_TIMEOUT,
            read_timeout=settings.OPENAI_TTS_READ_TIMEOUT,
        )
    if kind == "volcano":
        from voice.engines.volcano import VolcanoEngine

        return VolcanoEngine(
            app_key=settings.VOLCANO_APP_KEY,
            access_key=settings.VOLCANO_ACCESS_KEY,
            speaker=settings.VOLCANO_SPEAKER,
            resource_id=settings.VOLCANO_RESOURCE_ID,
            url=settings.VOLCANO_TTS_URL,
            sample_rate=settings.VOLCANO_SAMPLE_RATE,
            connect_timeout=settings.VOLCANO_CONNECT_TIMEOUT,
            read_timeout=settings.VOLCANO_READ_TIMEOUT,
        )
    if kind == "qwen":
        from voice.engines.qwen import QwenEngine

        return QwenEngine(
            api_key=settings.DASHSCOPE_API_KEY,
            base_url=settings.QWEN_TTS_BASE_URL,
            realtime_url=settings.QWEN_TTS_REALTIME_URL,
            model=settings.QWEN_TTS_MODEL,
            realtime_model=settings.QWEN_TTS_REALTIME_MODEL,
            voice=settings.QWEN_TTS_VOICE,
            language_type=settings.QWEN_TTS_LANGUAGE,
            connect_timeout=settings.QWEN_TTS_CONNECT_TIMEOUT,
            read_timeout=settings.QWEN_TTS_READ_TIMEOUT,
        )
    raise ValueError(f"TTS_BACKEND must be piper, openai, volcano or qwen, not {kind!r}")


def get_engine() -> TTSEngine:
    loop = asyncio.get_running_loop()
    engine = _engines.get(loop)
    if engine is None:
        engine = _engines[loop] = build_engine()
    return engine


def preload() -> None:
    """Warm the bundled voice in the background at start-up (other engines are remote)."""
    if settings.TTS_BACKEND == "piper" and settings.VOICE_PRELOAD:
        from voice.engines.piper import PiperEngine

        engine = build_engine()
        assert isinstance(engine, PiperEngine)
        engine.preload()
