"""Audio kept per message (voice/storage.py) goes with the message: a deleted reply's
audio at once (against the session's real daphne), and every audio file of a message when
``purge_deleted`` erases its text (in process)."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.utils import timezone

from chat.models import InputKind, Message, Role, Status
from voice.storage import reply_audio_path, speech_audio_path


def _conversation(owner, room, text: str) -> tuple[Message, Message]:
    question = Message.objects.create(
        room=room, role=Role.USER, author=owner, text=text, input=InputKind.SPEECH
    )
    reply = Message.objects.create(
        room=room,
        role=Role.ASSISTANT,
        text="A short answer.",
        status=Status.COMPLETE,
        reply_to=question,
    )
    return question, reply


@pytest.mark.django_db(transaction=True)
async def test_deleting_a_reply_removes_its_audio_file(daphne, make_user, make_room):
    from asgiref.sync import sync_to_async

    def setup() -> tuple[str, Message]:
        ann, token = make_user("ann")
        room = make_room(ann, "Spoken", voice="normal")
        _, reply = _conversation(ann, room, "say something")
        reply_audio_path(reply.pk).unlink(missing_ok=True)  # a file from an earlier test run
        return token, reply

    token, reply = await sync_to_async(setup)()
    cached = reply_audio_path(reply.pk)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=daphne.http_url, headers=headers, timeout=60) as ann:
        wav = await ann.get(f"/api/messages/{reply.pk}/audio")
        assert wav.status_code == 200, wav.text
        assert cached.read_bytes() == wav.content  # the view's cache is where storage says
        r = await ann.delete(f"/api/messages/{reply.pk}")
        assert r.status_code == 200, r.text
        assert not cached.exists()
        gone = await ann.get(f"/api/messages/{reply.pk}/audio")
        assert (gone.status_code, gone.json()["code"]) == (404, "not_found")
    assert not cached.exists()  # the refusal made nothing again


@pytest.mark.django_db
def test_purge_removes_the_audio_of_what_it_erases(django_user_model, settings, tmp_path):
    from chat.services import room_create

    settings.VOICE_CACHE_DIR = tmp_path / "replies"
    settings.PARLEY_SPEECH_AUDIO_DIR = str(tmp_path / "speech")
    settings.PARLEY_DELETED_RETENTION_DAYS = 30
    ann = django_user_model.objects.create_user("ann", password="pw-for-tests-123")
    room = room_create(owner=ann, name="Spoken")
    old_question, old_reply = _conversation(ann, room, "an old secret")
    recent_question, recent_reply = _conversation(ann, room, "a recent one")
    kept_question, kept_reply = _conversation(ann, room, "never deleted")
    files: dict[str, Path] = {}
    for name, message in [
        ("old", old_question),
        ("recent", recent_question),
        ("kept", kept_question),
    ]:
        speech = speech_audio_path(message.pk)
        assert speech is not None
        files[f"{name} speech"] = speech
    for name, message in [("old", old_reply), ("recent", recent_reply), ("kept", kept_reply)]:
        files[f"{name} reply"] = reply_audio_path(message.pk)
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")
    now = timezone.now()
    Message.objects.filter(pk__in=[old_question.pk, old_reply.pk]).update(
        deleted_at=now - timedelta(days=31), deleted_by=ann
    )
    Message.objects.filter(pk__in=[recent_question.pk, recent_reply.pk]).update(
        deleted_at=now - timedelta(days=29), deleted_by=ann
    )

    out = io.StringIO()
    call_command("purge_deleted", stdout=out)
    assert "Erased the text of 2 message(s)" in out.getvalue()
    left = {name for name, path in files.items() if path.exists()}
    # Past the retention: the recording and the reply's audio are gone with the text.
    # Within it, the recording stays for staff review as the text does (a deleted reply's
    # audio only goes at the delete itself, in the test above); never deleted: untouched.
    assert left == {"recent speech", "recent reply", "kept speech", "kept reply"}
