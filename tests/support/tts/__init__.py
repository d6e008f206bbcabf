"""Loopback fakes of the remote speech services, one module per vendor.

- ``openai``: an OpenAI-compatible ``POST /v1/audio/speech`` server.
- ``volcano``: Volcano Engine's bidirectional TTS over WebSocket (binary frames).
- ``qwen``: Alibaba Model Studio (DashScope) Qwen-TTS, both APIs together: ``qwen_http``
  (the HTTP API with SSE, and the store of its audio files) and ``qwen_realtime`` (the
  realtime WebSocket).
- ``common``: test audio (``tone``, ``pcm_rms``, ``wav_header``), waits, HTTP parsing.
"""
