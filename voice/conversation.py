"""Speaking to a room: an utterance in, its transcript sent as the member's message.

The WebSocket takes an utterance as ``speech start`` / binary PCM frames / ``speech end``
(chat/consumers.py), the HTTP fallback as one WAV or raw PCM body (voice/views.py); both
end in :func:`speech_send`, which transcribes it (voice/stt/) and sends the words through
``message_send`` like typed text, marked ``input: "speech"``. Speaking over a reply that is
being spoken is a stop (:func:`barge_in`). Speech audio is never stored unless
``PARLEY_SPEECH_AUDIO_DIR`` names a folder.
"""

from __future__ import annotations

import io
import logging
import time
import wave
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from chat.errors import BadRequest, Forbidden, NoSpeech, NotFound, SpeechFailed, SpeechTooLong
from chat.models import InputKind, Room
from chat.ratelimit import send_allow
from chat.replies import message_send
from chat.serializers import MessageDict
from core import metrics
from voice.storage import speech_audio_path
from voice.stt import STTError, get_stt_engine
from voice.stt.base import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, is_silent

logger = logging.getLogger(__name__)

#: The one PCM format taken: what every browser's AudioWorklet and every WAV tool makes.
PCM_FORMAT = "pcm_s16le"
# A listener whose last `played` report is older than this is no longer playing that
# stream (reports come every 250 ms while playing).
PLAYING_WITHIN = 1.0


def max_bytes(sample_rate: int) -> int:
    """The most PCM one utterance may hold at ``sample_rate``."""
    by_time = int(settings.PARLEY_SPEECH_MAX_SECONDS * sample_rate) * 2
    return min(by_time, settings.PARLEY_SPEECH_MAX_BYTES)


def too_long() -> SpeechTooLong:
    return SpeechTooLong(
        f"speech is limited to {settings.PARLEY_SPEECH_MAX_SECONDS:g} s per message"
    )


def parse_sample_rate(value: object) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE
    ):
        raise BadRequest(
            f"sample_rate must be a whole number of Hz, {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}"
        )
    return value


@dataclass
class Utterance:
    """PCM from one ``speech start`` to its ``end``, bounded as it arrives."""

    sample_rate: int
    request_id: object = None
    pcm: bytearray = field(default_factory=bytearray)
    limit: int = 0

    def __post_init__(self) -> None:
        self.limit = max_bytes(self.sample_rate)

    def add(self, data: bytes) -> None:
        if len(self.pcm) + len(data) > self.limit:
            raise too_long()
        self.pcm += data


def decode_upload(body: bytes, content_type: str, rate: str | None) -> tuple[bytes, int]:
    """(PCM s16le mono, sample rate) from an HTTP body: a WAV file, or raw PCM whose rate
    is in ``audio/L16;rate=16000`` / ``audio/pcm;rate=...`` or the ``sample_rate`` query."""
    if len(body) > settings.PARLEY_SPEECH_MAX_BYTES:
        raise too_long()
    kind, _, params = content_type.partition(";")
    kind = kind.strip().lower()
    if body[:4] == b"RIFF" or kind in ("audio/wav", "audio/x-wav", "audio/wave"):
        return _decode_wav(body)
    if kind in ("audio/l16", "audio/pcm", "application/octet-stream"):
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "rate":
                rate = value.strip()
        if rate is None or not rate.isascii() or not rate.isdigit() or len(rate) > 6:
            raise BadRequest("raw PCM needs its rate: audio/L16;rate=16000 or ?sample_rate=")
        sample_rate = parse_sample_rate(int(rate))
        if len(body) > max_bytes(sample_rate):
            raise too_long()
        return body[: len(body) - len(body) % 2], sample_rate
    raise BadRequest("send speech as audio/wav, or as audio/L16;rate=<Hz> (16-bit PCM)")


