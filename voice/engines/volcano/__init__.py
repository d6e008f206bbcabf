"""Speak with Volcano Engine's (火山引擎, ByteDance doubao) bidirectional streaming TTS.

The service takes the reply's text as it streams and returns audio as it is made, over
one WebSocket (``wss://openspeech.bytedance.com/api/v3/tts/bidirection``) that carries a
binary protocol. Where the protocol facts come from: the vendor's public page
"双向流式websocket-V3-支持复刻-混音mix" (volcengine.com/docs/6561/1329505, sections
"WebSocket 二进制协议", "Event 定义", "交互示例"), checked against public client code
that ports the frame codec of the vendor's Python demo (``protocols.py``), which settles
what the page's byte tables leave open: which events carry a session id and which a
connection id. The page's own ConnectionFailed table shows the connection id's length
but not its bytes, so the decoder accepts that frame with or without the id. This
package is written from those descriptions; no code was copied.

Handshake: HTTP headers ``X-Api-App-Key`` (app id), ``X-Api-Access-Key`` (access token),
``X-Api-Resource-Id`` (e.g. ``seed-tts-1.0``, ``seed-tts-2.0``) and ``X-Api-Connect-Id``
(a fresh UUID per connection, for the vendor's tracing). A refused handshake is an HTTP
status other than 101 with the reason in the body.

Frame (all integers big-endian)::

    byte 0   protocol version (4 bits, 1) | header size in 4-byte words (4 bits, 1)
    byte 1   message type (4 bits)        | type-specific flags (4 bits)
    byte 2   serialization (4 bits: 0 raw, 1 JSON) | compression (4 bits: 0 none, 1 gzip)
    byte 3   reserved (0)
    then     [int32 event]                        when flags has 0b0100 ("with event")
             [uint32 length + connection id]      for ConnectionStarted/Failed/Finished
             [uint32 length + session id]         for every other event but Start/
                                                  FinishConnection
             [uint32 error code]                  instead, for an error frame (type 0b1111)
             uint32 payload length + payload      JSON, or raw audio for audio frames

Message types: 0b0001 full client request (JSON, with event), 0b1001 full server response
(JSON, with event), 0b1011 audio-only server response (with event), 0b1111 error.

Events (the page's table "Event 定义"): StartConnection 1, FinishConnection 2,
ConnectionStarted 50, ConnectionFailed 51, ConnectionFinished 52, StartSession 100,
CancelSession 101, FinishSession 102, SessionStarted 150, SessionCanceled 151,
SessionFinished 152, SessionFailed 153, TaskRequest 200, TTSSentenceStart 350,
TTSSentenceEnd 351, TTSResponse 352 (the audio).

Flow: StartConnection → ConnectionStarted once per connection; per reply StartSession
(JSON ``{"user", "event", "namespace": "BidirectionalTTS", "req_params": {"speaker",
"audio_params": {"format": "pcm", "sample_rate"}}}``) → SessionStarted; TaskRequests
carrying ``req_params.text`` as the text arrives, audio (TTSResponse) coming back in
between; FinishSession → the rest of the audio → SessionFinished (``{"status_code":
20000000, "message": "ok"}``). The page: one session at a time per connection, a new
session only after SessionFinished (or SessionCanceled), connections are meant to be
reused; CancelSession is meant for the time between SessionStarted and FinishSession,
so after FinishSession a reply is stopped by discarding its audio until SessionFinished.

The service cleans Markdown and emoji itself (``disable_markdown_filter`` defaults to
false), but the text is cleaned here as well, word by word, so all engines speak alike.
"""

from voice.engines.volcano.codec import (
    DEFAULT_URL,
    NAMESPACE,
    SAMPLE_RATES,
    STATUS_OK,
    Event,
    Frame,
    FrameError,
    MsgType,
    client_frame,
    decode_frame,
    encode_frame,
)
from voice.engines.volcano.engine import (
    DEFAULT_CANCEL_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_IDLE_CONNECTIONS,
    VolcanoEngine,
)
from voice.engines.volcano.session import VolcanoSession

__all__ = [
    "DEFAULT_CANCEL_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_IDLE_CONNECTIONS",
    "DEFAULT_URL",
    "NAMESPACE",
    "SAMPLE_RATES",
    "STATUS_OK",
    "Event",
    "Frame",
    "FrameError",
    "MsgType",
    "VolcanoEngine",
    "VolcanoSession",
    "client_frame",
    "decode_frame",
    "encode_frame",
]
