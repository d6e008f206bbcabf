"""The edit-and-rerun hook (chat.replies.reply_regenerate_for_message), in process: the
edits work calls it with the member's message id once the text is edited. A message
with a reply gets a new version of it; one nobody answered yet is answered as a send
would be. Through the real router's WebSocket, with the fake model server."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from chat.errors import BadRequest, NotFound
from chat.models import Message, Role, Status
from chat.replies import reply_regenerate_for_message
from tests.chat.test_consumers import inproc_llm, joined  # noqa: F401 - fixture by name
from tests.support.openai_server import Scenario

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def setup(make_user, make_room) -> Any:
    from chat.services import room_join

    ann, ann_token = make_user("ann")
    eve, _ = make_user("eve")
    room = make_room(ann, "Rerun", assistant="mention")
    room_join(room=room, user=ann)
    return room, ann, ann_token, eve


def _messages(room: Any) -> tuple[Message, Message, Message]:
    asked = Message.objects.create(room=room, role=Role.USER, author=room.owner, text="q1")
    reply = Message.objects.create(
        room=room, role=Role.ASSISTANT, text="old", status=Status.COMPLETE, reply_to=asked
    )
    from django.utils import timezone

    from chat.models import Generation

    Generation.objects.create(
        message=reply, backend="openai", handle="assistant", queued_at=timezone.now()
    )
    quiet = Message.objects.create(room=room, role=Role.USER, author=room.owner, text="q2")
    return asked, reply, quiet


async def test_rerun_makes_a_version_or_asks_for_a_first_answer(inproc_llm, setup):  # noqa: F811
    room, ann, token, eve = setup
    inproc_llm.script(Scenario.normal(["new answer"]), Scenario.normal(["first answer"]))
    asked, reply, quiet = await sync_to_async(_messages)(room)
    c = await joined(room.slug, token)

    made = await reply_regenerate_for_message(user=ann, message_id=str(asked.pk))
    assert [(m["version_of"], m["version"]) for m in made] == [(str(reply.pk), 2)]
    version = await c.until(lambda e: e["type"] == "version")
    assert (version["message_id"], version["current"]) == (str(reply.pk), made[0]["id"])
    end = await c.until(lambda e: e["type"] == "generation" and e["state"] == "complete")
    assert end["message_id"] == made[0]["id"]

    first = await reply_regenerate_for_message(user=ann, message_id=str(quiet.pk))
    assert len(first) == 1
    assert first[0]["reply_to"] == str(quiet.pk)
    assert "version_of" not in first[0]
    await c.until(
        lambda e: (
            e["type"] == "generation"
            and e["message_id"] == first[0]["id"]
            and e["state"] == "complete"
        )
    )
    assert (await sync_to_async(Message.objects.get)(pk=first[0]["id"])).text == "first answer"

    # A reply is not a member's message; a stranger does not see the room's messages.
    with pytest.raises(BadRequest):
        await reply_regenerate_for_message(user=ann, message_id=str(reply.pk))
    with pytest.raises(NotFound):
        await reply_regenerate_for_message(user=eve, message_id=str(asked.pk))
    await c.comm.disconnect()
