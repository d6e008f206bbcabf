"""HTML pages. A plain room list for now; the real chat UI is a later step."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from chat import selectors
from chat.http import request_user


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    return render(
        request,
        "chat/home.html",
        {
            "my_rooms": selectors.rooms_of(user=user),
            "public_rooms": selectors.rooms_visible_to(user=user),
        },
    )
