"""Conversations, replies and their timings are reviewed in the admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from chat.models import Generation, Message, Role, Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def reviewed(admin_client, django_user_model):
    from accounts.services import api_token_create
    from chat.services import room_create

    owner = django_user_model.objects.create_user("ops", password="ops-pass-123")
    room = room_create(owner=owner, name="Reviewed")
    ask = Message.objects.create(room=room, role=Role.USER, author=owner, text="hi")
    reply = Message.objects.create(
        room=room, role=Role.ASSISTANT, text="hello", status=Status.STOPPED, reply_to=ask
    )
    now = timezone.now()
    Generation.objects.create(
        message=reply,
        backend="openai",
        model="m",
        queued_at=now,
        started_at=now,
        first_token_at=now + timedelta(milliseconds=250),
        ended_at=now,
        stop_reason="user",
        stopped_by=owner,
        voice="streaming",
        audio_seconds=4.0,
        synthesis_seconds=0.5,
    )
    api_token_create(user=owner, name="laptop")
    return reply


def test_every_admin_list_and_reply_page_renders(admin_client, reviewed):
    for url in (
        "/admin/chat/room/",
        "/admin/chat/message/",
        "/admin/chat/generation/",
        "/admin/chat/membership/",
        "/admin/accounts/apitoken/",
        f"/admin/chat/message/{reviewed.pk}/change/",
    ):
        assert admin_client.get(url).status_code == 200, url
    page = admin_client.get("/admin/chat/generation/").content.decode()
    assert "250 ms" in page  # time to first token
    assert "0.12" in page  # synthesis real-time factor 0.5 / 4.0


def test_tokens_are_issued_once_and_revoked_in_the_admin(admin_client, django_user_model):
    from accounts.models import ApiToken

    user = django_user_model.objects.create_user("prog", password="prog-pass-123")
    r = admin_client.post(
        "/admin/accounts/apitoken/add/", {"user": user.pk, "name": "ci"}, follow=True
    )
    assert r.status_code == 200
    shown = [str(m) for m in r.context["messages"]]
    assert any("pk_" in m for m in shown)
    token = ApiToken.objects.get(user=user)
    raw = next(m for m in shown if "pk_" in m).split(": ")[-1]
    assert token.key_hash != raw
    admin_client.post(
        "/admin/accounts/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}
    )
    token.refresh_from_db()
    assert token.revoked is not None
