"""A room's whole conversation for the people who review sessions (admin, staff only).

``room_transcript`` reads it in a fixed number of queries whatever its length; the
renderers turn it into the JSON and Markdown exports. The JSON uses the wire's Message
shape (docs/protocol.md) plus, on assistant replies, how each was made; every reply is
named by the assistant that wrote it, as it was then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils import timezone

from chat.models import Generation, InputKind, Message, Role, Room, Status
from chat.serializers import (
    ASSISTANT_NAME,
    DEFAULT_PROVIDER,
    ROOM_PREFETCH,
    assistant_to_dict,
    message_to_dict,
)


@dataclass(frozen=True)
class Transcript:
    room: Room
    members: list[str]
    messages: list[Message]


def room_transcript(*, room_id: int) -> Transcript:
    """The room with its assistants, its members and every message, oldest first (four
    queries)."""
    room = Room.objects.select_related("owner").prefetch_related(*ROOM_PREFETCH).get(pk=room_id)
    members = sorted(
        m.user.get_username() for m in room.memberships.select_related("user").order_by()
    )
    # Deleted messages leave exports (their text is staff's in the admin until purged).
    messages = list(
        Message.objects.filter(room=room, deleted_at__isnull=True)
        .select_related("author", "generation", "generation__stopped_by")
        .order_by("id")
    )
    return Transcript(room=room, members=members, messages=messages)


def generation_of(message: Message) -> Generation | None:
    """The reply's generation record (selected with it by ``room_transcript``), if any."""
    try:
        return message.generation
    except Generation.DoesNotExist:
        return None


def reply_author(gen: Generation | None) -> str:
    """Who wrote a reply, for a reader: "Coder (@coder)"; a record from before a room
    had named assistants (no name kept), "assistant" as it was shown then."""
    if gen is None or not gen.assistant_name:
        return ASSISTANT_NAME
    return f"{gen.assistant_name} (@{gen.handle or ASSISTANT_NAME})"


def reply_facts(gen: Generation) -> list[str]:
    """How a reply was made and ended, in a reviewer's words: who stopped it, time to
    first token, streaming time, tokens."""
    facts = []
    if gen.stopped_by is not None:
        facts.append(f"stopped by {gen.stopped_by.get_username()}")
    if gen.ttft_ms is not None:
        facts.append(f"first token {gen.ttft_ms:.0f} ms")
    if gen.duration_ms is not None:
        facts.append(f"took {gen.duration_ms / 1000:.1f} s")
    if gen.completion_tokens is not None:
        facts.append(f"{gen.completion_tokens} tokens")
    return facts


def _generation_dict(gen: Generation) -> dict[str, Any]:
    return {
        "backend": gen.backend,
        "assistant": {"handle": gen.handle or ASSISTANT_NAME, "name": gen.assistant_name},
        "provider": gen.provider or DEFAULT_PROVIDER,
        "model": gen.model,
        "queued_at": gen.queued_at.isoformat(),
        "ended_at": gen.ended_at.isoformat() if gen.ended_at else None,
        "ttft_ms": gen.ttft_ms,
        "duration_ms": gen.duration_ms,
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "paused_seconds": gen.paused_seconds,
        "stop_reason": gen.stop_reason or None,
        "stopped_by": gen.stopped_by.get_username() if gen.stopped_by else None,
        "error": gen.error or None,
        "voice": gen.voice or None,
        "heard_text": gen.heard_text,
        "heard_ms": gen.heard_ms,
    }


def transcript_json(transcript: Transcript) -> dict[str, Any]:
    room = transcript.room
    messages = []
    for message in transcript.messages:
        item: dict[str, Any] = dict(message_to_dict(message, room_slug=room.slug))
        gen = generation_of(message)
        if gen is not None:
            item["generation"] = _generation_dict(gen)
        messages.append(item)
    return {
        "room": {
            "slug": room.slug,
            "name": room.name,
            "owner": room.owner.get_username(),
            "visibility": room.visibility,
            "assistant": room.assistant,
            "voice": room.voice,
            "system_prompt": room.system_prompt,
            "assistants": [
                assistant_to_dict(p, default_model=settings.LLM_MODEL)
                for p in room.room_assistants.all()
            ],
            "created": room.created.isoformat(),
        },
        "members": transcript.members,
        "exported_at": timezone.now().isoformat(),
        "messages": messages,
    }


def _quote_block(text: str) -> str:
    # Each message is a block quote: its own Markdown renders inside it, and a line of it
    # that looks like one of our headings cannot pass for another message.
    if not text.strip():
        return "> _(no text)_"
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines())


def transcript_markdown(transcript: Transcript) -> str:
    room = transcript.room
    lines = [
        f"# {room.name}",
        "",
        f"- Room: `{room.slug}` ({room.visibility}), owner {room.owner.get_username()}",
        f"- Members: {', '.join(transcript.members) or '-'}",
        f"- Exported: {timezone.now().isoformat(timespec='seconds')}",
        "",
    ]
    for message in transcript.messages:
        if message.role == Role.ASSISTANT:
            who = reply_author(generation_of(message))
        else:
            who = message.author.get_username() if message.author else "(deleted user)"
        when = message.created.isoformat(timespec="seconds")
        heading = f"### {who} · {when} · #{message.pk}"
        if message.input == InputKind.SPEECH:
            heading += " · spoken"
        gen = generation_of(message) if message.role == Role.ASSISTANT else None
        if message.role == Role.ASSISTANT and message.status != Status.COMPLETE:
            heading += f" · {message.status}"
            if gen is not None and gen.stop_reason:
                by = f" by {gen.stopped_by.get_username()}" if gen.stopped_by else ""
                heading += f" ({gen.stop_reason}{by})"
        lines += [heading, "", _quote_block(message.text), ""]
        if gen is not None:
            facts = reply_facts(gen)
            if facts:
                lines += [f"_{' · '.join(facts)}_", ""]
            if gen.heard_text is not None:
                lines += [
                    f"Heard by the member who cut it off (the first {gen.heard_ms} ms):",
                    "",
                    _quote_block(gen.heard_text),
                    "",
                ]
    return "\n".join(lines)
