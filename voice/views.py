"""GET /api/messages/<id>/audio: the whole reply as one WAV (the normal voice mode)."""

from __future__ import annotations

import os
import tempfile
import wave
from pathlib import Path

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.views.decorators.http import require_GET

from chat import selectors
from chat.errors import Conflict, NotFound
from chat.http import async_api
from chat.models import TERMINAL_STATUSES, Role
from voice.registry import get_engine
from voice.segmenter import clean_for_speech


@require_GET
@async_api
async def message_audio(request: HttpRequest, user: User, message_id: str) -> HttpResponseBase:
    message = await database_sync_to_async(selectors.message_get)(message_id=message_id, user=user)
    if message.role != Role.ASSISTANT:
        raise NotFound("only assistant replies have audio")
    if message.status not in TERMINAL_STATUSES:
        raise Conflict("the reply is still being generated; ask again when it has ended")
    text = clean_for_speech(message.text)
    if not text.strip():
        raise NotFound("this reply has nothing to say")
    path = Path(settings.VOICE_CACHE_DIR) / f"{message.pk}.wav"
    if not await database_sync_to_async(path.exists)():
        pcm = bytearray()
        rate = 22050
        async for chunk in get_engine().synthesize(text):
            rate = chunk.sample_rate
            pcm += chunk.pcm
        await database_sync_to_async(write_wav)(path, bytes(pcm), rate)
    return FileResponse(path.open("rb"), content_type="audio/wav")


def write_wav(path: Path, pcm: bytes, sample_rate: int) -> None:
    """Write mono s16le ``pcm`` as a WAV, atomically (a rename), into the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw, wave.open(raw, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(sample_rate)
            out.writeframes(pcm)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
