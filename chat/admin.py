from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from chat.models import Generation, Membership, Message, Room


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "owner", "visibility", "assistant", "voice", "created"]
    list_filter = ["visibility", "assistant", "voice"]
    search_fields = ["name", "slug"]
    readonly_fields = ["seq_reserved", "created"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["room", "user", "role", "joined"]
    list_filter = ["role"]
    raw_id_fields = ["room", "user"]


class GenerationInline(admin.StackedInline):
    model = Generation
    extra = 0
    can_delete = False
    readonly_fields = [f.name for f in Generation._meta.fields if f.name != "id"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "role", "author", "status", "short_text", "created"]
    list_filter = ["role", "status", "room"]
    search_fields = ["text", "author__username"]
    raw_id_fields = ["room", "author", "reply_to"]
    inlines = [GenerationInline]

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return obj.text[:80]


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    """Replies under review: how each was made, how fast, and how it ended."""

    list_display = [
        "message",
        "backend",
        "model",
        "status",
        "queued_at",
        "time_to_first_token",
        "completion_tokens",
        "paused_seconds",
        "stop_reason",
        "stopped_by",
        "voice",
        "real_time_factor",
    ]
    list_filter = ["backend", "message__status", "stop_reason", "voice"]
    search_fields = ["message__text", "error", "model"]
    raw_id_fields = ["message", "stopped_by"]
    date_hierarchy = "queued_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Generation]:
        return super().get_queryset(request).select_related("message", "stopped_by")

    @admin.display(description="status", ordering="message__status")
    def status(self, obj: Generation) -> str:
        return obj.message.status

    @admin.display(description="first token")
    def time_to_first_token(self, obj: Generation) -> str:
        if obj.started_at is None or obj.first_token_at is None:
            return "-"
        return f"{(obj.first_token_at - obj.started_at).total_seconds() * 1000:.0f} ms"

    @admin.display(description="speech RTF")
    def real_time_factor(self, obj: Generation) -> str:
        if not obj.audio_seconds or obj.synthesis_seconds is None:
            return "-"
        return f"{obj.synthesis_seconds / obj.audio_seconds:.2f}"
