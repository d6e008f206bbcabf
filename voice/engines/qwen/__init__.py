"""Speak with Qwen-TTS on Alibaba Cloud Model Studio (百炼, DashScope), model family qwen3-tts.

Where the protocol facts come from: the vendor's public pages "Speech synthesis (Qwen-TTS)"
API reference (alibabacloud.com/help/en/model-studio/qwen-tts-api), "Non-real-time speech
synthesis" (help.aliyun.com/en/model-studio/non-realtime-tts-user-guide), "Real-time speech
synthesis - Qwen" with its "Client events" and "Server events" pages
(alibabacloud.com/help/en/model-studio/qwen-tts-realtime, ...-client-events,
...-server-events), checked against the vendor's Python SDK (dashscope-sdk-python:
``MultiModalConversation`` for the HTTP call, ``common/utils.py`` for its SSE reading,
``audio/qwen_tts_realtime`` for the WebSocket). No code was copied.

The three voice modes use two APIs:

- ``normal`` (:meth:`QwenEngine.synthesize`): ``POST {base}/services/aigc/
  multimodal-generation/generation`` with ``Authorization: Bearer <DASHSCOPE_API_KEY>``
  and ``{"model": "qwen3-tts-flash", "input": {"text", "voice", "language_type"}}``. The
  answer is JSON, ``{"output": {"finish_reason": "stop", "audio": {"url", "id",
  "expires_at"}}, "usage", "request_id"}``: ``url`` is the WAV file (24 kHz, 16-bit mono;
  valid 24 hours) on the vendor's object store, fetched with a plain GET (without the
  key, which is not the store's business) and passed on as it downloads.
- ``streaming`` (:meth:`QwenEngine.synthesize_streaming`, one sentence at a time): the
  same request with ``X-DashScope-SSE: enable``. The answer is ``text/event-stream`` in
  DashScope's shape (``id:``, ``event:result``, a ``:HTTP_STATUS/200`` comment, ``data:``
  JSON); each event's ``output.audio.data`` is a piece of base64 PCM (24 kHz s16le mono)
  and the last has ``output.finish_reason == "stop"``. A failure mid-stream is an
  ``event:error`` whose data is ``{"code", "message", "request_id"}``.
- ``realtime`` (:meth:`QwenEngine.open_session`, :class:`QwenRealtimeSession`): a
  WebSocket to ``wss://dashscope.aliyuncs.com/api-ws/v1/realtime?model=
  qwen3-tts-flash-realtime`` with the same bearer header, JSON text messages both ways.
  The client sends ``session.update`` first (``voice``, ``mode: "server_commit"``: the
  service decides where to cut the text, ``response_format: "pcm"``, ``sample_rate``),
  answered by ``session.updated`` (after the unasked ``session.created``); then
  ``input_text_buffer.append`` (``text``) as the reply's text streams; the service
  answers with responses (``response.created`` ... ``response.audio.delta`` with base64
  PCM in ``delta`` ... ``response.done``); ``session.finish`` makes it speak the rest,
  send ``session.finished`` and close the connection. A failure is an ``error`` event,
  ``{"error": {"code", "message"}}``. Every client event carries a unique ``event_id``.
  One session per connection; cancelling a reply closes its socket.

A failed HTTP call answers a non-2xx status with ``{"code", "message", "request_id"}``
(e.g. 401 ``InvalidApiKey``); a refused WebSocket handshake says the same in its body.
Beijing (``dashscope.aliyuncs.com``) and Singapore (``dashscope-intl.aliyuncs.com``) have
their own keys and URLs: a key of one region is refused by the other.
"""

from voice.engines.qwen.engine import (
    DEFAULT_BASE_URL,
    DEFAULT_LANGUAGE,
    DEFAULT_MODEL,
    DEFAULT_REALTIME_MODEL,
    DEFAULT_REALTIME_URL,
    DEFAULT_VOICE,
    GENERATION_PATH,
    SAMPLE_RATE,
    QwenEngine,
)
from voice.engines.qwen.realtime import QwenRealtimeSession

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_LANGUAGE",
    "DEFAULT_MODEL",
    "DEFAULT_REALTIME_MODEL",
    "DEFAULT_REALTIME_URL",
    "DEFAULT_VOICE",
    "GENERATION_PATH",
    "SAMPLE_RATE",
    "QwenEngine",
    "QwenRealtimeSession",
]
