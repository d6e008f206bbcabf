"""Migrations 0006 and 0007 on a database that has rooms and replies in it: every room
gets its ``assistant`` assistant with the room's mode and prompt, its old replies point
at it; and going back puts the mode and prompt on the room again.

Built with Django's MigrationExecutor on the test database: migrated back to 0005, filled
through the historical models of 0005, then migrated forward (and back, and forward)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("chat", "0005_generation_ending")]


def _migrate(targets: list[tuple[str, str]] | None = None) -> Any:
    """Migrate to ``targets`` (None: every app's latest); the apps as they are there."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    plan_to = targets or executor.loader.graph.leaf_nodes()
    executor.migrate(plan_to)
    executor = MigrationExecutor(connection)
    return executor.loader.project_state(plan_to).apps


@pytest.fixture
def at_0005() -> Iterator[Any]:
    apps = _migrate(BEFORE)
    try:
        yield apps
    finally:
        _migrate()  # the rest of the session runs on the latest schema


def test_every_room_gets_its_assistant_and_old_replies_point_at_it(at_0005):
    apps = at_0005
    User = apps.get_model("auth", "User")
    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    Generation = apps.get_model("chat", "Generation")
    Membership = apps.get_model("chat", "Membership")
    owner = User.objects.create(username="old-owner")
    rooms = {
        "always": Room.objects.create(
            slug="old-always",
            name="Old always",
            owner=owner,
            assistant="always",
            system_prompt="Answer in French.",
        ),
        "mention": Room.objects.create(
            slug="old-mention",
            name="Old mention",
            owner=owner,
            assistant="mention",
            system_prompt="",
        ),
    }
    replies = {}
    for key, room in rooms.items():
        Membership.objects.create(room=room, user=owner, role="owner")
        asked = Message.objects.create(room=room, role="user", author=owner, text="hi")
        reply = Message.objects.create(
            room=room, role="assistant", reply_to=asked, text="salut", status="complete"
        )
        Generation.objects.create(
            message=reply, backend="openai", model="gpt-old", queued_at=timezone.now()
        )
        replies[key] = reply.pk

    apps = _migrate()
    Room = apps.get_model("chat", "Room")
    RoomAssistant = apps.get_model("chat", "RoomAssistant")
    Generation = apps.get_model("chat", "Generation")
    for key, room in rooms.items():
        [placement] = RoomAssistant.objects.filter(room_id=room.pk).select_related("assistant")
        assistant = placement.assistant
        assert (placement.handle, placement.mode) == ("assistant", key)
        assert (assistant.handle, assistant.name, assistant.provider, assistant.model) == (
            "assistant",
            "Assistant",
            "default",
            "",
        )
        assert assistant.room_id == room.pk
        assert assistant.system_prompt == room.system_prompt
        gen = Generation.objects.get(message_id=replies[key])
        assert gen.assistant_id == assistant.pk
        assert (gen.handle, gen.assistant_name, gen.provider, gen.model) == (
            "assistant",
            "Assistant",
            "default",
            "gpt-old",
        )

    # Changed through the assistant since; going back puts it on the room again.
    placement = RoomAssistant.objects.select_related("assistant").get(room_id=rooms["mention"].pk)
    placement.mode = "always"
    placement.save()
    RoomAssistant.objects.filter(room_id=rooms["always"].pk).update(mode="mention")
    placement.assistant.system_prompt = "Be brief."
    placement.assistant.save()

    apps = _migrate(BEFORE)
    Room = apps.get_model("chat", "Room")
    back = {r.slug: (r.assistant, r.system_prompt) for r in Room.objects.all()}
    assert back == {
        "old-always": ("mention", "Answer in French."),
        "old-mention": ("always", "Be brief."),
    }
