"""The admin: rooms, members, messages and replies, for the people who run Parley.

Providers (model servers) are added here with their key, which is write-only: the form
never shows it, the list says only whether one is set. Staff's shared assistants live
here too (a room's own are set up on its settings page), and a room's assistants show
on its page. The reply list shows figures per assistant and per model for its filter.

Statuses are read-only here: a reply's status belongs to the task running it, and the
way to end one is the "Stop reply" action, which goes through ``reply_control`` like the
asker's own stop. Reviewers read a room's transcript, or export it as JSON or Markdown,
from the room's page.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from chat.assistants.providers import forget_models
from chat.assistants.providers import provider as provider_named
from chat.assistants.services import HANDLE, HANDLE_RULE
from chat.errors import ParleyError
from chat.figures import reply_figures
from chat.models import (
    LIVE_STATUSES,
    Assistant,
    Generation,
    InputKind,
    Membership,
    Message,
    Provider,
    Rating,
    Role,
    Room,
    RoomAssistant,
)
from chat.replies import reply_control
from chat.services import DEFAULT_HANDLE
from chat.transcripts import (
    generation_of,
    reply_author,
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


class RoomAssistantInline(admin.TabularInline):
    """The room's assistants: which, under what handle, answering what. (A room's own
    assistants are set up on its settings page; a shared one can be placed here.)"""

    model = RoomAssistant
    extra = 0
    raw_id_fields = ["assistant"]
    fields = ["handle", "assistant", "mode", "added"]
    readonly_fields = ["added"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "owner", "visibility", "assistant", "voice", "created"]
    list_filter = ["visibility", "assistant", "voice"]
    search_fields = ["name", "slug"]
    readonly_fields = ["seq_reserved", "created", "review"]
    list_select_related = ["owner"]
    inlines = [RoomAssistantInline, MembershipInline]

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
                    "author": reply_author(gen),
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


class ProviderForm(forms.ModelForm):
    """The key is write-only: a password field that never renders what is stored. Left
    empty on a change, the stored key is kept; "Remove the key" removes it."""

    api_key = forms.CharField(
        label="API key",
        required=False,
        max_length=Provider._meta.get_field("api_key").max_length,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only: never shown again. Leave empty to keep the key that is set.",
    )
    clear_key = forms.BooleanField(label="Remove the key", required=False)
    base_url = forms.URLField(
        label="Base URL",
        max_length=300,
        assume_scheme="https",
        help_text="An OpenAI-compatible API, e.g. https://api.example.com/v1",
    )

    class Meta:
        model = Provider
        fields = ["name", "base_url", "api_key"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Not even as the field's initial value (a widget could be swapped to render it).
        self.initial["api_key"] = ""

    def clean_base_url(self) -> str:
        url: str = self.cleaned_data["base_url"]
        if not url.lower().startswith(("http://", "https://")):
            raise forms.ValidationError("A provider's URL must be http:// or https://.")
        return url

    def save(self, commit: bool = True) -> Provider:
        provider: Provider = super().save(commit=False)
        key = self.cleaned_data.get("api_key") or ""
        if self.cleaned_data.get("clear_key"):
            provider.api_key = ""
        elif key:
            provider.api_key = key
        elif provider.pk is not None:
            provider.api_key = (
                Provider.objects.filter(pk=provider.pk).values_list("api_key", flat=True).first()
                or ""
            )
        if commit:
            provider.save()
        return provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Model servers beside the default one (and PARLEY_PROVIDERS). The key never leaves
    the server: not in the list, not in the form, not in the change history's message."""

    form = ProviderForm
    list_display = ["name", "base_url", "key_set", "created"]
    search_fields = ["name", "base_url"]
    fields = ["name", "base_url", "api_key", "clear_key"]

    @admin.display(description="key set", boolean=True)
    def key_set(self, obj: Provider) -> bool:
        return bool(obj.api_key)

    def get_fields(  # type: ignore[override]  # only plain field names here
        self, request: HttpRequest, obj: Provider | None = None
    ) -> list[str]:
        # Staff who may only view providers get a read-only page, which would print each
        # field's value: the key is not one of its fields.
        if not self.has_change_permission(request, obj) and not (
            obj is None and self.has_add_permission(request)
        ):
            return ["name", "base_url", "key_set"]
        return ["name", "base_url", "api_key", "clear_key"]

    def get_readonly_fields(
        self, request: HttpRequest, obj: Provider | None = None
    ) -> list[str] | tuple[str, ...]:
        if "key_set" in self.get_fields(request, obj):
            return ["key_set"]
        return super().get_readonly_fields(request, obj)

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        forget_models()  # its model list may differ now: read it again when next asked


class SharedFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("shared", "Shared (any room may add)"), ("room", "A room's own")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Assistant]) -> QuerySet[Assistant]:
        if self.value() == "shared":
            return queryset.filter(room__isnull=True)
        if self.value() == "room":
            return queryset.filter(room__isnull=False)
        return queryset


# The range the OpenAI API accepts for temperature.
TEMPERATURE_RANGE = (0.0, 2.0)


# What staff set on an assistant (the form and the page show the same, in this order).
ASSISTANT_FIELDS = (
    "room",
    "handle",
    "name",
    "avatar",
    "provider",
    "model",
    "system_prompt",
    "temperature",
    "max_tokens",
    "voice",
    "created_by",
)


class AssistantForm(forms.ModelForm):
    class Meta:
        model = Assistant
        fields = ASSISTANT_FIELDS

    def clean_handle(self) -> str:
        """The API's handle rule (chat/assistants/services.py): its syntax, and
        ``assistant`` is kept for each room's first assistant."""
        handle: str = self.cleaned_data["handle"]
        if not HANDLE.fullmatch(handle):
            raise forms.ValidationError(f"A handle is {HANDLE_RULE}.")
        if handle == DEFAULT_HANDLE and (
            self.instance.pk is None or self.instance.handle != handle
        ):
            raise forms.ValidationError(
                f"The handle {handle!r} is kept for rooms' first assistants."
            )
        return handle

    def clean_provider(self) -> str:
        name: str = self.cleaned_data["provider"]
        try:
            provider_named(name)
        except ParleyError as exc:
            raise forms.ValidationError(exc.detail) from exc
        return name

    def clean_temperature(self) -> float | None:
        value: float | None = self.cleaned_data.get("temperature")
        low, high = TEMPERATURE_RANGE
        if value is not None and not low <= value <= high:
            raise forms.ValidationError(f"The temperature must be from {low} to {high}.")
        return value


