"""Rooms, memberships, assistants, messages and the generation record of each reply."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Visibility(models.TextChoices):
    PUBLIC = "public"
    PRIVATE = "private"


class AssistantMode(models.TextChoices):
    ALWAYS = "always"
    MENTION = "mention"


class VoiceMode(models.TextChoices):
    OFF = "off"
    NORMAL = "normal"
    STREAMING = "streaming"
    REALTIME = "realtime"


class InputKind(models.TextChoices):
    TEXT = "text"
    SPEECH = "speech"  # a transcript of what the member said (docs/protocol.md "speech")


class Room(models.Model):
    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=120)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_rooms"
    )
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.PUBLIC
    )
    assistant = models.CharField(
        max_length=10, choices=AssistantMode.choices, default=AssistantMode.ALWAYS
    )
    voice = models.CharField(max_length=10, choices=VoiceMode.choices, default=VoiceMode.OFF)
    system_prompt = models.TextField(blank=True, default="")
    # When a spoken reply is cut off, the next prompt has only what the member who cut it
    # off had heard (Generation.heard_text): the model should not believe it said what
    # nobody heard.
    prompt_heard_text = models.BooleanField(default=True)
    # A floor above every event seq this room has published: seqs are handed out from
    # blocks reserved here (one process) or raised past each published seq (Redis), so
    # neither a restarted process nor a restarted Redis reuses one (chat/events/).
    seq_reserved = models.BigIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        MEMBER = "member"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    joined = models.DateTimeField(auto_now_add=True)
    # The room's seq up to which this member has read (the page reports it: the `read`
    # action, POST .../read). It only moves forward (services.membership_read). Unread
    # messages are those with a larger ``Message.seq``. A database default too, for a
    # rolling deploy (a daphne on the release before inserts rows without it).
    last_read_seq = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="membership_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.room.slug} ({self.role})"


class Provider(models.Model):
    """A model server added by staff in the admin, beside the ``default`` provider (from
    ``LLM_BACKEND``) and those of ``PARLEY_PROVIDERS`` (chat/assistants/providers.py).

    The key is write-only: no page, API answer, event or log line shows it (the admin's
    form never renders it back)."""

    name = models.SlugField(max_length=40, unique=True)
    base_url = models.URLField(max_length=300)
    api_key = models.CharField(max_length=500, blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Assistant(models.Model):
    """A named AI persona: who it is (handle, name, avatar) and how it answers (provider,
    model, prompt, sampling, voice).

    ``room`` set: a room assistant, its owner's. ``room`` null: a shared assistant, staff's,
    which any room may add. Either way a room hears it only through a ``RoomAssistant``.
    A handle never changes once made (a room's placements copy it)."""

    room = models.ForeignKey(
        Room, null=True, blank=True, on_delete=models.CASCADE, related_name="own_assistants"
    )
    handle = models.CharField(max_length=32)
    name = models.CharField(max_length=60)
    # An emoji or a colour ("#2f6fd0"); "" lets the page pick one from the handle.
    avatar = models.CharField(max_length=16, blank=True, default="")
    provider = models.CharField(max_length=40, default="default")
    # "": the provider's default model (the default provider's LLM_MODEL).
    model = models.CharField(max_length=200, blank=True, default="")
    system_prompt = models.TextField(blank=True, default="")
    # None: the server's LLM_TEMPERATURE / LLM_MAX_TOKENS.
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.IntegerField(null=True, blank=True)
    # The TTS voice it speaks with where the room speaks ("": the engine's default).
    voice = models.CharField(max_length=80, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["room", "handle"],
                name="assistant_room_handle",
                condition=Q(room__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["handle"], name="assistant_shared_handle", condition=Q(room__isnull=True)
            ),
        ]

    def __str__(self) -> str:
        where = self.room.slug if self.room is not None else "shared"
        return f"@{self.handle} ({where})"


class RoomAssistant(models.Model):
    """An assistant a room hears, and when: every message, or only when mentioned."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="room_assistants")
    assistant = models.ForeignKey(Assistant, on_delete=models.CASCADE, related_name="placements")
    # The assistant's handle, copied so the database keeps handles unique in a room.
    handle = models.CharField(max_length=32)
    mode = models.CharField(
        max_length=10, choices=AssistantMode.choices, default=AssistantMode.MENTION
    )
    added = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["room", "handle"], name="room_assistant_handle"),
            models.UniqueConstraint(fields=["room", "assistant"], name="room_assistant_once"),
            # At most one assistant answers every message.
            models.UniqueConstraint(
                fields=["room"], name="room_assistant_one_always", condition=Q(mode="always")
            ),
        ]

    def __str__(self) -> str:
        return f"@{self.handle} in {self.room_id} ({self.mode})"


class Invite(models.Model):
    """A link a signed-in user opens to join a room: revocable, and it expires."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="invites")
    token = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField()
    revoked = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"invite to {self.room_id} until {self.expires:%Y-%m-%d %H:%M}"


class Role(models.TextChoices):
    USER = "user"
    ASSISTANT = "assistant"


class Status(models.TextChoices):
    QUEUED = "queued"
    STREAMING = "streaming"
    PAUSED = "paused"
    COMPLETE = "complete"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


# A reply in one of these states is still owned by a generation task somewhere.
LIVE_STATUSES = (Status.QUEUED, Status.STREAMING, Status.PAUSED)
# A reply in one of these has ended for good: the one definition, imported everywhere
# (the event store, the services, the voice views, the tests). A reply reaches one of
# them exactly once: the move is a conditional update (chat/replies/db.py).
TERMINAL_STATUSES = (Status.COMPLETE, Status.STOPPED, Status.FAILED, Status.INTERRUPTED)


class Message(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    # Null for the assistant.
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    text = models.TextField(blank=True, default="")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    # The sender's own id for its optimistic copy, echoed back; also the send's
    # idempotency key: a resend with it within PARLEY_SEND_IDEMPOTENCY_WINDOW returns this
    # message instead of storing another (chat/replies/db.py).
    client_id = models.CharField(max_length=64, blank=True, default="")
    input = models.CharField(max_length=10, choices=InputKind.choices, default=InputKind.TEXT)
    # --- Edits, deletes and ratings (issue 19; chat/lifecycle.py writes them) ---
    # When its author last edited it (its earlier texts are its MessageEdit rows).
    edited_at = models.DateTimeField(null=True, blank=True)
    # A tombstone once set: members see "message deleted" and never its text; the text
    # stays for staff review until `manage.py purge_deleted` erases it
    # (PARLEY_DELETED_RETENTION_DAYS). Search and prompts leave these rows out.
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # A reply's rating counts, kept beside it so a page of messages reads them with no
    # query more; written in the transaction that writes the Rating (None: never rated).
    rating_up = models.IntegerField(null=True, blank=True)
    rating_down = models.IntegerField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    # --- Versions (issue 19 section 1, docs/protocol.md "Versions of a reply") ---
    # A regenerated answer is a row of its own (so pause, resume, stop, heard text and
    # voice work on it as on any reply): it points to the first reply ("the reply",
    # ``version_of`` null, ``version`` 1), with the same ``reply_to`` and assistant. The
    # reply row keeps the group's count and which version is current (null: itself), so a
    # message's wire dict needs no extra query. Defaults in the database too, for a
    # process of the release before (a rolling deploy) inserting replies.
    version_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="later_versions"
    )
    version = models.PositiveIntegerField(default=1, db_default=1)
    version_count = models.PositiveIntegerField(default=1, db_default=1)
    current_version = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The seq of this message's `message` event, recorded once it is emitted (the rows
    # are written before their event: chat/replies). Unread counts compare it with
    # ``Membership.last_read_seq``. Null for a message emitted before it was kept, or in
    # the moment between its row and its event: neither counts as unread.
    seq = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [
            # The latest messages of a room, and paging by id within it.
            models.Index(fields=["room", "-id"], name="message_room_latest"),
            # Unread messages: a room's messages after a member's last read seq.
            models.Index(fields=["room", "seq"], name="message_room_seq"),
            # Full-text search has one more, on PostgreSQL only: a GIN index on the text's
            # tsvector, made by migration 0010 (chat/search.py says why).
            # A resent message is found by its sender's client_id (idempotent sends).
            models.Index(
                fields=["room", "author", "client_id"],
                name="message_client_id",
                condition=~Q(client_id=""),
            ),
            # Replies still owned by a task: recovery and the admin look these up.
            models.Index(
                fields=["status"],
                name="message_live_replies",
                condition=Q(role="assistant") & Q(status__in=["queued", "streaming", "paused"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} in {self.room_id}: {self.text[:40]}"


class Generation(models.Model):
    """How one assistant reply was made: backend, timings, usage, and how it ended.

    The reply's state lives in ``Message.status`` (one source of truth); this record
    holds everything else the admin reviews.
    """

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="generation")
    backend = models.CharField(max_length=20)
    model = models.CharField(max_length=200, blank=True, default="")
    # Which assistant wrote it, as it was then (the handle and name stay if it is removed),
    # and on which provider. Defaults in the database too, for a rolling deploy.
    assistant = models.ForeignKey(
        Assistant, null=True, blank=True, on_delete=models.SET_NULL, related_name="generations"
    )
    handle = models.CharField(max_length=32, blank=True, default="", db_default="")
    assistant_name = models.CharField(max_length=60, blank=True, default="", db_default="")
    provider = models.CharField(max_length=40, blank=True, default="", db_default="")
    queued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    paused_seconds = models.FloatField(default=0.0)
    prompt_tokens = models.IntegerField(null=True, blank=True)
    completion_tokens = models.IntegerField(null=True, blank=True)
    stop_reason = models.CharField(max_length=40, blank=True, default="")
    stopped_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="stopped_generations",
    )
    error = models.TextField(blank=True, default="")
    # How members were told the reply ended, as its terminal ``generation`` event said it:
    # the reason they read ("user", "pause_timeout", or a failure's words) and the metrics
    # (docs/protocol.md). Kept as sent, so a message reads the same after a reload as it
    # did live (``stop_reason`` and ``error`` are the reviewers' codes and details; the
    # tokens may be the pieces the model sent, which nothing else records). A default in
    # the database too: a daphne still on the release before (a rolling deploy) inserts
    # rows without this column.
    reason = models.TextField(blank=True, default="", db_default="")
    metrics = models.JSONField(null=True, blank=True)
    # The process running this reply ("host:pid:start"), for crash recovery.
    worker = models.CharField(max_length=120, blank=True, default="")
    # Voice: the mode it was spoken in, when its first audio went out, how much audio, and
    # how long synthesis took (synthesis_seconds / audio_seconds is the real-time factor).
    voice = models.CharField(max_length=10, blank=True, default="")
    first_audio_at = models.DateTimeField(null=True, blank=True)
    audio_seconds = models.FloatField(null=True, blank=True)
    synthesis_seconds = models.FloatField(null=True, blank=True)
    # Which audio spoke which text ([audio_start_ms, audio_end_ms, text_start, text_end]
    # per piece; voice.speech.SpeechMarks), saved when the speech ends, so what a listener
    # heard can be worked out after it.
    speech_marks = models.JSONField(default=list, blank=True)
    # A spoken reply cut off by a member (stop, or speaking over it): what that member had
    # heard, from their playback reports, and how far into the audio they were. None:
    # never cut off while heard (``text`` is then what counts).
    heard_text = models.TextField(null=True, blank=True)  # noqa: DJ001 - None is not ""
    heard_ms = models.IntegerField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["-queued_at"], name="generation_recent")]

    def __str__(self) -> str:
        return f"generation of message #{self.message_id}"

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token: from the model request's start to its first text."""
        if self.started_at is None or self.first_token_at is None:
            return None
        return round((self.first_token_at - self.started_at).total_seconds() * 1000, 1)

    @property
    def duration_ms(self) -> float | None:
        """How long the reply streamed, pauses left out (the metrics' ``duration_ms``)."""
        if self.started_at is None or self.ended_at is None:
            return None
        streamed = (self.ended_at - self.started_at).total_seconds() - self.paused_seconds
        return round(streamed * 1000, 1)


# --- Edits, deletes and ratings (issue 19; chat/lifecycle.py) ------------------------------


class MessageEdit(models.Model):
    """One edit of a member's message: the text it had before, who edited it and when.
    The admin shows a message's history from these (staff review)."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="edits")
    text_before = models.TextField(blank=True, default="")
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"edit of message #{self.message_id} at {self.at:%Y-%m-%d %H:%M}"


class Rating(models.Model):
    """A member's thumbs up (+1) or down (-1) on an assistant reply, with an optional
    comment; one per member and reply, changeable (value 0 deletes it)."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="ratings")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ratings"
    )
    value = models.SmallIntegerField()
    comment = models.CharField(max_length=500, blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "user"], name="rating_once_per_member"),
            models.CheckConstraint(condition=Q(value__in=[1, -1]), name="rating_value_up_or_down"),
        ]

    def __str__(self) -> str:
        return f"{self.value:+d} by {self.user_id} on message #{self.message_id}"
