"""JSON API (docs/protocol.md "HTTP"). Thin: parse, check, call a service, serialize."""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import events, lifecycle, replies, search, selectors, services, unread
from chat.errors import BadRequest
from chat.extensions import EXTENSIONS
from chat.http import api, async_api, query_int, read_json, request_user
from chat.models import Invite, Role, Room
from chat.serializers import MessageDict, message_to_dict, room_to_dict


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
            prompt_heard_text=data.get("prompt_heard_text"),
        )
        return JsonResponse(room_to_dict(room, head=events.room_head_sync(room)), status=201)
    found = list(selectors.rooms_visible_to(user=user))
    news = unread.unread_of(user=user, room_ids=[r.pk for r in found])

    def listed(room: Room) -> dict[str, object]:
        # Extension: the caller's unread count and whether they were mentioned (0 and
        # false in a room they are not a member of).
        new = news.get(room.pk, unread.NOTHING)
        body: dict[str, object] = {**room_to_dict(room, head=events.room_head_sync(room))}
        body.update(unread=new.count, mentioned=new.mentioned)
        return body

    return JsonResponse({"rooms": [listed(r) for r in found]})


@require_http_methods(["GET", "PATCH"])
@api
def room_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """GET the room; PATCH its settings (Extension: owners and staff)."""
    user = request_user(request)
    room = selectors.room_get(slug=slug, user=user)
    if request.method == "PATCH":
        services.room_update(room=room, by=user, data=read_json(request))
        room = selectors.room_get(slug=slug, user=user)  # its assistants as they are now
    return JsonResponse(room_to_dict(room, head=events.room_head_sync(room)))


@require_POST
@api
def room_join(request: HttpRequest, slug: str) -> HttpResponse:
    user = request_user(request)
    room = selectors.room_get(slug=slug, user=user)
    services.room_join(room=room, user=user)
    return JsonResponse(room_to_dict(room, head=events.room_head_sync(room)))


# GET /api/rooms/<slug>/members lists at most this many (the creator and owners first).
MEMBERS_LISTED = 500


@require_http_methods(["GET", "POST"])
@api
def room_members(request: HttpRequest, slug: str) -> HttpResponse:
    """POST adds a member (owners); GET lists members with their roles (Extension)."""
    user = request_user(request)
    if request.method == "GET":
        room = selectors.room_get_for_member(slug=slug, user=user)
        found, count = selectors.room_member_roles(room=room, limit=MEMBERS_LISTED)
        members = [{"username": name, "role": role} for name, role in found]
        return JsonResponse({"members": members, "count": count})
    room = selectors.room_get(slug=slug, user=user)
    data = read_json(request)
    services.room_member_add(room=room, by=user, username=data.get("username"))
    return JsonResponse(room_to_dict(room, head=events.room_head_sync(room)))


@require_POST
@api
def room_leave(request: HttpRequest, slug: str) -> HttpResponse:
    """Extension: the caller leaves the room (docs/protocol.md "Leaving a room")."""
    user = request_user(request)
    room = selectors.room_get(slug=slug, user=user)
    services.room_leave(room=room, user=user)
    return HttpResponse(status=204)


