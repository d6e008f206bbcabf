"""Speaking a reply as it streams, to every member who opted in (docs/protocol.md "Audio frames").

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

What was heard: every chunk sent is noted against the span of reply text it speaks
(:class:`SpeechMarks`), so a listener's playback position (``played`` reports, in ms of
the stream) maps back to the text that listener heard (:meth:`SpeechMarks.heard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from chat.events import room_audio_emit
from core import metrics
from core.contract import LIVE_AUDIO
from voice.engines.base import AudioChunk, SegmentingSession, TTSError, TTSSession
from voice.registry import get_engine
from voice.segmenter import clean_for_speech

logger = logging.getLogger(__name__)

_END = object()


@dataclass
class SpeechMarks:
    """Which stretch of audio speaks which stretch of the reply's text.

    One mark per piece the engine was given (a sentence or clause, or the whole text):
    ``[audio_start_ms, audio_end_ms, text_start, text_end]``. Within a piece, audio time
    maps to characters linearly: engines do not say when each word is spoken, and a
    piece is one sentence or clause, so the error is within that clause. Chunks from an
    engine that takes streamed text natively carry no span; their audio then maps
    linearly onto all the text fed so far. JSON-ready, so it is stored with the
    generation record once the speech ends and the heard text can be worked out later.
    """

    marks: list[list[int]] = field(default_factory=list)
    audio_ms: float = 0.0

    def note(self, chunk: AudioChunk, *, fed_chars: int) -> None:
        start_ms = self.audio_ms
        self.audio_ms += chunk.duration * 1000
        if chunk.text_end >= 0:
            start, end = chunk.text_start, chunk.text_end
        else:
            start, end = 0, fed_chars  # no span: all the audio over all the text
        last = self.marks[-1] if self.marks else None
        if last is not None and last[2] == start and (last[3] == end or chunk.text_end < 0):
            last[1], last[3] = round(self.audio_ms), end  # the same piece goes on
        else:
            self.marks.append([round(start_ms), round(self.audio_ms), start, end])

    def heard_chars(self, ms: float) -> int:
        return heard_chars(self.marks, ms)


def heard_chars(marks: list[list[int]], ms: float) -> int:
    """How many characters of the text the audio up to ``ms`` speaks (see SpeechMarks)."""
    heard = 0
    for audio_start, audio_end, text_start, text_end in marks:
        if ms >= audio_end:
            heard = max(heard, text_end)
            continue
        if ms > audio_start and audio_end > audio_start:
            share = (ms - audio_start) / (audio_end - audio_start)
            heard = max(heard, text_start + int(share * (text_end - text_start)))
        break
    return heard


def heard_text(text: str, marks: list[list[int]], ms: float) -> str:
    """The part of ``text`` a listener heard by ``ms`` into the stream, cut back to a
    whole word (text with no spaces, such as Chinese, is cut at the character)."""
    cut = min(heard_chars(marks, ms), len(text))
    if cut < len(text) and cut > 0 and not text[cut].isspace() and not text[cut - 1].isspace():
        space = max(text.rfind(" ", 0, cut), text.rfind("\n", 0, cut))
        if space >= 0:
            cut = space
    return text[:cut].rstrip()


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
    # The reply's assistant's voice, where the engine has named voices ("": its own).
    voice_name: str = ""
    stats: SpeechStats = field(default_factory=SpeechStats)
    marks: SpeechMarks = field(default_factory=SpeechMarks)
    # Awaited when the speech has been made in full, before its `end` goes out.
    before_end: Callable[[], Awaitable[None]] | None = None
    fed_chars: int = 0
    _text: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    _playing: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _started: bool = False
    # Set by cancel(): nothing of the stream goes out after its `cancel` event. Every emit
    # holds the lock, so the `cancel` can go out at once, before synthesis has wound down
    # (a barge-in is heard as soon as members drop their queue, not once Piper stops).
    _cut: bool = False
    # Pacing: when the first chunk went out, and how long the speech was held paused since.
    _clock: float | None = None
    _paused_at: float | None = None
    _held: float = 0.0
    _emit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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
        self.fed_chars += len(text)
        self._text.put_nowait(text)

    def pause(self) -> None:
        if self._playing.is_set():
            self._paused_at = time.monotonic()
        self._playing.clear()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._held += time.monotonic() - self._paused_at
            self._paused_at = None
        self._playing.set()

    def finish(self) -> None:
        """The reply's text is complete: speak the rest, then end the stream."""
        self._text.put_nowait(_END)
        self.resume()

    async def cancel(self) -> None:
        """The reply was stopped: stop synthesis at once; members drop what they queued.

        The ``cancel`` event goes out first, and nothing of this stream after it (emits
        are serialised and checked); then the sender is cancelled and awaited. Calling it
        again (a reply whose text has ended, cut off again) sends no second ``cancel``.
        """
        async with self._emit_lock:
            first, self._cut = not self._cut, True
            if first and self._started:
                await room_audio_emit(
                    room_id=self.room_id,
                    event={"type": LIVE_AUDIO, "state": "cancel", "stream": self.stream},
                )
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _emit(self, event: dict[str, Any] | None = None, frame: bytes | None = None) -> bool:
        """Emit unless the stream was cut; False if it was."""
        async with self._emit_lock:
            if self._cut:
                return False
            await room_audio_emit(room_id=self.room_id, event=event, frame=frame)
            return True

    # --- the sender -----------------------------------------------------------------

    async def _run(self) -> None:
        engine = get_engine().with_voice(self.voice_name)
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
            if self.before_end is not None:
                await self.before_end()  # the record is complete once members hear `end`
            if self._started:
                await self._emit(
                    {
                        "type": LIVE_AUDIO,
                        "state": "end",
                        "stream": self.stream,
                        "chunks": self.stats.chunks,
                    }
                )
            metrics.upstream("tts")
        except TTSError as exc:
            metrics.upstream("tts", exc.code)
            # Speech failing never fails the reply: the text is what counts.
            logger.warning("speech for reply %s failed: %s", self.message_id, exc.reason)
            self.stats.error = exc.reason
            if self._started:
                await self._emit({"type": LIVE_AUDIO, "state": "cancel", "stream": self.stream})

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
            elapsed = time.monotonic() - waited
            self.stats.synthesis_seconds += elapsed
            if not self.stats.chunks:
                metrics.tts_first_byte(elapsed)  # the engine's first audio of this reply
            await self._playing.wait()  # a paused reply holds its audio too
            await self._pace()
            await self._playing.wait()  # paused while it was held back
            await self._send(chunk)

    async def _pace(self) -> None:
        """Keep the audio sent at most VOICE_AUDIO_LEAD seconds ahead of real time.

        Engines make speech several times faster than it plays. Sent as fast as it is
        made, a reply's audio would reach every listener in bursts (tens of MB/s for a
        room listening), crowding the event loop just when a barge-in must get through,
        and piling up seconds of audio in each client that a cancel then throws away.
        A lead of a second or so keeps every player fed through any network hiccup.
        """
        lead = settings.VOICE_AUDIO_LEAD
        if lead <= 0:
            return
        now = time.monotonic()
        if self._clock is None:
            self._clock = now
            return
        ahead = self.stats.audio_seconds - (now - self._clock - self._held) - lead
        if ahead > 0:
            await asyncio.sleep(ahead)  # pacing the stream, not waiting for an event

    async def _send(self, chunk: AudioChunk) -> None:
        if self._cut:
            return
        if not self._started:
            self._started = True
            self.stats.first_audio_at = time.monotonic()
            await self._emit(
                {
                    "type": LIVE_AUDIO,
                    "state": "start",
                    "stream": self.stream,
                    "message_id": str(self.message_id),
                    "format": "pcm_s16le",
                    "sample_rate": chunk.sample_rate,
                    "channels": 1,
                    "mode": self.mode,
                }
            )
        header = struct.pack(">II", self.stream, self.stats.chunks)
        if not await self._emit(frame=header + chunk.pcm):
            return
        self.marks.note(chunk, fed_chars=self.fed_chars)
        self.stats.chunks += 1
        self.stats.audio_seconds += chunk.duration
