"""Each existing room becomes a room with one assistant, as it behaved before assistants.

The assistant has handle ``assistant``, name "Assistant", the default provider and model,
and the room's system prompt; the room hears it as ``Room.assistant`` said (always, or
when mentioned). Each earlier reply is recorded as that assistant's, on the default
provider. Reversible: going back copies the mode and prompt onto the room again.
"""

from django.db import migrations

HANDLE = "assistant"


def forwards(apps, schema_editor):
    Room = apps.get_model("chat", "Room")
    Assistant = apps.get_model("chat", "Assistant")
    RoomAssistant = apps.get_model("chat", "RoomAssistant")
    Generation = apps.get_model("chat", "Generation")
    for room in Room.objects.order_by("pk").iterator(chunk_size=500):
        if RoomAssistant.objects.filter(room=room, handle=HANDLE).exists():
            continue  # made by a release that already creates it
        assistant = Assistant.objects.create(
            room=room,
            handle=HANDLE,
            name="Assistant",
            provider="default",
            model="",
            system_prompt=room.system_prompt,
        )
        RoomAssistant.objects.create(
            room=room, assistant=assistant, handle=HANDLE, mode=room.assistant
        )
        Generation.objects.filter(message__room=room, assistant__isnull=True).update(
            assistant=assistant
        )
    Generation.objects.filter(handle="").update(
        handle=HANDLE, assistant_name="Assistant", provider="default"
    )


def backwards(apps, schema_editor):
    Room = apps.get_model("chat", "Room")
    RoomAssistant = apps.get_model("chat", "RoomAssistant")
    for placement in RoomAssistant.objects.filter(handle=HANDLE).select_related("assistant"):
        Room.objects.filter(pk=placement.room_id).update(
            assistant=placement.mode, system_prompt=placement.assistant.system_prompt
        )


class Migration(migrations.Migration):
    dependencies = [("chat", "0006_assistants")]

    operations = [migrations.RunPython(forwards, backwards)]
