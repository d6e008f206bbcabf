"""Speaking a reply as it streams, to every member who opted in (PROTOCOL.md section 6).

A ``ReplySpeech`` belongs to one reply run. The run feeds it the text members have been
shown (so audio never runs ahead of the text), pauses and resumes it with the reply,
and finishes or cancels it when the reply ends. Modes:

- ``normal``: once the reply is complete, the whole text in one engine call;
- ``streaming``: sentence by sentence as the text completes them (a long first clause
  may be cut at a comma so the first audio comes sooner);
- ``realtime``: text handed to the engine as it arrives (Volcano natively; Piper and the
  OpenAI engine at clause granularity).

Audio goes out as live-only events: a JSON ``audio`` start, binary frames (4-byte stream
id, 4-byte chunk index, PCM s16le), then ``end``, or ``cancel`` when the reply is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from chat.events import room_audio_emit
from voice.engines.base import AudioChunk, SegmentingSession, TTSError, TTSSession
from voice.registry import get_engine
from voice.segmenter import clean_for_speech

logger = logging.getLogger(__name__)

_END = object()


@dataclass
class SpeechStats:
    """What the generation record keeps: when the first audio went out, and how fast."""

    first_audio_at: float | None = None  # time.monotonic()
    audio_seconds: float = 0.0
    synthesis_seconds: float = 0.0  # time spent waiting on the engine for audio
    chunks: int = 0
    error: str = ""


@dataclass(eq=False)
class ReplySpeech:
    room_id: int
    message_id: int
    mode: str
    stats: SpeechStats = field(default_factory=SpeechStats)
    _text: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    _playing: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _started: bool = False

    @property
    def stream(self) -> int:
        # One audio stream per reply: its id fits the frame's 4-byte field.
        return self.message_id & 0xFFFFFFFF

    def start(self) -> asyncio.Task[None]:
        self._playing.set()
        self._task = asyncio.create_task(self._run(), name=f"speech-{self.message_id}")
        return self._task

    def feed(self, text: str) -> None:
        """Text just shown to members."""
        self._text.put_nowait(text)

    def pause(self) -> None:
        self._playing.clear()

    def resume(self) -> None:
        self._playing.set()

    def finish(self) -> None:
        """The reply's text is complete: speak the rest, then end the stream."""
        self._text.put_nowait(_END)
        self._playing.set()

    async def cancel(self) -> None:
        """The reply was stopped: stop synthesis at once; members drop what they queued.

        Nothing of this stream is sent after the ``cancel`` event: the sender is
        cancelled and awaited first.
        """
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._started:
            await room_audio_emit(
                room_id=self.room_id,
                event={"type": "audio", "state": "cancel", "stream": self.stream},
            )

    # --- the sender -----------------------------------------------------------------

    async def _run(self) -> None:
        engine = get_engine()
        try:
            if self.mode == "normal":
                parts = []
                while (piece := await self._text.get()) is not _END:
                    parts.append(piece)
                text = clean_for_speech("".join(parts))
                if text.strip():
                    await self._send_all(engine.synthesize(text))
            else:
                if self.mode == "realtime":
                    session: TTSSession = await engine.open_session()
                else:
                    session = SegmentingSession(engine, clause_mode=False)
                async with session:
                    feeder = asyncio.create_task(self._feed(session))
                    try:
                        await self._send_all(session)
                    finally:
                        feeder.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await feeder
            if self._started:
                await room_audio_emit(
                    room_id=self.room_id,
                    event={
                        "type": "audio",
                        "state": "end",
                        "stream": self.stream,
                        "chunks": self.stats.chunks,
                    },
                )
        except TTSError as exc:
            # Speech failing never fails the reply: the text is what counts.
            logger.warning("speech for reply %s failed: %s", self.message_id, exc.reason)
            self.stats.error = exc.reason
            if self._started:
                await room_audio_emit(
                    room_id=self.room_id,
                    event={"type": "audio", "state": "cancel", "stream": self.stream},
                )

    async def _feed(self, session: TTSSession) -> None:
        while (piece := await self._text.get()) is not _END:
            await session.feed(piece)
        await session.finish()

    async def _send_all(self, chunks: Any) -> None:
        iterator = chunks.__aiter__()
        while True:
            waited = time.monotonic()
            try:
                chunk: AudioChunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            self.stats.synthesis_seconds += time.monotonic() - waited
            await self._playing.wait()  # a paused reply holds its audio too
            await self._send(chunk)

    async def _send(self, chunk: AudioChunk) -> None:
        if not self._started:
            self._started = True
            self.stats.first_audio_at = time.monotonic()
            await room_audio_emit(
                room_id=self.room_id,
                event={
                    "type": "audio",
                    "state": "start",
                    "stream": self.stream,
                    "message_id": str(self.message_id),
                    "format": "pcm_s16le",
                    "sample_rate": chunk.sample_rate,
                    "channels": 1,
                    "mode": self.mode,
                },
            )
        header = struct.pack(">II", self.stream, self.stats.chunks)
        await room_audio_emit(room_id=self.room_id, frame=header + chunk.pcm)
        self.stats.chunks += 1
        self.stats.audio_seconds += chunk.duration
