"""The speech interface: text in, an async stream of PCM chunks out.

Shape after the model backends (``chat/llm/base.py``): a TTS engine is an async iterator
of :class:`AudioChunk` (signed 16-bit little-endian mono PCM with its sample rate), and
every failure a user can hit is raised as :class:`TTSError` with a reason the UI can show.

Two ways to speak (docs/protocol.md "Audio frames"):

- :meth:`TTSEngine.synthesize` takes one whole text (``normal`` mode, and each sentence
  in ``streaming`` mode). The caller stops it by cancelling the task that iterates it or
  by ``aclose()`` on the generator; either releases the engine at once (the local engine
  stops its worker thread between chunks, a remote one closes its connection).
- :meth:`TTSEngine.open_session` starts a realtime :class:`TTSSession`: text is fed as
  it streams from the model, audio comes back as it is made. An engine that takes
  streamed text natively (``native_streaming``) overrides it; every other engine gets
  :class:`SegmentingSession`, which cuts the fed text at clause ends and synthesizes
  each clause in order as soon as it is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Final

from voice.segmenter import (
    DEFAULT_FIRST_CUT_CHARS,
    SentenceSegmenter,
    SpeechTextStream,
    clean_for_speech,
)

logger = logging.getLogger(__name__)

#: Bytes per sample of the PCM every engine yields (s16le mono).
SAMPLE_WIDTH: Final = 2
# The largest chunk an engine yields. Each chunk becomes one binary WebSocket frame to
# every listener (docs/protocol.md "Audio frames"); a quarter second keeps the per-frame overhead
# negligible while a cancelled stream leaves little queued audio behind.
MAX_CHUNK_SECONDS: Final = 0.25
# A network engine passes audio on once this much has arrived, rather than one frame per
# few-byte read: small enough not to add latency anyone hears.
MIN_CHUNK_SECONDS: Final = 0.05
# How many chunks a session keeps ready for a slow reader before its engine is made to
# wait: 4 s of audio at the largest chunk size, a few KB to a few hundred KB of memory.
SESSION_BUFFER_CHUNKS: Final = 16


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Signed 16-bit little-endian mono PCM at ``sample_rate`` Hz.

    ``text_start``/``text_end``: the span of the fed text (character offsets) that the
    piece this chunk belongs to speaks, when the session knows it (:class:`SegmentingSession`
    does; an engine that takes streamed text natively does not, and leaves -1). The reply's
    speech maps a listener's playback position back to text with it (what was heard).
    """

    pcm: bytes
    sample_rate: int
    text_start: int = -1
    text_end: int = -1

    @property
    def samples(self) -> int:
        return len(self.pcm) // SAMPLE_WIDTH

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.samples / self.sample_rate


