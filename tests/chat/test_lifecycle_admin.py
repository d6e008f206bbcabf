"""What staff see of edits, deletes and ratings (the admin), and how long a deleted
message's text is kept (`manage.py purge_deleted`); exports and the prompt leave deleted
messages out. In process: no daphne needed."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from chat.models import Generation, Message, MessageEdit, Rating, Role, Status
from chat.replies.db import prompt_for
from chat.transcripts import room_transcript, transcript_json

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(django_user_model):
    from chat.services import room_create

    ann = django_user_model.objects.create_user("ann", password="pw-for-tests-123")
    room = room_create(owner=ann, name="Reviewed")

    def reply(text: str, *, handle: str, model: str, to: Message) -> Message:
        m = Message.objects.create(
            room=room, role=Role.ASSISTANT, text=text, status=Status.COMPLETE, reply_to=to
        )
        Generation.objects.create(
            message=m,
            backend="openai",
            model=model,
            handle=handle,
            assistant_name=handle.title(),
            queued_at=timezone.now(),
        )
        return m

    ask = Message.objects.create(room=room, role=Role.USER, author=ann, text="hi there")
    return ann, room, ask, reply


def test_purge_erases_only_what_is_past_the_retention(conversation, settings):
    ann, room, ask, _ = conversation
    settings.PARLEY_DELETED_RETENTION_DAYS = 30
    now = timezone.now()
    old = Message.objects.create(room=room, role=Role.USER, author=ann, text="old secret")
    MessageEdit.objects.create(message=old, text_before="older secret", by=ann)
    recent = Message.objects.create(room=room, role=Role.USER, author=ann, text="recent")
    Message.objects.filter(pk=old.pk).update(deleted_at=now - timedelta(days=31), deleted_by=ann)
    Message.objects.filter(pk=recent.pk).update(deleted_at=now - timedelta(days=29))

    out = io.StringIO()
    call_command("purge_deleted", stdout=out)
    assert "Erased the text of 1 message(s)" in out.getvalue()
    old.refresh_from_db()
    recent.refresh_from_db()
    ask.refresh_from_db()
    assert (old.text, old.deleted_at is not None) == ("", True)  # the tombstone stays
    assert not MessageEdit.objects.filter(message=old).exists()
    assert recent.text == "recent"  # still within the retention: staff can read it
    assert ask.text == "hi there"  # never deleted: never touched
    # Running it again finds nothing more.
    out = io.StringIO()
    call_command("purge_deleted", stdout=out)
    assert "Erased the text of 0 message(s)" in out.getvalue()


def test_deleted_messages_leave_exports_and_prompts(conversation):
    ann, room, ask, reply = conversation
    gone = Message.objects.create(
        room=room, role=Role.USER, author=ann, text="forget this", deleted_at=timezone.now()
    )
    answer = reply("ok", handle="assistant", model="m", to=ask)
    exported = json.dumps(transcript_json(room_transcript(room_id=room.pk)))
    assert "forget this" not in exported
    assert "hi there" in exported
    prompt = " ".join(m.content for m in prompt_for(answer.pk))
    assert gone.pk < answer.pk  # it came before the reply, so it would be in its prompt
    assert "forget this" not in prompt
    assert "hi there" in prompt


def test_staff_review_edits_deleted_text_and_feedback_by_assistant_and_model(
    admin_client, conversation, django_user_model
):
    ann, room, ask, reply = conversation
    bob = django_user_model.objects.create_user("bob", password="pw-for-tests-123")
    MessageEdit.objects.create(message=ask, text_before="hi thre", by=ann)
    Message.objects.filter(pk=ask.pk).update(edited_at=timezone.now())
    coder = reply("looks fine", handle="coder", model="qwen-coder", to=ask)
    poet = reply("roses", handle="poet", model="llama-poet", to=ask)
    Rating.objects.create(message=coder, user=ann, value=1, comment="spot on")
    Rating.objects.create(message=coder, user=bob, value=-1, comment="missed a bug")
    Rating.objects.create(message=poet, user=bob, value=1, comment="")
    deleted = Message.objects.create(
        room=room, role=Role.USER, author=bob, text="taken back", deleted_at=timezone.now()
    )

    page = admin_client.get(f"/admin/chat/message/{ask.pk}/change/").content.decode()
    assert "hi thre" in page  # the text before the edit
    deleted_list = admin_client.get("/admin/chat/message/?deleted=yes").content.decode()
    assert "taken back" in deleted_list
    assert admin_client.get(f"/admin/chat/message/{deleted.pk}/change/").status_code == 200

    ratings = admin_client.get("/admin/chat/rating/").content.decode()
    assert "spot on" in ratings
    assert "missed a bug" in ratings
    by_model = admin_client.get(
        "/admin/chat/rating/?message__generation__model=qwen-coder"
    ).content.decode()
    assert "spot on" in by_model
    assert "roses" not in by_model
    counts = by_model.split('id="rating-counts"')[1].split("</table>")[0]
    assert "@coder" in counts
    assert "@poet" not in counts
    assert "<td>1</td><td>1</td>" in counts  # one up, one down
    by_assistant = admin_client.get(
        "/admin/chat/rating/?message__generation__handle=poet"
    ).content.decode()
    assert "missed a bug" not in by_assistant
