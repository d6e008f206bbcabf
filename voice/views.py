"""GET /api/messages/<id>/audio: the whole reply as one WAV (the normal voice mode), and
POST /api/rooms/<slug>/speech: speak a message over plain HTTP (voice/conversation.py)."""

from __future__ import annotations

import os
import tempfile
import wave
from pathlib import Path

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.http import FileResponse, HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from chat import selectors
from chat.errors import BadRequest, Conflict, NotFound
from chat.http import async_api
from chat.models import TERMINAL_STATUSES, Message, Role
from voice.registry import get_engine
from voice.segmenter import clean_for_speech
from voice.storage import reply_audio_erase, reply_audio_path


@require_GET
@async_api
async def message_audio(request: HttpRequest, user: User, message_id: str) -> HttpResponseBase:
    message = await database_sync_to_async(selectors.message_get)(message_id=message_id, user=user)
    if message.role != Role.ASSISTANT:
        raise NotFound("only assistant replies have audio")
    if message.deleted_at is not None:
        raise NotFound("this message was deleted")
    if message.status not in TERMINAL_STATUSES:
        raise Conflict("the reply is still being generated; ask again when it has ended")
    text = clean_for_speech(message.text)
    if not text.strip():
        raise NotFound("this reply has nothing to say")
    path = reply_audio_path(message.pk)
    if not await database_sync_to_async(path.exists)():
        pcm = bytearray()
        rate = 22050
        async for chunk in get_engine().synthesize(text):
            rate = chunk.sample_rate
            pcm += chunk.pcm
        await database_sync_to_async(write_wav)(path, bytes(pcm), rate)
        # Deleted while it was being made: the delete found no file to remove (its hook,
        # voice/storage.py, runs after its commit), so this request removes it. A delete
        # committed after this check finds the file and removes it itself.
        if await database_sync_to_async(_deleted)(message.pk):
            await database_sync_to_async(reply_audio_erase)([message.pk])
            raise NotFound("this message was deleted")
    return FileResponse(path.open("rb"), content_type="audio/wav")


def _deleted(message_id: int) -> bool:
    return Message.objects.filter(pk=message_id, deleted_at__isnull=False).exists()


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


@require_POST
@async_api
async def room_speech(request: HttpRequest, user: User, slug: str) -> HttpResponseBase:
    """One utterance as the body (audio/wav, or audio/L16;rate=16000 raw PCM); the send's
    options as query parameters (ask_ai=1|0, voice=<mode>, client_id=...). Answers as a
    send does, with the transcript as the message's text."""
    from voice.conversation import decode_upload, speech_send, too_long

    room = await database_sync_to_async(selectors.room_get_for_member)(slug=slug, user=user)
    length = request.headers.get("Content-Length")
    if length is not None and (
        not length.isdigit() or int(length) > settings.PARLEY_SPEECH_MAX_BYTES
    ):
        raise too_long()
    pcm, rate = decode_upload(
        request.body, request.headers.get("Content-Type", ""), request.GET.get("sample_rate")
    )
    ask_ai: bool | None = None
    if "ask_ai" in request.GET:
        flag = request.GET["ask_ai"]
        if flag not in ("0", "1", "true", "false"):
            raise BadRequest("ask_ai must be 1 or 0")
        ask_ai = flag in ("1", "true")
    message, replies = await speech_send(
        user=user,
        room=room,
        pcm=pcm,
        sample_rate=rate,
        client_id=request.GET.get("client_id"),
        ask_ai=ask_ai,
        voice=request.GET.get("voice"),
    )
    body = {"message": message, "reply": replies[0] if replies else None, "replies": replies}
    return JsonResponse(body, status=202 if replies else 201)
