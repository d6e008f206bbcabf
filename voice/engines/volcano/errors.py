"""The Volcano service's failure frames in words a room member can read.

Failures of the connection itself (a refused handshake, a socket error, silence) are
worded by ``core.upstream``, as for every other engine; what is here reads this
protocol's own failure frames.
"""

from __future__ import annotations

from typing import Final

from core.upstream import clip, error_message
from voice.engines.base import TTSError
from voice.engines.volcano.codec import Event, Frame, MsgType

#: How errors name the service (``core.upstream`` words the rest around it).
SERVICE: Final = "Volcano speech service"
#: Where a refused handshake or a ConnectionFailed points.
CREDENTIALS_HINT: Final = "check VOLCANO_APP_KEY, VOLCANO_ACCESS_KEY and VOLCANO_RESOURCE_ID"


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
    message = error_message(payload)
    if not message:
        status_text = payload.get("status_text")
        if isinstance(status_text, str) and status_text.strip():
            message = clip(status_text)
    if not message and frame.payload and not payload:
        message = clip(frame.payload.decode("utf-8", "replace"))
    code = frame.error_code if frame.msg_type == MsgType.ERROR else payload.get("status_code")
    if frame.msg_type == MsgType.ERROR or frame.event in (
        Event.CONNECTION_FAILED,
        Event.SESSION_FAILED,
        Event.SESSION_FINISHED,
    ):
        reason = f"The {SERVICE} reported an error while {when}"
        if code is not None:
            reason += f" (code {code})"
        if frame.event == Event.CONNECTION_FAILED:
            reason += f"; {CREDENTIALS_HINT}"
        return TTSError("upstream_status", f"{reason}: {message}" if message else f"{reason}.")
    name = _event_name(frame.event)
    return TTSError(
        "malformed",
        f"The {SERVICE} sent {name} while {when}, which we did not expect.",
    )


def _event_name(event: int | None) -> str:
    if event is None:
        return "a frame without an event"
    try:
        return f"event {Event(event).name} ({event})"
    except ValueError:
        return f"event {event}"
