"""Voice's side of the reply seam: a reply is spoken as it streams, and can be cut off.

``chat.replies`` calls no voice code. At start-up (``VoiceConfig.ready``) this module
registers ``observe`` as a reply observer (chat/replies/observer.py) and ``silence`` as a
control other processes may send. For each reply with a voice mode, ``SpokenReply`` feeds
a ``ReplySpeech`` (voice/speech.py) what members were shown, holds it with the reply, and
finishes or cancels it; the speech's own task belongs to the reply manager (``adopt``),
because the audio may go on after the reply's text has ended.

While a reply's speech is being made it is listed in this process's ``Speaking`` (a part of
the runtime), so a member who cuts it off later finds it (``speech_interrupt``); once it
ends, its marks are in the database, so what a member heard is still known.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.db import transaction

from chat.errors import Busy, NotFound, NotGenerating
from chat.events import room_audio_emit
from chat.models import TERMINAL_STATUSES, Generation, VoiceMode
from chat.replies import get_manager, reply_control_checked
from chat.replies.control import register_action
from chat.replies.db import wall_time
from chat.replies.observer import Adopt, ReplyStart, register_observer
from chat.runtime import get_runtime
from chat.selectors import reply_for_control
from core.contract import LIVE_AUDIO
from voice.speech import ReplySpeech, heard_text


class Speaking:
    """The replies whose speech is being made in this process, by message id."""

    def __init__(self) -> None:
        self.speeches: dict[int, ReplySpeech] = {}

    def get(self, message_id: int) -> ReplySpeech | None:
        return self.speeches.get(message_id)

    def in_room(self, room_id: int) -> list[ReplySpeech]:
        return [s for s in self.speeches.values() if s.room_id == room_id]


def get_speaking() -> Speaking:
    return get_runtime().part(Speaking, lambda runtime: Speaking())


class SpokenReply:
    """A reply observer (chat/replies/observer.py) that speaks the reply."""

    def __init__(self, speech: ReplySpeech) -> None:
        self.speech = speech

    def shown(self, text: str) -> None:
        self.speech.feed(text)

    def paused(self) -> None:
        self.speech.pause()

    def resumed(self) -> None:
        self.speech.resume()

    def complete(self) -> None:
        self.speech.finish()  # complete, or failed: speak what members saw

    async def cancel(self) -> None:
        await self.speech.cancel()

    async def stopped(self, heard_ms: int) -> None:
        await database_sync_to_async(save_heard)(
            self.speech.message_id, heard_ms=heard_ms, marks=list(self.speech.marks.marks)
        )


def observe(start: ReplyStart, adopt: Adopt) -> SpokenReply | None:
    if start.voice == VoiceMode.OFF:
        return None
    speech = ReplySpeech(
        room_id=start.room_id,
        message_id=start.message_id,
        mode=start.voice,
        voice_name=start.voice_name,
    )
    if start.paused:
        speech.pause()
    adopt(_speak(speech))
    return SpokenReply(speech)


async def _speak(speech: ReplySpeech) -> None:
    """Run a reply's speech to its end, then record its timings (owned by the reply
    manager: the audio may go on after the reply's text has ended)."""
    saved = False

    async def save() -> None:
        nonlocal saved
        saved = True
        stats = speech.stats
        await database_sync_to_async(save_speech)(
            speech.message_id,
            mode=speech.mode,
            first_audio_at=stats.first_audio_at,
            audio_seconds=stats.audio_seconds,
            synthesis_seconds=stats.synthesis_seconds,
            marks=speech.marks.marks,
        )

    # Saved before `end` goes out when spoken in full (so a member who has the `end` finds
    # the record), else once the speech has stopped.
    speech.before_end = save
    task = speech.start()
    # Listed until its marks are stored: whoever cuts it off finds it here, or finds its
    # marks in the database.
    speaking = get_speaking().speeches
    speaking[speech.message_id] = speech
    try:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being shut down, not just the speech stopped
        if not saved:
            await save()
    finally:
        if speaking.get(speech.message_id) is speech:
            del speaking[speech.message_id]


# --- cutting a reply's speech off ---------------------------------------------------------