class TTSError(Exception):
    """A speech failure, with a machine code and a reason a room member can read.

    Codes: ``refused`` (cannot connect), ``timeout`` (the engine went silent),
    ``upstream_status`` (the speech service answered with an error), ``malformed`` (audio
    or a message we cannot parse), ``disconnected`` (the service closed mid-reply),
    ``unavailable`` (the engine cannot run here, e.g. the bundled voice failed to load).
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def internal_error() -> TTSError:
    return TTSError("unavailable", "Speech stopped because of an internal error.")


# How many other voices an engine keeps a copy for (a room's assistants' voices; past
# this, a copy per reply, which costs a small object and nothing else).
_VOICED_MAX = 32


class TTSEngine(ABC):
    #: Short name, as in the TTS_BACKEND setting.
    name: ClassVar[str]
    #: True when :meth:`open_session` streams text into the engine itself.
    native_streaming: ClassVar[bool] = False
    #: True when the engine speaks with a named voice (its ``voice`` attribute), so an
    #: assistant's own voice can be used (:meth:`with_voice`).
    named_voices: ClassVar[bool] = False

    def __init__(self, *, sample_rate: int | None) -> None:
        #: The rate of the PCM this engine yields, when known before the first chunk;
        #: None when only the audio tells (each :class:`AudioChunk` always says).
        self.sample_rate = sample_rate
        # Background work this engine owns: session tasks (cancelled on close) and
        # clean-ups such as closing a connection (awaited on close; each is bounded).
        self._tasks: set[asyncio.Task[None]] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        # This engine in other voices (with_voice), one per voice asked for.
        self._voiced: dict[str, TTSEngine] = {}

    def with_voice(self, voice: str) -> TTSEngine:
        """This engine speaking with ``voice`` (an assistant's); itself for "" or an engine
        without named voices. The copy shares this engine's connections and background
        work, so closing this engine closes it too."""
        if not voice or not self.named_voices or getattr(self, "voice", None) == voice:
            return self
        engine = self._voiced.get(voice)
        if engine is None:
            engine = copy.copy(self)
            setattr(engine, "voice", voice)  # noqa: B010 - named_voices engines have it
            if len(self._voiced) < _VOICED_MAX:
                self._voiced[voice] = engine
        return engine

    @abstractmethod
    def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        """Yield the speech for the whole ``text``, in order.

        ``text`` should already be speakable (see :func:`voice.segmenter.clean_for_speech`);
        an empty or blank text yields nothing. Raises :class:`TTSError`;
        ``asyncio.CancelledError`` always propagates.
        """

    def synthesize_streaming(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        """Yield the speech for one sentence of the ``streaming`` voice mode.

        As :meth:`synthesize`, which it is unless the engine has a way to speak one
        sentence sooner (the Qwen engine streams it over SSE where ``synthesize`` waits
        for a whole audio file).
        """
        return self.synthesize(text)

    async def open_session(self) -> TTSSession:
        """Start a realtime session. It must be ended by ``aclose()`` (or ``async with``)."""
        return SegmentingSession(self, clause_mode=True)

    def _adopt(self, task: asyncio.Task[None], *, cleanup: bool = False) -> None:
        """Own a background task until it ends; :meth:`aclose` ends or awaits the rest."""
        owned = self._cleanups if cleanup else self._tasks
        owned.add(task)
        task.add_done_callback(owned.discard)

    async def aclose(self) -> None:
        """End every session's background work and release long-lived resources."""
        while self._tasks or self._cleanups:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            pending = tasks + list(self._cleanups)
            await asyncio.wait(pending)
            for task in pending:
                _consume(task)
            self._tasks.difference_update(pending)
            self._cleanups.difference_update(pending)


class TTSSession(ABC):
    """A realtime speech stream: ``feed()`` text as it arrives, iterate the audio.

    Use::

        async with await engine.open_session() as session:
            ...  # a producer task: await session.feed(delta) ...; await session.finish()
            async for chunk in session:
                ...

    - ``feed(text)`` takes raw reply text (Markdown and all: the session makes it
      speakable) and never waits for the engine. Feeding after ``cancel()`` is ignored;
      feeding after ``finish()`` is a programming error (``RuntimeError``).
    - ``finish()`` says the text is complete; iteration ends after the last audio.
    - ``cancel()`` stops at once: iteration ends now (a pending ``__anext__`` returns),
      queued audio is dropped and the engine is told to stop. It does not wait for the
      engine to acknowledge; ``aclose()`` does.
    - Engine failures never raise from ``feed`` or ``finish`` (the text reply must not
      fail because speech did): iteration raises the :class:`TTSError` once, then ends.
    - ``aclose()`` cancels unless the audio was read to its end, then waits for the
      session's background work to stop. Always call it.
    """

    def __init__(self, *, sample_rate: int | None, buffer_chunks: int) -> None:
        self.sample_rate = sample_rate
        self._pipe = AudioPipe(buffer_chunks)
        self._finished = False
        self._cancelled = False

    # -- the interface -------------------------------------------------------------------

    async def feed(self, text: str) -> None:
        if self._cancelled or not text:
            return
        if self._finished:
            raise RuntimeError("TTSSession.feed() after finish()")
        self._feed(text)

    async def finish(self) -> None:
        if self._finished or self._cancelled:
            return
        self._finished = True
        self._finish()

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._pipe.abort()
        await self._cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def ended(self) -> bool:
        """The reader has seen the end of the audio (or its error), not a cancel."""
        return self._pipe.drained

    def __aiter__(self) -> TTSSession:
        return self

    async def __anext__(self) -> AudioChunk:
        chunk = await self._pipe.get()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._pipe.drained:
            await self.cancel()
        await self._wait_closed()

    async def __aenter__(self) -> TTSSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- what an engine's session provides -----------------------------------------------

    @abstractmethod
    def _feed(self, text: str) -> None:
        """Take more text (never after finish or cancel); must not block."""

    @abstractmethod
    def _finish(self) -> None:
        """The text is complete."""

    @abstractmethod
    async def _cancel(self) -> None:
        """Tell the engine to stop; the pipe is already aborted. Return promptly."""

    @abstractmethod
    async def _wait_closed(self) -> None:
        """Wait until the session's background work has ended."""


#: Put in a :class:`TextStreamSession`'s outbox when the text is complete.
FINISH: Final = object()


class TextStreamSession(TTSSession):
    """A realtime session for an engine that takes the text itself as a stream (Volcano,
    Qwen): fed text, cleaned for speech word by word, waits in an outbox that the
    engine's background task (``_run``, owned by the engine) sends from; ``FINISH`` ends it.
    """

    def __init__(self, engine: TTSEngine, *, sample_rate: int | None, name: str) -> None:
        super().__init__(sample_rate=sample_rate, buffer_chunks=SESSION_BUFFER_CHUNKS)
        self._cleaner = SpeechTextStream()
        self._outbox: deque[object] = deque()
        self._outbox_ready = asyncio.Event()
        self._finish_sent = False
        # The timeout around the message being awaited, so that finishing (or cancelling)
        # can shorten a wait that began while the service could rightly stay silent.
        self._receiving: asyncio.Timeout | None = None
        self._task = asyncio.create_task(self._run(), name=name)
        engine._adopt(self._task)

    @abstractmethod
    async def _run(self) -> None:
        """Connect, send the outbox, receive audio into the pipe, until the end."""

    def _feed(self, text: str) -> None:
        spoken = self._cleaner.feed(text)
        if spoken:
            self._post(spoken)

    def _finish(self) -> None:
        rest = self._cleaner.flush()
        if rest:
            self._post(rest)
        self._post(FINISH)

    async def _wait_closed(self) -> None:
        await asyncio.wait({self._task})
        _consume(self._task)

    def _post(self, item: object) -> None:
        self._outbox.append(item)
        self._outbox_ready.set()

    def _wait_at_most(self, seconds: float) -> None:
        receiving = self._receiving
        if receiving is None:
            return
        deadline = asyncio.get_running_loop().time() + seconds
        current = receiving.when()
        if current is None or current > deadline:
            receiving.reschedule(deadline)


class SegmentingSession(TTSSession):
    """A realtime session for engines that take one text per call.

    Fed text is cut by :class:`~voice.segmenter.SentenceSegmenter` (clause ends in
    ``clause_mode``, sentence ends otherwise, which suits the ``streaming`` voice mode);
    each piece is cleaned for speech and synthesized in order by one background task,
    as soon as it is complete, while the next text keeps arriving.
    """

    def __init__(
        self,
        engine: TTSEngine,
        *,
        clause_mode: bool = True,
        first_cut_chars: int | None = DEFAULT_FIRST_CUT_CHARS,
        buffer_chunks: int = SESSION_BUFFER_CHUNKS,
    ) -> None:
        super().__init__(sample_rate=engine.sample_rate, buffer_chunks=buffer_chunks)
        self._engine = engine
        self._synthesize = engine.synthesize if clause_mode else engine.synthesize_streaming
        self._segmenter = SentenceSegmenter(
            clause_mode=clause_mode, first_cut_chars=first_cut_chars
        )
        # Each piece to speak, with its span in the fed text (None ends the queue).
        self._pieces: deque[tuple[str, int, int] | None] = deque()
        self._fed = ""  # all text fed so far, to find each piece's span in it
        self._located = 0
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"tts-session-{engine.name}")
        engine._adopt(self._task)

    def _feed(self, text: str) -> None:
        self._fed += text
        for piece in self._segmenter.feed(text):
            self._queue(piece)

    def _finish(self) -> None:
        for piece in self._segmenter.flush():
            self._queue(piece)
        self._pieces.append(None)
        self._ready.set()

    def _queue(self, piece: str) -> None:
        # The segmenter returns pieces as written, stripped: each is found in order.
        at = self._fed.find(piece, self._located)
        start = at if at >= 0 else self._located
        end = start + len(piece) if at >= 0 else len(self._fed)
        self._located = end
        spoken = clean_for_speech(piece)
        if spoken:
            self._pieces.append((spoken, start, end))
            self._ready.set()

    async def _cancel(self) -> None:
        self._task.cancel()

    async def _wait_closed(self) -> None:
        await asyncio.wait({self._task})
        _consume(self._task)

    async def _run(self) -> None:
        try:
            while True:
                while not self._pieces:
                    self._ready.clear()
                    await self._ready.wait()
                item = self._pieces.popleft()
                if item is None:
                    break
                piece, start, end = item
                async with contextlib.aclosing(self._synthesize(piece)) as audio:
                    async for chunk in audio:
                        tagged = dataclasses.replace(chunk, text_start=start, text_end=end)
                        if not await self._pipe.put(tagged):
                            return
            self._pipe.end()
        except TTSError as exc:
            self._pipe.fail(exc)
        except Exception:
            # A bug, not a speech service failure: log it, and let the reader end.
            logger.exception("speech session for %s failed", self._engine.name)
            self._pipe.fail(internal_error())
        finally:
            if not self._pipe.closed:
                self._pipe.abort()  # cancelled from outside the session (engine.aclose)