@admin.register(Assistant)
class AssistantAdmin(admin.ModelAdmin):
    """Assistants: staff's shared ones (no room: any room's owner may add them) and, to
    review, rooms' own ones (filter by kind or by room)."""

    form = AssistantForm
    list_display = ["handle", "name", "avatar", "room", "provider", "model", "created"]
    list_filter = [SharedFilter, "provider", ("room", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["handle", "name", "model", "room__slug"]
    raw_id_fields = ["room", "created_by"]
    list_select_related = ["room"]
    fields = ASSISTANT_FIELDS

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # A new one here is a shared one, made by whoever is signed in.
        return {**super().get_changeform_initial_data(request), "created_by": request.user.pk}


class GenerationInline(admin.StackedInline):
    model = Generation
    extra = 0
    can_delete = False
    readonly_fields = [f.name for f in Generation._meta.fields if f.name != "id"]


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted"
    parameter_name = "deleted"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Deleted"), ("no", "Not deleted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet[Message]:
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(deleted_at__isnull=True)
        return queryset


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "room",
        "role",
        "author",
        "status",
        "input",
        "short_text",
        "created",
        "edited_at",
        "deleted_at",
    ]
    # Deleted messages keep their text here, for staff review, until `purge_deleted`.
    list_filter = ["role", "status", "input", DeletedFilter, "room"]
    search_fields = ["text", "author__username"]
    raw_id_fields = ["room", "author", "reply_to"]
    # One query for the page's rows with their room and author, however many rows.
    list_select_related = ["room", "author"]
    # The status belongs to the task running the reply; end a reply with "Stop reply".
    # How a message was made (typed or spoken) is a fact about it, not an editable field.
    readonly_fields = [
        "status",
        "input",
        "edited_at",
        "deleted_at",
        "deleted_by",
        "rating_up",
        "rating_down",
        "edit_history",
        "feedback",
        # A reply's versions, and where its event stands in the room's log, are the
        # server's bookkeeping (regenerate and pick change them), not a reviewer's to edit.
        "version_of",
        "version",
        "version_count",
        "current_version",
        "seq",
    ]
    # The history and the ratings are shown as read-only fields, not inlines: an inline
    # is a formset whose management form every save of the message would have to carry.
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

    @admin.display(description="edit history (earlier texts, oldest first)")
    def edit_history(self, obj: Message) -> str:
        rows = [
            (f"{e.at:%Y-%m-%d %H:%M:%S}", e.by.get_username() if e.by else "-", e.text_before)
            for e in obj.edits.select_related("by")
        ]
        if not rows:
            return "-"
        return format_html_join("", "<p><b>{}</b> by {}: {}</p>", rows)

    @admin.display(description="feedback")
    def feedback(self, obj: Message) -> str:
        rows = [
            ("up" if r.value > 0 else "down", r.user.get_username(), r.comment or "-")
            for r in obj.ratings.select_related("user").order_by("id")
        ]
        if not rows:
            return "-"
        return format_html_join("", "<p>{} from {}: {}</p>", rows)


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    """Replies under review: how each was made, how fast, and how it ended.

    Read-only: a generation record is what happened, written by the reply's runner. Its
    page shows the facts (no form, no date pickers, no Save); none is added by hand. It
    is deleted with its message.
    """

    list_display = [
        "message",
        "assistant_label",
        "backend",
        "provider",
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
    list_filter = [
        "assistant_name",
        "provider",
        "model",
        "backend",
        "message__status",
        "stop_reason",
        "voice",
    ]
    search_fields = ["message__text", "error", "model", "handle", "assistant_name"]
    raw_id_fields = ["message", "stopped_by"]
    date_hierarchy = "queued_at"
    readonly_fields = ["time_to_first_token", "duration", "heard"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Generation]:
        return super().get_queryset(request).select_related("message", "stopped_by")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Generation | None = None) -> bool:
        return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list, with figures per assistant and per model of the replies its filter
        selects (chat.figures: one query, however many replies)."""
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        changelist = context.get("cl") if context else None
        if context is not None and changelist is not None:
            figures = reply_figures(changelist.queryset)
            context["reply_figures"] = figures
            context["reply_figures_tables"] = [
                ("assistant", figures.by_assistant),
                ("model", figures.by_model),
            ]
        return response

    @admin.display(description="assistant", ordering="assistant_name")
    def assistant_label(self, obj: Generation) -> str:
        return f"{obj.assistant_name or 'Assistant'} (@{obj.handle or 'assistant'})"

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


@admin.register(Rating)
class RatingAdmin(admin.ModelAdmin):
    """Members' feedback on replies, by assistant and by model, with their comments, and
    the counts per assistant and model of what the filters select (read-only: a rating is
    a member's)."""

    list_display = [
        "message",
        "rated_assistant",
        "rated_model",
        "value",
        "comment",
        "user",
        "updated",
    ]
    list_filter = [
        "value",
        ("message__generation__assistant_name", admin.AllValuesFieldListFilter),
        ("message__generation__handle", admin.AllValuesFieldListFilter),
        ("message__generation__model", admin.AllValuesFieldListFilter),
    ]
    search_fields = ["comment", "user__username", "message__generation__handle"]
    raw_id_fields = ["message", "user"]
    list_select_related = ["message__generation", "user"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Rating | None = None) -> bool:
        return False

    @admin.display(description="assistant", ordering="message__generation__assistant_name")
    def rated_assistant(self, obj: Rating) -> str:
        gen = getattr(obj.message, "generation", None)
        return f"{gen.assistant_name} (@{gen.handle})" if gen is not None else "-"

    @admin.display(description="model", ordering="message__generation__model")
    def rated_model(self, obj: Rating) -> str:
        gen = getattr(obj.message, "generation", None)
        return gen.model if gen is not None else "-"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list, and above it the counts up and down per assistant and model of the
        ratings its filters select (one query)."""
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        changelist = context.get("cl") if context else None
        if context is not None and changelist is not None:
            context["rating_counts"] = list(
                changelist.queryset.values(
                    "message__generation__handle", "message__generation__model"
                )
                .annotate(up=Count("pk", filter=Q(value=1)), down=Count("pk", filter=Q(value=-1)))
                .order_by("message__generation__handle", "message__generation__model")
            )
        return response
