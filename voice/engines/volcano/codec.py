"""The binary frame codec of Volcano's bidirectional TTS (the layout is in ``__init__``)."""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

DEFAULT_URL: Final = "wss://openspeech.bytedance.com/api/v3/tts/bidirection"
NAMESPACE: Final = "BidirectionalTTS"
#: ``status_code`` of a successful SessionFinished.
STATUS_OK: Final = 20000000
#: Sample rates the service accepts for ``audio_params.sample_rate``.
SAMPLE_RATES: Final = frozenset({8000, 16000, 22050, 24000, 32000, 44100, 48000})

_PROTOCOL_VERSION: Final = 1
_HEADER_WORDS: Final = 1
_FLAG_WITH_EVENT: Final = 0b0100
_SERIAL_RAW: Final = 0
_SERIAL_JSON: Final = 1
_COMPRESS_NONE: Final = 0
_COMPRESS_GZIP: Final = 1
# A whole second of 48 kHz audio is 96 KB; a frame far larger than any the service sends
# is refused rather than buffered.
MAX_FRAME_BYTES: Final = 8 * 1024 * 1024


class MsgType(IntEnum):
    FULL_CLIENT_REQUEST = 0b0001
    AUDIO_ONLY_CLIENT = 0b0010
    FULL_SERVER_RESPONSE = 0b1001
    AUDIO_ONLY_SERVER = 0b1011
    FRONTEND_SERVER = 0b1100
    ERROR = 0b1111


class Event(IntEnum):
    START_CONNECTION = 1
    FINISH_CONNECTION = 2
    CONNECTION_STARTED = 50
    CONNECTION_FAILED = 51
    CONNECTION_FINISHED = 52
    START_SESSION = 100
    CANCEL_SESSION = 101
    FINISH_SESSION = 102
    SESSION_STARTED = 150
    SESSION_CANCELED = 151
    SESSION_FINISHED = 152
    SESSION_FAILED = 153
    TASK_REQUEST = 200
    TTS_SENTENCE_START = 350
    TTS_SENTENCE_END = 351
    TTS_RESPONSE = 352


# Events with no id after the event number, and those that carry the connection's id.
_NO_ID_EVENTS: Final = frozenset({Event.START_CONNECTION, Event.FINISH_CONNECTION})
_CONNECT_ID_EVENTS: Final = frozenset(
    {Event.CONNECTION_STARTED, Event.CONNECTION_FAILED, Event.CONNECTION_FINISHED}
)


@dataclass(frozen=True, slots=True)
class Frame:
    msg_type: int
    event: int | None = None
    session_id: str | None = None
    connect_id: str | None = None
    error_code: int | None = None
    payload: bytes = b""
    serialization: int = _SERIAL_JSON
    compression: int = _COMPRESS_NONE
    flags: int | None = None  # None: "with event" when there is one, else 0

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object ({} when empty or not an object)."""
        data = self.payload
        if self.compression == _COMPRESS_GZIP:
            data = gzip.decompress(data)
        if not data:
            return {}
        value = json.loads(data)
        return value if isinstance(value, dict) else {}


class FrameError(ValueError):
    """Bytes that are not a frame of this protocol."""


def encode_frame(frame: Frame) -> bytes:
    flags = frame.flags
    if flags is None:
        flags = _FLAG_WITH_EVENT if frame.event is not None else 0
    parts = [
        bytes(
            [
                (_PROTOCOL_VERSION << 4) | _HEADER_WORDS,
                (frame.msg_type << 4) | flags,
                (frame.serialization << 4) | frame.compression,
                0,
            ]
        )
    ]
    if frame.msg_type == MsgType.ERROR:
        parts.append(struct.pack(">I", frame.error_code or 0))
    if flags & _FLAG_WITH_EVENT:
        if frame.event is None:
            raise ValueError("a frame flagged 'with event' needs an event")
        parts.append(struct.pack(">i", frame.event))
        if frame.event in _CONNECT_ID_EVENTS:
            parts.append(_sized((frame.connect_id or "").encode()))
        elif frame.event not in _NO_ID_EVENTS:
            parts.append(_sized((frame.session_id or "").encode()))
    parts.append(_sized(frame.payload))
    return b"".join(parts)


def decode_frame(data: bytes) -> Frame:
    reader = _Reader(data)
    first, second, third = reader.take(1)[0], reader.take(1)[0], reader.take(1)[0]
    if first >> 4 != _PROTOCOL_VERSION:
        raise FrameError(f"protocol version {first >> 4}, expected {_PROTOCOL_VERSION}")
    header_size = (first & 0x0F) * 4
    if header_size < 4:
        raise FrameError(f"header size {header_size}")
    reader.take(header_size - 3)  # the reserved byte and any header extension
    msg_type, flags = second >> 4, second & 0x0F
    error_code: int | None = None
    event: int | None = None
    session_id: str | None = None
    connect_id: str | None = None
    if msg_type == MsgType.ERROR:
        error_code = reader.uint32()
    if flags & _FLAG_WITH_EVENT:
        event = reader.int32()
        if event in _CONNECT_ID_EVENTS:
            if reader.sized_field_fills_rest():
                pass  # no connection id, only the payload (as the page's table shows)
            else:
                connect_id = reader.sized().decode("utf-8", "replace")
        elif event not in _NO_ID_EVENTS:
            session_id = reader.sized().decode("utf-8", "replace")
    elif flags in (0b0001, 0b0011):
        reader.int32()  # a sequence number: not used by this service's TTS frames
    payload = reader.sized()
    return Frame(
        msg_type=msg_type,
        event=event,
        session_id=session_id,
        connect_id=connect_id,
        error_code=error_code,
        payload=payload,
        serialization=third >> 4,
        compression=third & 0x0F,
        flags=flags,
    )


def _sized(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise FrameError(f"frame ends early ({len(self._data)} bytes)")
        chunk = self._data[self._at : self._at + n]
        self._at += n
        return chunk

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def sized_field_fills_rest(self) -> bool:
        """Whether the length-prefixed field that starts here ends the frame exactly."""
        rest = len(self._data) - self._at
        if rest < 4:
            return False
        (size,) = struct.unpack_from(">I", self._data, self._at)
        return bool(4 + size == rest)

    def sized(self) -> bytes:
        size = self.uint32()
        if size > MAX_FRAME_BYTES:
            raise FrameError(f"field of {size} bytes")
        return self.take(size)


def client_frame(event: Event, payload: dict[str, Any], session_id: str | None = None) -> bytes:
    return encode_frame(
        Frame(
            msg_type=MsgType.FULL_CLIENT_REQUEST,
            event=event,
            session_id=session_id,
            payload=json.dumps(payload, ensure_ascii=False).encode(),
        )
    )
