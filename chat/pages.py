"""HTML pages: the room list and the room itself.

The pages' scripts and styles are static files (``chat/static/chat/``: plain ES modules
that import each other by relative path, and CSS). ``collectstatic`` gives each a name
with its content's hash, rewriting the modules' imports to match, so browsers cache them
for good and a new release is a new URL; the pages carry no inline script or style, which
lets the Content-Security-Policy refuse all inline code (config/security.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.http import require_safe

from chat import events, selectors, services, unread
from chat.errors import BadRequest, Forbidden, NotFound
from chat.http import request_user
from chat.llm.local import BUNDLED_MODEL
from chat.serializers import room_to_dict

# The room page lists this many members (the owner first); a crowd's page says how many
# more there are instead of growing with them.
MEMBERS_SHOWN = 100
# The room's voice mode in words, as the room list's form and the composer name them.
VOICE_LABELS = {
    "off": "Off",
    "normal": "After the reply",
    "streaming": "Sentence by sentence",
    "realtime": "Real time",
}
# How long a browser may keep /favicon.ico's answer: a day, as the icon's hashed name
# changes only with a release that changes it.
FAVICON_MAX_AGE = 24 * 3600


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for on their own (the admin's pages, feed readers):
    the site's icon under its hashed static name. Pages link it themselves (base.html)."""
    response = HttpResponseRedirect(static("chat/favicon.svg"))
    response["Cache-Control"] = f"public, max-age={FAVICON_MAX_AGE}"
    return response


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    mine = list(selectors.rooms_of(user=user))
    my_ids = {room.pk for room in mine}
    news = unread.unread_of(user=user, room_ids=list(my_ids))
    for mine_room in mine:
        # Read by the template: the badge and the mention mark (home.js keeps them fresh).
        mine_room.news = news.get(mine_room.pk, unread.NOTHING)  # type: ignore[attr-defined]
    others = [r for r in selectors.rooms_visible_to(user=user) if r.pk not in my_ids]
    return render(
        request,
        "chat/home.html",
        {"my_rooms": mine, "public_rooms": others},
    )


@login_required
def room(request: HttpRequest, slug: str) -> HttpResponse:
    """A room's conversation for members; a Join button for others (public rooms only)."""
    user = request_user(request)
    try:
        found = selectors.room_get(slug=slug, user=user)  # private non-members: not found
    except NotFound:
        raise Http404("no such room") from None
    if not selectors.is_member(room=found, user=user):
        return render(request, "chat/room_join.html", {"room": found})
    config: dict[str, Any] = {
        "room": room_to_dict(found, head=events.room_head_sync(found)),
        "me": user.get_username(),
        "is_staff": user.is_staff,
        # May delete any message (an owner or staff; chat/lifecycle.py has the rule).
        "can_manage": selectors.can_manage(room=found, user=user),
        "max_chars": settings.PARLEY_MAX_MESSAGE_CHARS,
    }
    # Where this member had read to, and their first unread message: the "new" divider.
    config["last_read_seq"], config["first_unread"] = unread.first_unread(user=user, room=found)
    members, member_count = selectors.room_members(room=found, limit=MEMBERS_SHOWN)
    return render(
        request,
        "chat/room.html",
        {
            "room": found,
            "config": config,
            "is_staff": user.is_staff,
            "members": members,
            "members_more": member_count - len(members),
            # The owner and staff may remove members (services.room_member_remove).
            "can_remove": selectors.can_manage(room=found, user=user),
            # The creator cannot leave (services.room_leave); co-owners can.
            "is_owner": found.owner_id == user.pk,
            "voice_label": VOICE_LABELS.get(found.voice, found.voice),
            # The bundled model answers here: say plainly that it is a demo.
            "demo_model": settings.LLM_BACKEND == "local" and settings.LLM_MODEL == BUNDLED_MODEL,
        },
    )


@login_required
def room_settings(request: HttpRequest, slug: str) -> HttpResponse:
    """The room's settings: owners and staff edit them, members read them (the page's
    script, chat/static/chat/js/settings.js, works through the JSON API and re-reads
    when a ``room`` event says the room changed)."""
    user = request_user(request)
    try:
        found = selectors.room_get_for_member(slug=slug, user=user)
    except NotFound:
        raise Http404("no such room") from None
    except Forbidden:
        return HttpResponseRedirect(f"/rooms/{found_slug(slug)}/")
    can_edit = selectors.can_manage(room=found, user=user)
    config: dict[str, Any] = {
        "room": room_to_dict(found, head=events.room_head_sync(found)),
        "me": user.get_username(),
        "can_edit": can_edit,
    }
    return render(
        request,
        "chat/room_settings.html",
        {"room": found, "config": config, "can_edit": can_edit},
    )


def found_slug(slug: str) -> str:
    from urllib.parse import quote

    return quote(slug, safe="")


@login_required
def invite(request: HttpRequest, token: str) -> HttpResponse:
    """A signed-in user opens an invite link: they join and land in the room. An expired
    or revoked link is a page that says so (410); an unknown one is a 404."""
    user = request_user(request)
    try:
        room = services.invite_accept(token=token, user=user)
    except services.InviteGone as exc:
        return render(request, "chat/invite_gone.html", {"reason": exc.detail}, status=410)
    except NotFound:
        raise Http404("no such invite link") from None
    except BadRequest as exc:
        return render(request, "chat/invite_gone.html", {"reason": exc.detail}, status=400)
    return HttpResponseRedirect(f"/rooms/{found_slug(room.slug)}/")
