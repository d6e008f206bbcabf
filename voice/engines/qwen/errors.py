"""DashScope's failures in words a room member can read.

The wording around them (a refused connection, a status, silence) is ``core.upstream``'s,
as for every engine; what is here reads DashScope's own error shapes, which carry a code
worth showing beside the message (``InvalidApiKey``, ``Throttling.RateQuota``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from core.upstream import clip, error_message

#: How errors name the service.
SERVICE: Final = "Qwen speech service"
#: Where ``output.audio.url`` points: the vendor's object store, not the API.
FILE_SERVICE: Final = "Qwen audio file server"
# The object store's XML error (``<Error><Code>AccessDenied</Code><Message>...``).
_XML_MESSAGE: Final = re.compile(r"<Message>([^<]*)</Message>")
#: Where a 401 or 403 points.
AUTH_HINT: Final = "check DASHSCOPE_API_KEY, and that its region matches the URLs"


def dashscope_message(payload: dict[str, Any]) -> str:
    """``{"code", "message"}`` (HTTP) or ``{"error": {"code", "message"}}`` (realtime)."""
    message = error_message(payload)
    inner = payload.get("error")
    code = inner.get("code") if isinstance(inner, dict) else payload.get("code")
    if isinstance(code, str) and code.strip() and code not in message:
        code = clip(code)
        return f"{message} ({code})" if message else code
    return message


def message_from_body(body: str) -> str:
    """The service's own words from an error body: its JSON (or the object store's XML),
    else the start of the text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        message = dashscope_message(parsed)
        if message:
            return message
    found = _XML_MESSAGE.search(body)
    if found and found.group(1).strip():
        return clip(found.group(1))
    return clip(body)
