"""Speak with any OpenAI-compatible ``POST /v1/audio/speech`` server.

The request is ``{"model", "input", "voice", "response_format"}`` (plus ``speed`` and
``instructions`` when set); the response body is the audio, streamed as it is made.
Two formats carry PCM we can pass on without decoding:

- ``pcm``: raw signed 16-bit little-endian mono samples at 24 kHz, no header (OpenAI's
  documented format for ``response_format: "pcm"``).
- ``wav``: a RIFF/WAVE header, then the same kind of samples; the header says the rate,
  which servers other than OpenAI (Kokoro, Piper, XTTS behind an OpenAI-style API)
  choose themselves. A streaming server cannot know the data size up front and writes
  a placeholder (0 or 0xFFFFFFFF), so the data runs to the end of the body then.

Audio is passed on as it arrives, regrouped into whole-sample chunks of 50-250 ms.
Stopping works as for the model backend (``chat/llm/openai.py``): the request runs inside
``async with client.stream(...)``, so cancelling the iterating task or ``aclose()`` on the
generator closes the response, and httpx closes (rather than pools) a connection whose
body was not read to the end: the server sees the disconnect at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, ClassVar, Final, Literal

import httpx

from core.upstream import (
    LoopClient,
    content_type,
    error_message_from_body,
    http_base_url,
    read_capped,
    server_of,
    status_failure,
    transport_failure,
)
from voice.engines.base import AudioChunk, TTSEngine, TTSError
from voice.engines.wav import raw_pcm, wav_pcm

SpeechFormat = Literal["pcm", "wav"]

#: The rate of ``response_format: "pcm"`` (OpenAI API reference, "Create speech").
OPENAI_PCM_SAMPLE_RATE: Final = 24000
# An error body worth showing fits in a few kilobytes; a proxy's HTML page may be large.
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024
# Keep-alive connections held per process: one per reply speaking at once.
_MAX_KEEPALIVE_CONNECTIONS: Final = 10
# Who a WAV problem is blamed on.
_SOURCE: Final = "The speech server"


class OpenAISpeechEngine(TTSEngine):
    name: ClassVar[str] = "openai"
    named_voices: ClassVar[bool] = True

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        voice: str,
        response_format: SpeechFormat = "pcm",
        connect_timeout: float,
        read_timeout: float,
        speed: float | None = None,
        instructions: str | None = None,
    ) -> None:
        if response_format not in ("pcm", "wav"):
            raise ValueError(f"response_format must be 'pcm' or 'wav', not {response_format!r}")
        super().__init__(sample_rate=OPENAI_PCM_SAMPLE_RATE if response_format == "pcm" else None)
        self.base_url = http_base_url(base_url, setting="OPENAI_TTS_BASE_URL")
        self.url = f"{self.base_url}/audio/speech"
        self.api_key = api_key or None
        self.model = model
        self.voice = voice
        self.response_format: SpeechFormat = response_format
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.speed = speed
        self.instructions = instructions
        # Where errors point: scheme, host and port, never the key or a path.
        self._server = server_of(self.base_url)
        self._http = LoopClient(
            headers={},
            api_key=self.api_key,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_keepalive=_MAX_KEEPALIVE_CONNECTIONS,
        )

    async def aclose(self) -> None:
        await super().aclose()
        await self._http.aclose()

    def request_body(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": self.response_format,
        }
        if self.speed is not None:
            body["speed"] = self.speed
        if self.instructions:
            body["instructions"] = self.instructions
        return body

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        text = text.strip()
        if not text:
            return
        client = self._http.get()
        try:
            async with client.stream("POST", self.url, json=self.request_body(text)) as resp:
                if not resp.is_success:
                    raise await self._status_error(resp)
                if content_type(resp) in ("application/json", "text/html", "text/plain"):
                    raise await self._not_audio(resp)
                if self.response_format == "pcm":
                    audio = raw_pcm(resp.aiter_bytes(), OPENAI_PCM_SAMPLE_RATE)
                else:
                    audio = wav_pcm(resp.aiter_bytes(), source=_SOURCE)
                got_audio = False
                async for chunk in audio:
                    got_audio = True
                    yield chunk
                if not got_audio:
                    raise TTSError("malformed", "The speech server sent no audio.")
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    async def _status_error(self, resp: httpx.Response) -> TTSError:
        reason = await status_failure(resp, service="speech server", limit=_MAX_ERROR_BODY_BYTES)
        return TTSError("upstream_status", reason)

    async def _not_audio(self, resp: httpx.Response) -> TTSError:
        body = await read_capped(resp, _MAX_ERROR_BODY_BYTES)
        message = error_message_from_body(body)
        if message:
            return TTSError("upstream_status", f"The speech server reported an error: {message}")
        return TTSError("malformed", "The speech server answered with text instead of audio.")

    def _transport_error(self, exc: httpx.HTTPError) -> TTSError:
        code, reason = transport_failure(
            exc,
            service="speech server",
            product="audio",
            server=self._server,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )
        return TTSError(code, reason)
