"""Speech to text through any OpenAI-compatible ``/v1/audio/transcriptions`` server.

The utterance goes up as a WAV file in a multipart form (``file``, ``model``,
``response_format=json``); the answer is ``{"text": ...}``. Failures are mapped to
readable reasons by the same helpers as the model and speech clients (chat/upstream.py).
"""

from __future__ import annotations

import json
from typing import ClassVar

import httpx

from core.upstream import LoopClient, http_base_url, server_of, status_failure, transport_failure
from voice.stt.base import STTEngine, STTError, to_wav

_MAX_ERROR_BODY_BYTES = 4096
_MAX_ANSWER_BYTES = 1 << 20


class OpenAITranscriptionEngine(STTEngine):
    name: ClassVar[str] = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        language: str = "",
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        base = http_base_url(base_url, setting="OPENAI_STT_BASE_URL")
        self.url = f"{base}/audio/transcriptions"
        self.model = model
        self.language = language
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # Where errors point: scheme, host and port, never the key or a path.
        self._server = server_of(base)
        self._http = LoopClient(
            headers={},
            api_key=api_key or None,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_keepalive=4,
        )

    async def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        data = {"model": self.model, "response_format": "json"}
        if self.language:
            data["language"] = self.language
        files = {"file": ("speech.wav", to_wav(pcm, sample_rate), "audio/wav")}
        try:
            async with self._http.get().stream("POST", self.url, data=data, files=files) as resp:
                if not resp.is_success:
                    reason = await status_failure(
                        resp, service="speech-to-text server", limit=_MAX_ERROR_BODY_BYTES
                    )
                    raise STTError("upstream_status", reason)
                body = bytearray()
                async for part in resp.aiter_bytes():
                    body += part
                    if len(body) > _MAX_ANSWER_BYTES:
                        raise STTError("malformed", "The speech-to-text server sent too much.")
        except httpx.HTTPError as exc:
            code, reason = transport_failure(
                exc,
                service="speech-to-text server",
                product="transcript",
                server=self._server,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
            )
            raise STTError(code, reason) from exc
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise STTError("malformed", "The speech-to-text server's answer has no text.")
        return str(answer["text"]).strip()

    async def aclose(self) -> None:
        await self._http.aclose()