@require_http_methods(["DELETE", "PATCH"])
@api
def room_member(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    """Extension: an owner removes a member (docs/protocol.md "Leaving a room"), or
    PATCHes their ``role`` (owner / member)."""
    user = request_user(request)
    room = selectors.room_get(slug=slug, user=user)
    if request.method == "PATCH":
        data = read_json(request)
        membership = services.room_member_role(
            room=room, by=user, username=username, role=data.get("role")
        )
        return JsonResponse({"username": username, "role": membership.role})
    services.room_member_remove(room=room, by=user, username=username)
    return HttpResponse(status=204)


def invite_to_dict(invite: Invite, request: HttpRequest) -> dict[str, str]:
    path = reverse("invite", kwargs={"token": invite.token})
    return {
        "token": invite.token,
        "url": request.build_absolute_uri(path),
        "expires": invite.expires.isoformat().replace("+00:00", "Z"),
    }


@require_http_methods(["GET", "POST"])
@api
def room_invites(request: HttpRequest, slug: str) -> HttpResponse:
    """Extension: an owner makes an invite link (POST) or lists the live ones (GET)."""
    user = request_user(request)
    room = selectors.room_get(slug=slug, user=user)
    if request.method == "POST":
        invite = services.invite_create(room=room, by=user)
        return JsonResponse(invite_to_dict(invite, request), status=201)
    found = services.invites_live(room=room, by=user)
    return JsonResponse({"invites": [invite_to_dict(i, request) for i in found]})


@require_http_methods(["DELETE"])
@api
def room_invite(request: HttpRequest, slug: str, token: str) -> HttpResponse:
    """Extension: an owner revokes an invite link."""
    user = request_user(request)
    room = selectors.room_get(slug=slug, user=user)
    services.invite_revoke(room=room, by=user, token=token)
    return HttpResponse(status=204)


@require_http_methods(["GET", "POST"])
async def room_messages_route(request: HttpRequest, slug: str) -> HttpResponseBase:
    """GET lists the room's messages, POST sends one."""
    if request.method == "POST":
        return await room_send(request, slug)
    return await room_messages(request, slug)


@async_api
async def room_messages(request: HttpRequest, user: User, slug: str) -> HttpResponseBase:
    room = await database_sync_to_async(selectors.room_get_for_member)(slug=slug, user=user)
    limit = query_int(request, "limit", minimum=1) or settings.PARLEY_MESSAGES_PAGE
    limit = min(limit, settings.PARLEY_MESSAGES_PAGE_MAX)
    before = query_int(request, "before", minimum=1)
    after = query_int(request, "after", minimum=0)
    around = request.GET.get("around")
    if around is not None:
        if before is not None or after is not None:
            raise BadRequest("around goes alone: not with before or after")
        return await room_messages_around(room, around, limit)
    if before is None and after is None:
        # The newest page is exact at its head, as a snapshot is: a reply being written
        # has the text members had at that seq (not its last periodic save), so reading
        # on with `after=head` neither misses nor repeats any of it.
        try:
            latest = await events.room_latest(room_id=room.pk, limit=limit)
        except events.StoreUnavailable:
            pass  # history still reads; a live reply's text is then its last save
        else:
            return JsonResponse({"messages": latest["messages"], "head": latest["seq"]})

    def older_or_newer() -> dict[str, object]:
        head = events.room_head_sync(room)
        page = selectors.messages_page(room=room, before=before, after=after, limit=limit)
        return {"messages": [message_to_dict(m, room_slug=room.slug) for m in page], "head": head}

    return JsonResponse(await database_sync_to_async(older_or_newer)())


@require_http_methods(["GET", "PATCH", "DELETE"])
async def message_detail(request: HttpRequest, message_id: str) -> HttpResponseBase:
    """GET a message; Extension (issue 19): PATCH edits it, DELETE tombstones it."""
    if request.method == "PATCH":
        return await message_edit(request, message_id)
    if request.method == "DELETE":
        return await message_delete(request, message_id)
    return await message_get(request, message_id)


@async_api
async def message_get(request: HttpRequest, user: User, message_id: str) -> HttpResponseBase:
    body = await database_sync_to_async(_message_read)(user=user, message_id=message_id)
    return JsonResponse(body)


def _message_read(*, user: User, message_id: str) -> dict[str, object]:
    message = selectors.message_get(message_id=message_id, user=user)
    body: dict[str, object] = dict(message_to_dict(message))
    if message.role == Role.ASSISTANT:
        # Extension: a reply's versions, each with its text and status, and which is
        # current (docs/protocol.md "Versions of a reply"). A deleted version is listed
        # without its text, as a deleted message is.
        found = selectors.reply_versions(message=message)
        body["versions"] = [
            {"id": str(v.pk), "version": v.version, "status": v.status, "deleted": True}
            if v.deleted_at is not None
            else {"id": str(v.pk), "version": v.version, "text": v.text, "status": v.status}
            for v in found
        ]
        head = found[0]
        body["current"] = str(head.current_version_id or head.pk)
        body.setdefault("version", message.version)
    return body


async def room_messages_around(room: Room, around: str, limit: int) -> HttpResponseBase:
    """Extension: ``?around=<id>``, a page of history centred on a message (a search
    result the page jumps to), with whether it can page on either way."""

    def centred() -> dict[str, object]:
        head = events.room_head_sync(room)
        page = search.messages_around(room=room, message_id=around, limit=limit)
        return {
            "messages": [message_to_dict(m, room_slug=room.slug) for m in page.messages],
            "head": head,
            "has_older": page.has_older,
            "has_newer": page.has_newer,
        }

    return JsonResponse(await database_sync_to_async(centred)())


@require_GET
@api
def room_search(request: HttpRequest, slug: str) -> HttpResponse:
    """Extension: a member's search of the room's messages, newest first, paged by
    ``before`` (docs/protocol.md "Search")."""
    user = request_user(request)
    room = selectors.room_get_for_member(slug=slug, user=user)
    q = search.search_query(request.GET.get("q", ""))
    before = query_int(request, "before", minimum=1)
    page = search.message_search(room=room, q=q, before=before, limit=settings.PARLEY_SEARCH_PAGE)
    return JsonResponse({"results": page.hits, "more": page.more})


@require_POST
@api
def room_read(request: HttpRequest, slug: str) -> HttpResponse:
    """Extension: the caller has read the room up to ``seq`` (docs/protocol.md
    "Unread and mentions"); answers where their read mark is now and what is still new."""
    user = request_user(request)
    room = selectors.room_get_for_member(slug=slug, user=user)
    seq = unread.parse_seq(read_json(request).get("seq"))
    stored = unread.membership_read(user=user, room=room, seq=seq)
    new = unread.unread_of(user=user, room_ids=[room.pk]).get(room.pk, unread.NOTHING)
    return JsonResponse({"seq": stored, "unread": new.count, "mentioned": new.mentioned})


# --- Sending and controlling over plain HTTP (the same services as the WebSocket) --------


@require_POST
@async_api
async def room_send(request: HttpRequest, user: User, slug: str) -> HttpResponseBase:
    room = await database_sync_to_async(selectors.room_get_for_member)(slug=slug, user=user)
    data = read_json(request)
    wait = data.get("wait", False)
    if not isinstance(wait, bool):
        raise BadRequest("wait must be true or false")
    message, sent = await replies.message_send(
        user=user,
        room=room,
        text=data.get("text"),
        client_id=data.get("client_id"),
        ask_ai=data.get("ask_ai"),
        voice=data.get("voice"),
    )
    # `reply` is the first reply (the contract's); `replies` every reply the send queued,
    # in the order they answer (an extension: a message may ask several assistants).
    if not wait or not sent:
        body: dict[str, object] = {"message": message, "reply": sent[0] if sent else None}
        body["replies"] = sent
        return JsonResponse(body, status=202 if sent else 201)
    ids = [int(r["id"]) for r in sent]
    ended = await replies.replies_wait(message_ids=ids, timeout=settings.PARLEY_WAIT_TIMEOUT)

    def final() -> list[MessageDict]:
        return [message_to_dict(selectors.message_get(message_id=i, user=user)) for i in ids]

    finals = await database_sync_to_async(final)()
    body = {"message": message, "reply": finals[0], "replies": finals}
    if not ended:
        body.update(
            code="timeout",
            detail="the replies are still being generated; follow them over SSE or GET them later",
        )
        return JsonResponse(body, status=504)
    return JsonResponse(body)


@require_POST
@async_api
async def message_control(
    request: HttpRequest, user: User, message_id: str, action: str
) -> HttpResponseBase:
    heard_ms = read_json(request).get("heard_ms") if action == "stop" else None
    if heard_ms is not None and (
        not isinstance(heard_ms, int) or isinstance(heard_ms, bool) or not 0 <= heard_ms < 1 << 32
    ):
        raise BadRequest("heard_ms must be a non-negative integer")
    if heard_ms is None or EXTENSIONS.stop_heard is None:
        message = await replies.reply_control(user=user, message_id=message_id, action=action)
        return JsonResponse({"message": message})
    # A listener's stop that says how far it had played the reply's audio: what it heard
    # is kept, and audio still playing elsewhere is cancelled (as over the WebSocket).
    await EXTENSIONS.stop_heard(user=user, message_id=message_id, heard_ms=heard_ms, room_id=None)
    stopped = await database_sync_to_async(selectors.message_get)(message_id=message_id, user=user)
    return JsonResponse({"message": message_to_dict(stopped)})


# --- Versions of a reply (docs/protocol.md "Versions of a reply"; extension) ---------------


@require_POST
@async_api
async def message_regenerate(request: HttpRequest, user: User, message_id: str) -> HttpResponseBase:
    """Another answer: a new version of the reply (202, the version as queued)."""
    read_json(request)  # a body, if any, must be JSON (nothing in it is read)
    version = await replies.reply_regenerate(user=user, message_id=message_id)
    return JsonResponse({"message": version}, status=202)


@require_POST
@async_api
async def message_pick(request: HttpRequest, user: User, message_id: str) -> HttpResponseBase:
    """Make this version its reply's current one (200, the reply as it is now)."""
    read_json(request)
    reply = await replies.version_pick(user=user, message_id=message_id)
    return JsonResponse({"message": reply})


# --- Edit, delete, rate (issue 19; the services of chat/lifecycle.py) ----------------------


@async_api
async def message_edit(request: HttpRequest, user: User, message_id: str) -> HttpResponseBase:
    data = read_json(request)
    message = await lifecycle.message_edit(
        user=user, message_id=message_id, text=data.get("text"), rerun=data.get("rerun", False)
    )
    return JsonResponse({"message": message})


@async_api
async def message_delete(request: HttpRequest, user: User, message_id: str) -> HttpResponseBase:
    message = await lifecycle.message_delete(user=user, message_id=message_id)
    return JsonResponse({"message": message})


@require_http_methods(["PUT"])
@async_api
async def message_rating(request: HttpRequest, user: User, message_id: str) -> HttpResponseBase:
    data = read_json(request)
    message = await lifecycle.message_rate(
        user=user, message_id=message_id, value=data.get("value"), comment=data.get("comment")
    )
    return JsonResponse({"message": message})
