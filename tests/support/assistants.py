"""A room's assistant made with the ORM, for tests whose subject is not how one is made
(the settings API and page have their own tests): an ``Assistant`` of the room and its
``RoomAssistant`` placement, as the settings API makes them."""

from __future__ import annotations

from typing import Any

from chat.models import Assistant, Provider, RoomAssistant


def add_assistant(
    room: Any,
    handle: str,
    name: str,
    *,
    avatar: str = "",
    provider: str = "default",
    model: str = "",
    mode: str = "mention",
    system_prompt: str = "",
) -> RoomAssistant:
    assistant = Assistant.objects.create(
        room=room,
        handle=handle,
        name=name,
        avatar=avatar,
        provider=provider,
        model=model,
        system_prompt=system_prompt,
    )
    return RoomAssistant.objects.create(room=room, assistant=assistant, handle=handle, mode=mode)


def add_provider(name: str, base_url: str, api_key: str = "") -> Provider:
    """A provider as the admin adds one (a model server on loopback, in tests)."""
    return Provider.objects.create(name=name, base_url=base_url, api_key=api_key)
