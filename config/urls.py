from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views
from chat import health, pages, sse, views
from chat.assistants import views as assistant_views
from chat.openai_api import views as openai_views
from config import metrics
from voice import views as voice_views

urlpatterns = [
    path("", pages.home, name="home"),
    path("rooms/<str:slug>/", pages.room, name="room"),
    path("rooms/<str:slug>/settings", pages.room_settings, name="room_settings"),
    path("invite/<str:token>", pages.invite, name="invite"),
    path("favicon.ico", pages.favicon),
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics.scrape),
    path("admin/", admin.site.urls),
    path("accounts/signup/", account_views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/rooms", views.rooms),
    path("api/models", assistant_views.models),
    path("api/assistants/shared", assistant_views.shared),
    path("api/rooms/<str:slug>", views.room_detail),
    path("api/rooms/<str:slug>/join", views.room_join),
    path("api/rooms/<str:slug>/members", views.room_members),
    path("api/rooms/<str:slug>/members/<str:username>", views.room_member),
    path("api/rooms/<str:slug>/leave", views.room_leave),
    path("api/rooms/<str:slug>/assistants", assistant_views.room_assistants),
    path("api/rooms/<str:slug>/assistants/<str:handle>", assistant_views.room_assistant),
    path("api/rooms/<str:slug>/invites", views.room_invites),
    path("api/rooms/<str:slug>/invites/<str:token>", views.room_invite),
    path("api/rooms/<str:slug>/messages", views.room_messages_route),
    path("api/rooms/<str:slug>/search", views.room_search),
    path("api/rooms/<str:slug>/read", views.room_read),
    path("api/rooms/<str:slug>/events", sse.room_events),
    path("api/rooms/<str:slug>/speech", voice_views.room_speech),
    path("api/messages/<str:message_id>", views.message_detail),
    path("api/messages/<str:message_id>/audio", voice_views.message_audio),
    path("api/messages/<str:message_id>/regenerate", views.message_regenerate),
    path("api/messages/<str:message_id>/pick", views.message_pick),
    path("api/messages/<str:message_id>/rating", views.message_rating),
    *[
        path(f"api/messages/<str:message_id>/{action}", views.message_control, {"action": action})
        for action in ("pause", "resume", "stop")
    ],
    # The OpenAI-compatible API (chat/openai_api/).
    path("v1/models", openai_views.models),
    path("v1/models/<path:model_id>", openai_views.model_detail),
    path("v1/chat/completions", openai_views.chat_completions),
    path("v1/responses", openai_views.responses),
    path("v1/responses/<str:response_id>", openai_views.response_detail),
    *[
        path(
            f"v1/responses/<str:response_id>/{action}",
            openai_views.response_control,
            {"action": action},
        )
        for action in ("cancel", "pause", "resume")
    ],
]

handler404 = "chat.http.not_found"
