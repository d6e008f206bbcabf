"""Loopback fakes of the remote speech services, one module per vendor.

- ``openai``: an OpenAI-compatible ``POST /v1/audio/speech`` server.
- ``volcano``: Volcano Engine's bidirectional TTS over WebSocket (binary frames).
- ``qwen``: Alibaba Model Studio (DashScope) Qwen-TTS: HTTP, SSE and the realtime WebSocket.
- ``common``: test audio (``tone``, ``pcm_rms``, ``wav_header``), waits, HTTP parsing.
"""