class AudioPipe:
    """A bounded queue of audio from one producer to one reader, in the event loop.

    ``put`` waits while ``maxsize`` chunks are unread and returns False once the reader
    is gone (aborted); ``end``/``fail`` let the reader drain what is queued, then end
    (raising the error once); ``abort`` drops what is queued and ends the reader now.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._maxsize = maxsize
        self._items: deque[AudioChunk] = deque()
        self._error: TTSError | None = None
        self._closed = False
        self._aborted = False
        self._drained = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    @property
    def drained(self) -> bool:
        """The reader has seen the end (normal or failed), not an abort."""
        return self._drained

    @property
    def aborted(self) -> bool:
        return self._aborted

    @property
    def closed(self) -> bool:
        """No more audio will be put (ended, failed or aborted)."""
        return self._closed

    async def put(self, chunk: AudioChunk) -> bool:
        while len(self._items) >= self._maxsize and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return False
        self._items.append(chunk)
        self._readable.set()
        return True

    async def get(self) -> AudioChunk | None:
        while not self._items and not self._closed:
            self._readable.clear()
            await self._readable.wait()
        if self._items:
            self._writable.set()
            return self._items.popleft()
        if self._aborted:
            return None
        self._drained = True
        error, self._error = self._error, None
        if error is not None:
            raise error
        return None

    def end(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()

    def fail(self, error: TTSError) -> None:
        if not self._closed:
            self._error = error
        self.end()

    def abort(self) -> None:
        self._aborted = True
        self._items.clear()
        self._error = None
        self.end()


class PCMChunker:
    """Regroup a PCM byte stream into whole-sample chunks of a sensible size.

    ``push(data)`` returns the chunks ready (each at least ``MIN_CHUNK_SECONDS``, at most
    ``MAX_CHUNK_SECONDS``), keeping a partial sample or a short tail for later;
    ``flush()`` returns the tail.
    """

    def __init__(self, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.sample_rate = sample_rate
        self._min = max(SAMPLE_WIDTH, int(sample_rate * MIN_CHUNK_SECONDS) * SAMPLE_WIDTH)
        self._max = max(self._min, int(sample_rate * MAX_CHUNK_SECONDS) * SAMPLE_WIDTH)
        self._buf = bytearray()

    def push(self, data: bytes) -> list[AudioChunk]:
        self._buf += data
        chunks: list[AudioChunk] = []
        while len(self._buf) >= self._min:
            size = min(len(self._buf), self._max)
            size -= size % SAMPLE_WIDTH
            chunks.append(AudioChunk(bytes(self._buf[:size]), self.sample_rate))
            del self._buf[:size]
        return chunks

    def flush(self) -> list[AudioChunk]:
        size = len(self._buf) - len(self._buf) % SAMPLE_WIDTH
        chunk = bytes(self._buf[:size])
        self._buf.clear()
        return [AudioChunk(chunk, self.sample_rate)] if chunk else []


def split_pcm(pcm: bytes, sample_rate: int) -> list[AudioChunk]:
    """Cut a whole synthesized PCM buffer into chunks of at most ``MAX_CHUNK_SECONDS``."""
    step = max(SAMPLE_WIDTH, int(sample_rate * MAX_CHUNK_SECONDS) * SAMPLE_WIDTH)
    usable = len(pcm) - len(pcm) % SAMPLE_WIDTH
    return [AudioChunk(pcm[at : at + step], sample_rate) for at in range(0, usable, step)]


def _consume(task: asyncio.Task[None]) -> None:
    """Retrieve a finished task's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
