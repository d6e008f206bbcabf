"""The Qwen engine: the HTTP API for the normal and streaming modes (protocol in ``__init__``).

Stopping works as for the OpenAI-compatible engine: each request runs inside ``async with
client.stream(...)``, so cancelling the iterating task or ``aclose()`` on the generator
closes the response, and httpx closes (rather than pools) a connection whose body was
not read to the end: the service sees the disconnect at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar, Final

import httpx

from core.upstream import (
    EventTooLarge,
    LoopClient,
    ServerSentEvent,
    clip,
    content_type,
    disconnect_reason,
    read_capped,
    server_of,
    sse_events,
    status_reason,
    transport_failure,
)
from voice.engines.base import AudioChunk, PCMChunker, TTSEngine, TTSError, TTSSession
from voice.engines.qwen.errors import (
    AUTH_HINT,
    FILE_SERVICE,
    SERVICE,
    dashscope_message,
    message_from_body,
)
from voice.engines.wav import wav_pcm

#: The Beijing region's HTTP API; Singapore's is https://dashscope-intl.aliyuncs.com/api/v1.
DEFAULT_BASE_URL: Final = "https://dashscope.aliyuncs.com/api/v1"
#: The Beijing region's realtime WebSocket; ``?model=`` is added.
DEFAULT_REALTIME_URL: Final = "wss://dashscope.aliyuncs.com/api-ws/v1/realtime"
DEFAULT_MODEL: Final = "qwen3-tts-flash"
DEFAULT_REALTIME_MODEL: Final = "qwen3-tts-flash-realtime"
DEFAULT_VOICE: Final = "Cherry"
#: The service guesses the language; naming it ("Chinese", "English") helps mixed text.
DEFAULT_LANGUAGE: Final = "Auto"
GENERATION_PATH: Final = "/services/aigc/multimodal-generation/generation"
#: The rate of the SSE stream's PCM (fixed by the service) and of the realtime
#: session's (which we ask for, the service's default).
SAMPLE_RATE: Final = 24000

# The non-streaming answer is a small JSON (a URL, ids, usage): far less than this.
_MAX_ANSWER_BYTES: Final = 256 * 1024
# An error body worth showing fits in a few kilobytes; a proxy's HTML page may be large.
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024
# One SSE event carries a fraction of a second of base64 PCM (tens of KB); this is
# tens of seconds of audio, far more than any event the service sends.
_MAX_EVENT_CHARS: Final = 2 * 1024 * 1024
# Keep-alive connections held per process: one per reply speaking at once.
_MAX_KEEPALIVE_CONNECTIONS: Final = 10
# After the last event the service ends the body; reading that end lets the connection
# be pooled. A service that does not end it is not waited for longer than this.
_DRAIN_TIMEOUT: Final = 1.0


class QwenEngine(TTSEngine):
    """Qwen-TTS: a WAV file per reply (normal), SSE per sentence, or a realtime WebSocket."""

    name: ClassVar[str] = "qwen"
    named_voices: ClassVar[bool] = True
    native_streaming: ClassVar[bool] = True

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        realtime_url: str = DEFAULT_REALTIME_URL,
        model: str = DEFAULT_MODEL,
        realtime_model: str = DEFAULT_REALTIME_MODEL,
        voice: str = DEFAULT_VOICE,
        language_type: str = DEFAULT_LANGUAGE,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        """
        ``connect_timeout``: connecting, and the realtime session's start.
        ``read_timeout``: the longest silence between two bytes of an answer (including
        the wait for a whole reply's audio file in normal mode), and in realtime mode
        once the text is complete (while text is still coming the service may rightly
        wait for more).
        """
        super().__init__(sample_rate=SAMPLE_RATE)
        try:
            url = httpx.URL(base_url.strip())
        except httpx.InvalidURL as exc:
            raise ValueError(f"QWEN_TTS_BASE_URL is not a URL: {base_url!r}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"QWEN_TTS_BASE_URL must be an http(s) URL, not {base_url!r}")
        realtime_url = realtime_url.strip()
        if not realtime_url.startswith(("ws://", "wss://")):
            raise ValueError(
                f"QWEN_TTS_REALTIME_URL must be a ws:// or wss:// URL, not {realtime_url!r}"
            )
        self.base_url = str(url).rstrip("/")
        self.url = self.base_url + GENERATION_PATH
        joiner = "&" if "?" in realtime_url else "?"
        self.realtime_url = f"{realtime_url}{joiner}model={realtime_model}"
        self.api_key = api_key
        self.model = model
        self.realtime_model = realtime_model
        self.voice = voice
        self.language_type = language_type
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # Where errors point: scheme, host and port, never the key or a path.
        self.server = server_of(self.base_url)
        self.realtime_server = server_of(realtime_url)
        self._api = LoopClient(
            headers={},
            api_key=api_key,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_keepalive=_MAX_KEEPALIVE_CONNECTIONS,
        )
        # The audio files are on the vendor's object store: the key is not sent there.
        self._files = LoopClient(
            headers={},
            api_key=None,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_keepalive=_MAX_KEEPALIVE_CONNECTIONS,
        )

    def request_body(self, text: str) -> dict[str, Any]:
        speech: dict[str, Any] = {"text": text, "voice": self.voice}
        if self.language_type:
            speech["language_type"] = self.language_type
        return {"model": self.model, "input": speech}

    # -- normal: one audio file ------------------------------------------------------------

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        text = text.strip()
        if not text:
            return
        url = await self._audio_url(text)
        async with contextlib.aclosing(self._download(url)) as audio:
            async for chunk in audio:
                yield chunk

    async def _audio_url(self, text: str) -> str:
        client = self._api.get()
        try:
            async with client.stream("POST", self.url, json=self.request_body(text)) as resp:
                if not resp.is_success:
                    raise await self._status_error(resp, SERVICE)
                body = await read_capped(resp, _MAX_ANSWER_BYTES)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, SERVICE, self.server) from exc
        try:
            answer = json.loads(body)
        except ValueError:
            raise TTSError(
                "malformed", f"The {SERVICE} answered with something other than JSON."
            ) from None
        output = answer.get("output") if isinstance(answer, dict) else None
        audio = output.get("audio") if isinstance(output, dict) else None
        url = audio.get("url") if isinstance(audio, dict) else None
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            return url
        message = dashscope_message(answer) if isinstance(answer, dict) else ""
        if message:
            raise TTSError("upstream_status", f"The {SERVICE} reported an error: {message}")
        raise TTSError("malformed", f"The {SERVICE} answered without an audio URL.")

    async def _download(self, url: str) -> AsyncGenerator[AudioChunk, None]:
        client = self._files.get()
        got_audio = False
        try:
            async with client.stream("GET", url) as resp:
                if not resp.is_success:
                    raise await self._status_error(resp, FILE_SERVICE)
                pcm = wav_pcm(resp.aiter_bytes(), source=f"The {FILE_SERVICE}")
                async with contextlib.aclosing(pcm) as audio:
                    async for chunk in audio:
                        got_audio = True
                        yield chunk
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, FILE_SERVICE, server_of(url)) from exc
        if not got_audio:
            raise TTSError("malformed", f"The {FILE_SERVICE} sent no audio.")

    # -- streaming: one sentence over SSE ----------------------------------------------------

    async def synthesize_streaming(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        text = text.strip()
        if not text:
            return
        client = self._api.get()
        headers = {"X-DashScope-SSE": "enable", "Accept": "text/event-stream"}
        body = self.request_body(text)
        try:
            async with client.stream("POST", self.url, json=body, headers=headers) as resp:
                if not resp.is_success:
                    raise await self._status_error(resp, SERVICE)
                if content_type(resp) != "text/event-stream":
                    raise await self._not_a_stream(resp)
                lines = sse_events(resp.aiter_lines(), limit=_MAX_EVENT_CHARS)
                async with contextlib.aclosing(lines) as events:
                    async with contextlib.aclosing(_stream_pcm(events)) as audio:
                        async for chunk in audio:
                            yield chunk
                    await _drain(events)
        except EventTooLarge:
            raise TTSError("malformed", f"The {SERVICE} sent an event far too large.") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, SERVICE, self.server) from exc

    # -- realtime ----------------------------------------------------------------------------

    async def open_session(self) -> TTSSession:
        from voice.engines.qwen.realtime import QwenRealtimeSession

        return QwenRealtimeSession(self)

    async def aclose(self) -> None:
        await super().aclose()
        await self._api.aclose()
        await self._files.aclose()

    # -- errors ------------------------------------------------------------------------------

    async def _status_error(self, resp: httpx.Response, service: str) -> TTSError:
        body = await read_capped(resp, _MAX_ERROR_BODY_BYTES)
        hint = AUTH_HINT if service == SERVICE else ""
        message = message_from_body(body) if body.strip() else ""
        reason = status_reason(
            resp.status_code, resp.reason_phrase, message, service=service, auth_hint=hint
        )
        return TTSError("upstream_status", reason)

    async def _not_a_stream(self, resp: httpx.Response) -> TTSError:
        body = await read_capped(resp, _MAX_ERROR_BODY_BYTES)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        message = dashscope_message(parsed) if isinstance(parsed, dict) else ""
        if message:
            return TTSError("upstream_status", f"The {SERVICE} reported an error: {message}")
        return TTSError("malformed", f"The {SERVICE} answered without streaming the audio.")

    def _transport_error(self, exc: httpx.HTTPError, service: str, server: str) -> TTSError:
        code, reason = transport_failure(
            exc,
            service=service,
            product="audio",
            server=server,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )
        return TTSError(code, reason)


async def _stream_pcm(events: AsyncIterator[ServerSentEvent]) -> AsyncGenerator[AudioChunk, None]:
    """The audio of DashScope's result events, until ``finish_reason`` says stop."""
    chunker = PCMChunker(SAMPLE_RATE)
    async for event in events:
        payload = _event_json(event.data)
        if event.event == "error" or ("output" not in payload and "code" in payload):
            message = dashscope_message(payload) or clip(event.data)
            raise TTSError("upstream_status", f"The {SERVICE} reported an error: {message}")
        output = payload.get("output")
        if not isinstance(output, dict):
            raise _shape_error(event.data)
        audio = output.get("audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        if data:
            if not isinstance(data, str):
                raise _shape_error(event.data)
            for chunk in chunker.push(b64_pcm(data)):
                yield chunk
        if output.get("finish_reason") == "stop":
            for chunk in chunker.flush():
                yield chunk
            return
    raise TTSError("disconnected", disconnect_reason(service=SERVICE, product="audio"))


def _event_json(data: str) -> dict[str, Any]:
    try:
        payload = json.loads(data)
    except ValueError:
        raise TTSError(
            "malformed", f"The {SERVICE} sent an event that is not JSON: {clip(data)}"
        ) from None
    if not isinstance(payload, dict):
        raise _shape_error(data)
    return payload


def b64_pcm(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise TTSError("malformed", f"The {SERVICE} sent audio that is not base64.") from None


def _shape_error(data: str) -> TTSError:
    return TTSError("malformed", f"The {SERVICE} sent an event we cannot read: {clip(data)}")


async def _drain(events: AsyncIterator[ServerSentEvent]) -> None:
    """Read the end of the body after the last event so the connection can be reused."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError, EventTooLarge):
        async with asyncio.timeout(_DRAIN_TIMEOUT):
            async for _ in events:
                pass
