"""Speech engines: each an async iterator of PCM chunks (see ``base.py``).

- ``piper.PiperEngine``: the bundled local voice (English), no network.
- ``openai.OpenAISpeechEngine``: any OpenAI-compatible ``/v1/audio/speech`` server.
- ``volcano.VolcanoEngine``: Volcano Engine (doubao) bidirectional streaming TTS.
- ``qwen.QwenEngine``: Qwen-TTS on Alibaba Cloud Model Studio (DashScope): an audio file
  per reply, SSE per sentence, or the realtime WebSocket, one per voice mode.
"""
