"""The admin: rooms, members, messages and replies, for the people who run Parley.

Statuses are read-only here: a reply's status belongs to the task running it, and the
way to end one is the "Stop reply" action, which goes through ``reply_control`` like the
asker's own stop. Reviewers read a room's transcript, or export it as JSON or Markdown,
from the room's page.
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from chat.errors import ParleyError
from chat.models import LIVE_STATUSES, Generation, InputKind, Membership, Message, Role, Room
from chat.replies import reply_control
from chat.transcripts import (
    generation_of,
    reply_facts,
    room_transcript,
    transcript_json,
    transcript_markdown,
)

# URL names of the review views of a room.
TRANSCRIPT = "chat_room_transcript"
EXPORT_JSON = "chat_room_export_json"
EXPORT_MD = "chat_room_export_md"


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "owner", "visibility", "assistant", "voice", "created"]
    list_filter = ["visibility", "assistant", "voice"]
    search_fields = ["name", "slug"]
    readonly_fields = ["seq_reserved", "created", "review"]
    list_select_related = ["owner"]
    inlines = [MembershipInline]

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<int:room_id>/transcript/", view(self.transcript_view), name=TRANSCRIPT),
            path("<int:room_id>/export.json", view(self.export_json_view), name=EXPORT_JSON),
            path("<int:room_id>/export.md", view(self.export_markdown_view), name=EXPORT_MD),
            *super().get_urls(),
        ]

    @admin.display(description="review")
    def review(self, obj: Room) -> str:
        if obj.pk is None:
            return "-"
        return format_html(
            '<a href="{}">Transcript</a> · <a href="{}">Export JSON</a> · '
            '<a href="{}">Export Markdown</a>',
            reverse(f"admin:{TRANSCRIPT}", args=[obj.pk]),
            reverse(f"admin:{EXPORT_JSON}", args=[obj.pk]),
            reverse(f"admin:{EXPORT_MD}", args=[obj.pk]),
        )

    def _reviewed_room(self, request: HttpRequest, room_id: int) -> Room:
        room = Room.objects.filter(pk=room_id).first()
        if room is None:
            raise Http404("no such room")
        # Reading a conversation is viewing the room (and its messages) in the admin.
        if not (
            self.has_view_permission(request, room) and request.user.has_perm("chat.view_message")
        ):
            raise PermissionDenied
        return room

    def transcript_view(self, request: HttpRequest, room_id: int) -> HttpResponse:
        room = self._reviewed_room(request, room_id)
        transcript = room_transcript(room_id=room.pk)
        entries = []
        for message in transcript.messages:
            gen = generation_of(message)
            entries.append(
                {
                    "m": message,
                    "spoken": message.input == InputKind.SPEECH,
                    "facts": reply_facts(gen) if gen is not None else [],
                    "heard_text": gen.heard_text if gen is not None else None,
                    "heard_ms": gen.heard_ms if gen is not None else None,
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": room,
            "title": f"Transcript of {room.name}",
            "transcript": transcript,
            "entries": entries,
            "assistant_role": Role.ASSISTANT,
            "review": self.review(room),
        }
        return TemplateResponse(request, "admin/chat/room/transcript.html", context)

    def export_json_view(self, request: HttpRequest, room_id: int) -> HttpResponse:
        room = self._reviewed_room(request, room_id)
        response = JsonResponse(
            transcript_json(room_transcript(room_id=room.pk)),
            json_dumps_params={"indent": 2, "ensure_ascii": False},
        )
        response["Content-Disposition"] = f'attachment; filename="{room.slug}.json"'
        return response

    def export_markdown_view(self, request: HttpRequest, room_id: int) -> HttpResponse:
        room = self._reviewed_room(request, room_id)
        response = HttpResponse(
            transcript_markdown(room_transcript(room_id=room.pk)),
            content_type="text/markdown; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="{room.slug}.md"'
        return response


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
    list_display = ["id", "room", "role", "author", "status", "input", "short_text", "created"]
    list_filter = ["role", "status", "input", "room"]
    search_fields = ["text", "author__username"]
    raw_id_fields = ["room", "author", "reply_to"]
    # One query for the page's rows with their room and author, however many rows.
    list_select_related = ["room", "author"]
    # The status belongs to the task running the reply; end a reply with "Stop reply".
    # How a message was made (typed or spoken) is a fact about it, not an editable field.
    readonly_fields = ["status", "input"]
    inlines = [GenerationInline]
    actions = ["stop_reply"]

    @admin.action(description="Stop reply", permissions=["change"])
    def stop_reply(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        """Stop the selected replies that are still running, as their asker could."""
        live = list(
            queryset.filter(role=Role.ASSISTANT, status__in=LIVE_STATUSES).values_list(
                "pk", flat=True
            )
        )
        user = request.user
        assert isinstance(user, User)  # admin_view lets only signed-in staff in
        stopped, failed = 0, []
        for pk in live:
            try:
                async_to_sync(reply_control)(user=user, message_id=pk, action="stop")
            except ParleyError as exc:
                failed.append(f"#{pk}: {exc.detail}")
            else:
                stopped += 1
        if stopped:
            self.message_user(request, f"Stopped {stopped} reply(ies).", messages.SUCCESS)
        if failed:
            self.message_user(request, "Not stopped: " + "; ".join(failed), messages.WARNING)
        if not live:
            self.message_user(
                request, "None of the selected messages is a running reply.", messages.WARNING
            )

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return obj.text[:80]


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    """Replies under review: how each was made, how fast, and how it ended.

    Read-only: a generation record is what happened, written by the reply's runner. Its
    page shows the facts (no form, no date pickers, no Save); none is added by hand. It
    is deleted with its message.
    """

    list_display = [
        "message",
        "backend",
        "model",
        "status",
        "queued_at",
        "time_to_first_token",
        "duration",
        "completion_tokens",
        "paused_seconds",
        "stop_reason",
        "stopped_by",
        "voice",
        "real_time_factor",
        "heard",
    ]
    list_filter = ["backend", "message__status", "stop_reason", "voice"]
    search_fields = ["message__text", "error", "model"]
    raw_id_fields = ["message", "stopped_by"]
    date_hierarchy = "queued_at"
    readonly_fields = ["time_to_first_token", "duration", "heard"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Generation]:
        return super().get_queryset(request).select_related("message", "stopped_by")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Generation | None = None) -> bool:
        return False

    @admin.display(description="status", ordering="message__status")
    def status(self, obj: Generation) -> str:
        return obj.message.status

    @admin.display(description="first token")
    def time_to_first_token(self, obj: Generation) -> str:
        return "-" if obj.ttft_ms is None else f"{obj.ttft_ms:.0f} ms"

    @admin.display(description="duration")
    def duration(self, obj: Generation) -> str:
        """Streaming time, pauses left out."""
        return "-" if obj.duration_ms is None else f"{obj.duration_ms / 1000:.1f} s"

    @admin.display(description="heard (cut off)")
    def heard(self, obj: Generation) -> str:
        """What the member who cut a spoken reply off had heard; the text is what was shown."""
        if obj.heard_text is None:
            return "-"
        return f"{obj.heard_text[:60]!r} at {obj.heard_ms} ms"

    @admin.display(description="speech RTF")
    def real_time_factor(self, obj: Generation) -> str:
        if not obj.audio_seconds or obj.synthesis_seconds is None:
            return "-"
        return f"{obj.synthesis_seconds / obj.audio_seconds:.2f}"
