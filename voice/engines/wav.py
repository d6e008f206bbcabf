"""PCM out of an HTTP body: raw s16le samples, or a streamed WAV file.

Both regroup the samples into whole-sample chunks of 50-250 ms as they arrive. A WAV
header says the rate (servers choose their own); a streaming server cannot know the data
size up front and writes a placeholder (0 or 0xFFFFFFFF), so the data then runs to the
end of the body.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final

from voice.engines.base import AudioChunk, PCMChunker, TTSError

# A WAV header is 44 bytes, a few hundred with LIST/fact chunks; this much without the
# "data" chunk is not a WAV stream we can play.
_MAX_WAV_HEADER_BYTES: Final = 64 * 1024
_WAVE_FORMAT_PCM: Final = 1
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE


async def raw_pcm(body: AsyncIterator[bytes], sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
    chunker = PCMChunker(sample_rate)
    async for data in body:
        for chunk in chunker.push(data):
            yield chunk
    for chunk in chunker.flush():
        yield chunk


async def wav_pcm(body: AsyncIterator[bytes], *, source: str) -> AsyncGenerator[AudioChunk, None]:
    """The samples of a streamed WAV file, after reading its header for the format.

    ``source`` names who sent it in errors ("The speech server").
    """
    header = bytearray()
    parsed: tuple[int, int, int | None] | None = None
    async for data in body:
        header += data
        parsed = _parse_wav_header(bytes(header), source)
        if parsed is not None:
            break
        if len(header) > _MAX_WAV_HEADER_BYTES:
            raise TTSError("malformed", f"{source} sent a WAV header we cannot read.")
    if parsed is None:
        if not header:
            return
        raise TTSError("malformed", f"{source}'s WAV audio ended inside its header.")
    sample_rate, data_offset, data_size = parsed
    chunker = PCMChunker(sample_rate)
    remaining = data_size
    rest = bytes(header[data_offset:])
    while True:
        if remaining is not None:
            rest = rest[:remaining]
            remaining -= len(rest)
        for chunk in chunker.push(rest):
            yield chunk
        if remaining == 0:
            break
        try:
            rest = await anext(body)
        except StopAsyncIteration:
            break
    for chunk in chunker.flush():
        yield chunk


def _parse_wav_header(data: bytes, source: str) -> tuple[int, int, int | None] | None:
    """(sample rate, offset of the samples, their size or None) once the header is in.

    None while more bytes are needed. Raises :class:`TTSError` for anything but 16-bit
    mono PCM: that is what the engines promise, and converting is not worth a stream's
    latency (every server we know sends it).
    """
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TTSError("malformed", f"{source}'s audio is not a WAV file.")
    offset = 12
    sample_rate: int | None = None
    while True:
        if len(data) < offset + 8:
            return None
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body_at = offset + 8
        if chunk_id == b"data":
            if sample_rate is None:
                raise TTSError("malformed", f"{source}'s WAV audio has no format chunk.")
            streaming_placeholder = size in (0, 0xFFFFFFFF)
            return sample_rate, body_at, None if streaming_placeholder else size
        if len(data) < body_at + size:
            return None
        if chunk_id == b"fmt ":
            sample_rate = _check_wav_format(data[body_at : body_at + size], source)
        offset = body_at + size + (size & 1)  # chunks are padded to an even size


def _check_wav_format(fmt: bytes, source: str) -> int:
    if len(fmt) < 16:
        raise TTSError("malformed", f"{source}'s WAV format chunk is too short.")
    tag, channels, sample_rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        (tag,) = struct.unpack_from("<H", fmt, 24)  # the sub-format GUID starts with it
    if tag != _WAVE_FORMAT_PCM or bits != 16 or channels != 1 or sample_rate <= 0:
        raise TTSError(
            "malformed",
            f"{source} sent {channels}-channel {bits}-bit audio (format {tag}); "
            "only 16-bit mono PCM can be played.",
        )
    return int(sample_rate)