async def silence(*, message_id: int, heard_ms: int | None) -> bool:
    """Cut off the speech of a reply whose text has ended, if it is still being made
    here (members get the audio ``cancel``), keeping what the member who cut it off had
    heard. False when it is not speaking here."""
    speech = get_speaking().get(message_id)
    if speech is None:
        return False
    await speech.cancel()
    if heard_ms is not None:
        await database_sync_to_async(save_heard)(
            message_id, heard_ms=heard_ms, marks=list(speech.marks.marks)
        )
    return True


async def _silence_action(message_id: int, heard_ms: int | None) -> dict[str, Any]:
    return {"silenced": await silence(message_id=message_id, heard_ms=heard_ms)}


async def speech_interrupt(
    *, user: User, message_id: object, heard_ms: int | None, room_id: int | None = None
) -> None:
    """Cut off a reply's speech, for a member who may control it (a stop, or speaking
    over it: docs/protocol.md "What was heard, and barge-in").

    A reply still being written is stopped (upstream closed, audio ``cancel``). One whose
    text has ended may still be speaking: its speech is cancelled where it is made. One
    whose speech has all been sent still plays at the listeners for up to
    ``VOICE_AUDIO_LEAD``: they get the ``cancel`` all the same. Either way, what this
    member had heard by ``heard_ms`` is kept with the reply.
    """
    message = await database_sync_to_async(reply_for_control)(message_id=message_id, user=user)
    if room_id is not None and message.room_id != room_id:
        raise NotFound("no such reply in this room")
    manager = get_manager()
    if message.status not in TERMINAL_STATUSES:
        speech = get_speaking().get(message.pk)
        if speech is not None:
            # Silence first: listeners drop their audio now, not after upstream has closed.
            await speech.cancel()
        try:
            await reply_control_checked(message, user=user, action="stop", heard_ms=heard_ms)
            return
        except NotGenerating:
            pass  # it ended meanwhile: its speech may go on
    if await silence(message_id=message.pk, heard_ms=heard_ms):
        return
    worker = message.generation.worker if hasattr(message, "generation") else ""
    if worker and worker != manager.worker_id:
        try:
            answer = await manager.control_remote(
                worker=worker,
                message_id=message.pk,
                action="silence",
                by=user.get_username(),
                heard_ms=heard_ms,
            )
            if answer.get("silenced"):
                return
        except (NotGenerating, Busy):
            pass  # its process is gone or busy: what it sent is still playing
    await room_audio_emit(
        room_id=message.room_id,
        event={"type": LIVE_AUDIO, "state": "cancel", "stream": message.pk & 0xFFFFFFFF},
    )
    if heard_ms is not None:
        await database_sync_to_async(save_heard)(message.pk, heard_ms=heard_ms, marks=None)


# --- the records (run in worker threads) --------------------------------------------------


def save_speech(
    message_id: int,
    *,
    mode: str,
    first_audio_at: float | None,
    audio_seconds: float,
    synthesis_seconds: float,
    marks: list[list[int]],
) -> None:
    Generation.objects.filter(message_id=message_id).update(
        voice=mode,
        first_audio_at=wall_time(first_audio_at, now_mono=time.monotonic()),
        audio_seconds=audio_seconds,
        synthesis_seconds=synthesis_seconds,
        speech_marks=marks,
    )


def save_heard(message_id: int, *, heard_ms: int, marks: list[list[int]] | None) -> str | None:
    """Keep what the member who cut a spoken reply off had heard of it, ``heard_ms`` into
    its audio. ``marks`` are the live speech's (its owner's); None: the speech has ended,
    and its marks were saved with it. The first cut counts; None if the reply has no
    speech marks (it was never heard)."""
    with transaction.atomic():
        row = (
            Generation.objects.select_for_update()
            .select_related("message")
            .filter(message_id=message_id)
            .first()
        )
        if row is None or row.heard_text is not None:
            return None if row is None else row.heard_text
        if marks is None:
            marks = row.speech_marks
        if not marks:
            return None
        heard = heard_text(row.message.text, marks, heard_ms)
        row.heard_text, row.heard_ms = heard, heard_ms
        row.save(update_fields=["heard_text", "heard_ms"])
    return heard


def install() -> None:
    """Follow every reply, and answer ``silence`` from other processes (app start-up)."""
    register_observer(observe)
    register_action("silence", _silence_action)