def _decode_wav(body: bytes) -> tuple[bytes, int]:
    try:
        with wave.open(io.BytesIO(body), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            if width != 2:
                raise BadRequest("the WAV must be 16-bit PCM")
            sample_rate = parse_sample_rate(rate)
            if wav.getnframes() * channels * width > settings.PARLEY_SPEECH_MAX_BYTES:
                raise too_long()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise BadRequest(f"not a WAV file this server can read: {exc}") from exc
    if channels == 2:
        import numpy as np

        both = np.frombuffer(frames[: len(frames) - len(frames) % 4], dtype="<i2")
        frames = ((both[0::2].astype(np.int32) + both[1::2]) // 2).astype("<i2").tobytes()
    elif channels != 1:
        raise BadRequest("the WAV must be mono or stereo")
    if len(frames) > max_bytes(sample_rate):
        raise too_long()
    return frames, sample_rate


async def speech_send(
    *,
    user: User,
    room: Room,
    pcm: bytes,
    sample_rate: int,
    client_id: object = None,
    ask_ai: object = None,
    voice: object = None,
    rate_checked: bool = False,
) -> tuple[MessageDict, list[MessageDict]]:
    """Transcribe one utterance and send its words as ``user``'s message in ``room``."""
    if not rate_checked:
        await send_allow(user_id=user.pk)  # before the transcription, which costs a core
    started = time.monotonic()
    if is_silent(pcm):
        raise NoSpeech("no words were recognised in that speech; try again, closer or louder")
    audio_seconds = len(pcm) / 2 / sample_rate
    try:
        text = await get_stt_engine().transcribe(pcm, sample_rate)
    except STTError as exc:
        metrics.stt_done(seconds=0.0, audio_seconds=audio_seconds, error_code=exc.code)
        raise SpeechFailed(exc.reason) from exc
    took = time.monotonic() - started
    metrics.stt_done(seconds=took, audio_seconds=audio_seconds)
    logger.info("transcribed %.1f s of speech in %.0f ms", audio_seconds, took * 1000)
    if not text:
        raise NoSpeech("no words were recognised in that speech; try again, closer or louder")
    text = text[: settings.PARLEY_MAX_MESSAGE_CHARS]
    sent = await message_send(
        user=user,
        room=room,
        text=text,
        client_id=client_id,
        ask_ai=ask_ai,
        voice=voice,
        input=InputKind.SPEECH,
        rate_checked=True,
    )
    if settings.PARLEY_SPEECH_AUDIO_DIR:
        _keep_audio(sent[0]["id"], pcm, sample_rate)
    return sent


def _keep_audio(message_id: str, pcm: bytes, sample_rate: int) -> None:
    from voice.stt.base import to_wav

    path = speech_audio_path(int(message_id))
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_wav(pcm, sample_rate))
    except OSError as exc:
        logger.warning("could not keep the speech of message %s: %s", message_id, exc)


@dataclass
class Playback:
    """One connection's ``played`` reports: how far it has played each audio stream."""

    streams: dict[int, tuple[int, float]] = field(default_factory=dict)
    # A connection plays a reply or two at a time; old streams are forgotten.
    keep: int = 8

    def report(self, stream: int, ms: int) -> None:
        self.streams.pop(stream, None)
        self.streams[stream] = (ms, time.monotonic())
        while len(self.streams) > self.keep:
            del self.streams[next(iter(self.streams))]

    def heard_ms(self, stream: int) -> int | None:
        entry = self.streams.get(stream)
        return None if entry is None else entry[0]

    def playing(self) -> list[int]:
        now = time.monotonic()
        return [s for s, (_ms, at) in self.streams.items() if now - at <= PLAYING_WITHIN]


def parse_played(frame: dict[str, Any]) -> tuple[int, int]:
    stream, ms = frame.get("stream"), frame.get("ms")
    for name, value in (("stream", stream), ("ms", ms)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
            raise BadRequest(f"{name} must be a non-negative integer")
    assert isinstance(stream, int)
    assert isinstance(ms, int)
    return stream, ms


async def barge_in(*, user: User, room: Room, playback: Playback) -> list[int]:
    """``user`` started speaking: cut off each reply being spoken to them that they may
    control (the asker, the room owner, staff; docs/protocol.md "What was heard, and
    barge-in"). Being spoken to them: a stream they reported playing within the last
    second, or a reply of this room whose speech is being made in this process. Returns
    the replies cut off."""
    from voice.reply_speech import get_speaking, speech_interrupt

    # The reply being spoken from here first (it is what is speaking now), then what this
    # member reported playing, latest first.
    targets = [speech.stream for speech in get_speaking().in_room(room.pk)]
    targets += [s for s in reversed(playback.playing()) if s not in targets]
    stopped = []
    for stream in targets:
        try:
            await speech_interrupt(
                user=user, message_id=stream, heard_ms=playback.heard_ms(stream), room_id=room.pk
            )
        except (Forbidden, NotFound, BadRequest):
            continue  # not theirs to stop: speaking in the room is still fine
        stopped.append(stream)
    return stopped
