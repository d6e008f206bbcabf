"""The assistants' JSON API (docs/protocol.md "Assistants"): models, shared assistants
and a room's assistants. Thin: parse, check, call a service, serialize."""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods

from chat import selectors
from chat.assistants import services
from chat.assistants.providers import all_models, providers
from chat.errors import BadRequest
from chat.http import api, async_api, read_json, request_user


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


@require_http_methods(["GET", "POST"])
@api
def room_assistants(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: the room's assistants with their settings (members). POST: create a room
    assistant, or add a shared one with ``{"shared": "<handle>", "mode"}`` (owners)."""
    user = request_user(request)
    if request.method == "GET":
        room = selectors.room_get_for_member(slug=slug, user=user)
        found = services.assistants_of(room=room)
        return JsonResponse({"assistants": [services.assistant_settings_to_dict(p) for p in found]})
    room = selectors.room_get(slug=slug, user=user)
    data = read_json(request)
    if "shared" in data:
        extra = sorted(set(data) - {"shared", "mode"})
        if extra:
            raise BadRequest(f"adding a shared assistant takes shared and mode, not {extra[0]!r}")
        placement = services.assistant_add_shared(
            room=room, by=user, handle=data["shared"], mode=data.get("mode")
        )
    else:
        placement = services.assistant_create(room=room, by=user, data=data)
    return JsonResponse(services.assistant_settings_to_dict(placement), status=201)


@require_http_methods(["PATCH", "DELETE"])
@api
def room_assistant(request: HttpRequest, slug: str, handle: str) -> HttpResponse:
    user = request_user(request)
    room = selectors.room_get(slug=slug, user=user)
    if request.method == "DELETE":
        services.assistant_remove(room=room, by=user, handle=handle)
        return HttpResponse(status=204)
    placement = services.assistant_update(
        room=room, by=user, handle=handle, data=read_json(request)
    )
    return JsonResponse(services.assistant_settings_to_dict(placement))
