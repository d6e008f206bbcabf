"""JSON API (PROTOCOL.md section 5, HTTP). Thin: parse, check, call a service, serialize."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import events, selectors, services
from chat.http import api, query_int, read_json, request_user
from chat.serializers import message_to_dict, room_to_dict


@require_http_methods(["GET", "POST"])
@api
def rooms(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    if request.method == "POST":
        data = read_json(request)
        room = services.room_create(
            owner=user,
            name=data.get("name"),
            visibility=data.get("visibility"),
            assistant=data.get("assistant"),
            voice=data.get("voice"),
            system_prompt=data.get("system_prompt"),
        )
        return JsonResponse(room_to_dict(room, head=events.room_head_sync(room)), status=201)
    found = list(selectors.rooms_visible_to(user=user))
    return JsonResponse({"rooms": [room_to_dict(r, head=events.room_head_sync(r)) for r in found]})


@require_GET
@api
def room_detail(request: HttpRequest, slug: str) -> HttpResponse:
    room = selectors.room_get(slug=slug, user=request_user(request))
    return JsonResponse(room_to_dict(room, head=events.room_head_sync(room)))


@require_POST
@api
def room_join(request: HttpRequest, slug: str) -> HttpResponse:
    user = request_user(request)
    room = selectors.room_get(slug=slug, user=user)
    services.room_join(room=room, user=user)
    return JsonResponse(room_to_dict(room, head=events.room_head_sync(room)))


@require_POST
@api
def room_members(request: HttpRequest, slug: str) -> HttpResponse:
    user = request_user(request)
    room = selectors.room_get(slug=slug, user=user)
    data = read_json(request)
    services.room_member_add(room=room, by=user, username=data.get("username"))
    return JsonResponse(room_to_dict(room, head=events.room_head_sync(room)))


@require_GET
@api
def room_messages(request: HttpRequest, slug: str) -> HttpResponse:
    room = selectors.room_get_for_member(slug=slug, user=request_user(request))
    head = events.room_head_sync(room)
    limit = query_int(request, "limit", minimum=1) or settings.PARLEY_MESSAGES_PAGE
    page = selectors.messages_page(
        room=room,
        before=query_int(request, "before", minimum=1),
        after=query_int(request, "after", minimum=0),
        limit=min(limit, settings.PARLEY_MESSAGES_PAGE_MAX),
    )
    return JsonResponse(
        {"messages": [message_to_dict(m, room_slug=room.slug) for m in page], "head": head}
    )


@require_GET
@api
def message_detail(request: HttpRequest, message_id: str) -> HttpResponse:
    message = selectors.message_get(message_id=message_id, user=request_user(request))
    return JsonResponse(message_to_dict(message))
