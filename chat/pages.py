"""HTML pages: the room list and the room itself.

The pages' scripts and styles live in ``chat/static/chat/`` as plain ES modules and CSS.
Daphne serves no static files, so each page carries them inline: the CSS in a ``<style>``
element and the modules through an import map of ``data:`` URLs, imported by bare names
(``parley/room.js``). Nothing is fetched from elsewhere and there is no build step.
"""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.safestring import SafeString, mark_safe

from chat import events, selectors
from chat.errors import NotFound
from chat.http import request_user
from chat.serializers import room_to_dict

ASSETS = Path(__file__).resolve().parent / "static" / "chat"


def _read_assets() -> tuple[str, str]:
    """The CSS and the import map (JSON) of every module under ``js/``."""
    css = (ASSETS / "parley.css").read_text(encoding="utf-8")
    imports = {}
    for module in sorted((ASSETS / "js").glob("*.js")):
        encoded = base64.b64encode(module.read_bytes()).decode("ascii")
        imports[f"parley/{module.name}"] = f"data:text/javascript;base64,{encoded}"
    # "</" cannot appear in base64 or in these names, so the JSON is safe inside <script>.
    return css, json.dumps({"imports": imports})


_cached_assets = cache(_read_assets)


def _assets() -> dict[str, SafeString]:
    # Re-read on every page while developing, so an edited module shows on reload.
    css, importmap = _read_assets() if settings.DEBUG else _cached_assets()
    # Both are our own files, not user input: CSS text and JSON of base64 data URLs.
    return {"css": mark_safe(css), "importmap": mark_safe(importmap)}  # noqa: S308


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    mine = list(selectors.rooms_of(user=user))
    my_ids = {room.pk for room in mine}
    others = [r for r in selectors.rooms_visible_to(user=user) if r.pk not in my_ids]
    return render(
        request,
        "chat/home.html",
        {"my_rooms": mine, "public_rooms": others, "assets": _assets()},
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
        return render(request, "chat/room_join.html", {"room": found, "assets": _assets()})
    config: dict[str, Any] = {
        "room": room_to_dict(found, head=events.room_head_sync(found)),
        "me": user.get_username(),
        "is_staff": user.is_staff,
        "max_chars": settings.PARLEY_MAX_MESSAGE_CHARS,
    }
    return render(
        request,
        "chat/room.html",
        {"room": found, "config": config, "is_staff": user.is_staff, "assets": _assets()},
    )
