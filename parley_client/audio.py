"""Spoken replies: PCM chunks as they arrive, and WAV files of whole replies.

On the WebSocket, audio comes as a JSON ``start`` event, binary frames (bytes 0-3 the
stream, 4-7 the chunk index, both unsigned big-endian; the rest PCM), then ``end`` (or
``cancel`` when the reply was stopped). On SSE the chunks are base64 JSON events. A
:class:`~parley_client.room.RoomSession` opened with ``audio=True`` turns both into
:class:`~parley_client.models.AudioChunk` events that carry their stream's format and
sample rate, and keeps the last few finished streams so that
:meth:`~parley_client.room.RoomSession.wait_audio` can hand back a whole reply's audio.
"""

from __future__ import annotations

import struct
import wave
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from parley_client.models import AudioCancel, AudioChunk, AudioEnd, AudioStart, Event

__all__ = ["AudioClip", "write_wav"]

_HEADER = struct.Struct(">II")
# Finished streams kept for wait_audio(): a reply's audio is ~44 KB a second at 22 kHz,
# so a few replies are a few MB at most; older ones are dropped.
KEEP_FINISHED_STREAMS = 4


def parse_audio_frame(frame: bytes) -> tuple[int, int, bytes]:
    """``(stream, index, pcm)`` of one binary WebSocket frame."""
    if len(frame) < _HEADER.size:
        raise ValueError("an audio frame is at least 8 bytes")
    stream, index = _HEADER.unpack_from(frame)
    return stream, index, frame[_HEADER.size :]


def write_wav(
    path: str | Path, pcm: bytes, *, sample_rate: int, channels: int = 1, sample_width: int = 2
) -> Path:
    """Write 16-bit little-endian PCM as a WAV file; returns the path."""
    path = Path(path)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(sample_width)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return path


@dataclass(slots=True)
class AudioClip:
    """One reply's audio: its PCM, in order, and its format."""

    message_id: str
    stream: int
    sample_rate: int
    channels: int = 1
    format: str = "pcm_s16le"
    mode: str = ""
    chunks: list[bytes] = field(default_factory=list, repr=False)
    complete: bool = False
    cancelled: bool = False

    @property
    def pcm(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def seconds(self) -> float:
        frame_bytes = 2 * self.channels
        return len(self.pcm) / frame_bytes / self.sample_rate if self.sample_rate else 0.0

    def write_wav(self, path: str | Path) -> Path:
        """Save the clip as a WAV file; returns the path."""
        return write_wav(path, self.pcm, sample_rate=self.sample_rate, channels=self.channels)


class AudioAssembler:
    """Joins audio events into :class:`AudioClip`s and gives chunks their stream's format."""

    def __init__(self, keep: int = KEEP_FINISHED_STREAMS) -> None:
        self.keep = keep
        self.open: dict[int, AudioClip] = {}
        self.finished: OrderedDict[str, AudioClip] = OrderedDict()

    def feed(self, event: Event) -> Event:
        """Record ``event``; returns it, chunks completed with their stream's format."""
        if isinstance(event, AudioStart):
            self.open[event.stream] = AudioClip(
                message_id=event.message_id,
                stream=event.stream,
                sample_rate=event.sample_rate,
                channels=event.channels,
                format=event.format,
                mode=event.mode,
            )
        elif isinstance(event, AudioChunk):
            clip = self.open.get(event.stream)
            if clip is None:  # joined mid-stream: nothing to say what it is
                return event
            clip.chunks.append(event.pcm)
            return AudioChunk(
                stream=event.stream,
                index=event.index,
                pcm=event.pcm,
                message_id=clip.message_id,
                format=clip.format,
                sample_rate=clip.sample_rate,
                channels=clip.channels,
            )
        elif isinstance(event, AudioEnd | AudioCancel):
            clip = self.open.pop(event.stream, None)
            if clip is None:
                return event
            if isinstance(event, AudioEnd):
                clip.complete = True
                event = AudioEnd(event.stream, event.chunks, clip.message_id, event.raw)
            else:
                clip.cancelled = True
                event = AudioCancel(event.stream, clip.message_id, event.raw)
            self.finished[clip.message_id] = clip
            while len(self.finished) > self.keep:
                self.finished.popitem(last=False)
        return event
