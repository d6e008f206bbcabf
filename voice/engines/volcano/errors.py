"""The Volcano service's failures in words a room member can read."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Final

from voice.engines.base import TTSError
from voice.engines.volcano.codec import Event, Frame, MsgType

# What of the service's error message a room member sees: one line in the chat.
MAX_REASON_CHARS: Final = 300


def status_code(frame: Frame) -> int | None:
    try:
        code = frame.json().get("status_code")
    except (ValueError, OSError):
        return None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def frame_error(frame: Frame, when: str) -> TTSError:
    """The service's own words for a failure frame, or what we did not expect."""
    try:
        payload = frame.json()
    except (ValueError, OSError):
        payload = {}
    message = ""
    for key in ("message", "error", "status_text"):
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            message = clip(value)
            break
    if not message and frame.payload and not payload:
        message = clip(frame.payload.decode("utf-8", "replace"))
    code = frame.error_code if frame.msg_type == MsgType.ERROR else payload.get("status_code")
    if frame.msg_type == MsgType.ERROR or frame.event in (
        Event.CONNECTION_FAILED,
        Event.SESSION_FAILED,
        Event.SESSION_FINISHED,
    ):
        reason = f"The Volcano speech service reported an error while {when}"
        if code is not None:
            reason += f" (code {code})"
        if frame.event == Event.CONNECTION_FAILED:
            reason += "; check VOLCANO_APP_KEY, VOLCANO_ACCESS_KEY and VOLCANO_RESOURCE_ID"
        return TTSError("upstream_status", f"{reason}: {message}" if message else f"{reason}.")
    name = _event_name(frame.event)
    return TTSError(
        "malformed",
        f"The Volcano speech service sent {name} while {when}, which we did not expect.",
    )


def _event_name(event: int | None) -> str:
    if event is None:
        return "a frame without an event"
    try:
        return f"event {Event(event).name} ({event})"
    except ValueError:
        return f"event {event}"


def message_from_text(text: str) -> str:
    try:
        parsed = json.loads(text)
    except ValueError:
        return clip(text)
    if isinstance(parsed, dict):
        for key in ("message", "error", "Message"):
            value = parsed.get(key)
            if isinstance(value, str) and value.strip():
                return clip(value)
            if isinstance(value, dict):
                inner = value.get("message") or value.get("Message")
                if isinstance(inner, str) and inner.strip():
                    return clip(inner)
    return clip(text)


def clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > MAX_REASON_CHARS:
        return text[: MAX_REASON_CHARS - 1] + "…"
    return text


def os_failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host not found"
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake failed"
    return clip(str(exc)) or type(exc).__name__
