"""The assistants' JSON API (docs/protocol.md "Assistants and room settings"): models,
shared assistants and a room's assistants. Thin: parse, check, call a service, serialize.

The room assistants' views are async: checking a model asks its provider (through the
discovery cache), which must not hold the thread that every sync view and ORM call of the
process shares; the writes themselves run in that thread as usual."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods

from chat import selectors
from chat.assistants import services
from chat.assistants.providers import all_models, providers
from chat.errors import BadRequest
from chat.http import api, async_api, read_json


@require_GET
@async_api
async def models(request: HttpRequest, user: User) -> HttpResponseBase:
    """Every provider's models; an unreachable provider is an error beside the others'
    (its reason names the server, never its key)."""
    configs = await database_sync_to_async(providers)()
    found, errors = await all_models(configs)
    return JsonResponse({"models": found, "errors": errors})


@require_GET
@api
def shared(request: HttpRequest) -> HttpResponse:
    """The staff's assistants a room may add (signed-in users)."""
    return JsonResponse(
        {"assistants": [services.shared_to_dict(a) for a in services.shared_assistants()]}
    )


def _listed(slug: str, user: User) -> list[services.AssistantSettingsDict]:
    room = selectors.room_get_for_member(slug=slug, user=user)
    return [services.assistant_settings_to_dict(p) for p in services.assistants_of(room=room)]


async def _model(room: Any, user: User, data: dict[str, Any]) -> tuple[str, str] | None:
    """The body's model, checked against its provider's list (the writer's right to
    write is checked first, so nobody else makes the server ask a provider)."""
    if "model" not in data:
        return None
    await database_sync_to_async(services.manager_check)(room=room, by=user)
    return await services.model_check(data["model"])


@require_http_methods(["GET", "POST"])
@async_api
async def room_assistants(request: HttpRequest, user: User, slug: str) -> HttpResponseBase:
    """GET: the room's assistants with their settings (members). POST: create a room
    assistant, or add a shared one with ``{"shared": "<handle>", "mode"}`` (owners)."""
    if request.method == "GET":
        return JsonResponse({"assistants": await database_sync_to_async(_listed)(slug, user)})
    room = await database_sync_to_async(selectors.room_get)(slug=slug, user=user)
    data = read_json(request)
    if "shared" in data:
        extra = sorted(set(data) - {"shared", "mode"})
        if extra:
            raise BadRequest(f"adding a shared assistant takes shared and mode, not {extra[0]!r}")
        placement = await database_sync_to_async(services.assistant_add_shared)(
            room=room, by=user, handle=data["shared"], mode=data.get("mode")
        )
    else:
        model = await _model(room, user, data)
        placement = await database_sync_to_async(services.assistant_create)(
            room=room, by=user, data=data, model=model
        )
    return JsonResponse(services.assistant_settings_to_dict(placement), status=201)


@require_http_methods(["PATCH", "DELETE"])
@async_api
async def room_assistant(
    request: HttpRequest, user: User, slug: str, handle: str
) -> HttpResponseBase:
    room = await database_sync_to_async(selectors.room_get)(slug=slug, user=user)
    if request.method == "DELETE":
        await database_sync_to_async(services.assistant_remove)(room=room, by=user, handle=handle)
        return HttpResponse(status=204)
    data = read_json(request)
    model = await _model(room, user, data)
    placement = await database_sync_to_async(services.assistant_update)(
        room=room, by=user, handle=handle, data=data, model=model
    )
    return JsonResponse(services.assistant_settings_to_dict(placement))
