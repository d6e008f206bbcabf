"""Model backends. ``get_backend()`` returns the configured one, built once per process."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from chat.llm.base import ChatMessage, LLMBackend, LLMError, Options, Usage

__all__ = ["ChatMessage", "LLMBackend", "LLMError", "Options", "Usage", "get_backend", "preload"]


def preload() -> None:
    """Import the configured backend's module now, at start, before the server listens:
    importing it later (the reply manager's warm-up, or the first send) holds the event
    loop for a fifth of a second, beside a fresh process's first replies."""
    if settings.LLM_BACKEND == "openai":
        import chat.llm.openai  # noqa: F401
    elif settings.LLM_BACKEND == "local":
        import chat.llm.local  # noqa: F401


@cache
def get_backend() -> LLMBackend:
    kind = settings.LLM_BACKEND
    if kind == "openai":
        from chat.llm.openai import OpenAIBackend

        return OpenAIBackend(
            base_url=settings.OPENAI_BASE_URL or "https://api.openai.com/v1",
            api_key=settings.OPENAI_API_KEY,
            model=settings.LLM_MODEL,
            connect_timeout=settings.LLM_CONNECT_TIMEOUT,
            read_timeout=settings.LLM_READ_TIMEOUT,
            max_tokens=settings.LLM_MAX_TOKENS,
            temperature=settings.LLM_TEMPERATURE,
        )
    if kind == "local":
        from chat.llm.local import LocalBackend

        return LocalBackend(
            model=settings.LLM_MODEL,
            n_ctx=settings.LLM_LOCAL_N_CTX,
            n_threads=settings.LLM_LOCAL_THREADS,
            max_tokens=settings.LLM_LOCAL_MAX_TOKENS,
            temperature=settings.LLM_TEMPERATURE,
            reuse=settings.LLM_LOCAL_REUSE,
            state_cache_bytes=settings.LLM_LOCAL_STATE_CACHE_MB << 20,
            repeat_penalty=settings.LLM_LOCAL_REPEAT_PENALTY,
        )
    raise ValueError(f"LLM_BACKEND must be 'openai' or 'local', not {kind!r}")
