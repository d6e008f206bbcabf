"""OpenAI's wire objects, made from Parley's: a reply (Message) as a ``chat.completion``
or a ``response``, and a reply's room events as ``chat.completion.chunk`` and Responses
stream events.

The mapping, event by event and status by status, is the table in docs/protocol.md
"OpenAI-compatible API".

Every Responses event made from a room event carries that event's seq as its
``sequence_number`` (several events from one room event share it, and are written in one
piece), so ``starting_after`` is the room's own resume point.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from chat.models import TERMINAL_STATUSES, Status
from chat.openai_api.selectors import COMPLETION_PREFIX, RESPONSE_PREFIX
from chat.serializers import MessageDict

TERMINAL = frozenset(TERMINAL_STATUSES)

# A reply's status -> a response's (``incomplete``: the server running it stopped).
RESPONSE_STATUS: dict[str, str] = {
    Status.QUEUED: "queued",
    Status.STREAMING: "in_progress",
    Status.PAUSED: "in_progress",
    Status.COMPLETE: "completed",
    Status.STOPPED: "cancelled",
    Status.FAILED: "failed",
    Status.INTERRUPTED: "incomplete",
}


def unix(created: str) -> int:
    return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())


def sse(payload: dict[str, Any] | str, *, event: str | None = None) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


def usage_of(usage: dict[str, Any] | None) -> tuple[int, int]:
    usage = usage or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


# --- Chat Completions ---------------------------------------------------------------------


def completion_id(message_id: str) -> str:
    return f"{COMPLETION_PREFIX}{message_id}"


def chunk(
    reply: MessageDict,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id(reply["id"]),
        "object": "chat.completion.chunk",
        "created": unix(reply["created"]),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(reply: MessageDict, model: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    body = chunk(reply, model, {})
    body["choices"] = []
    body["usage"] = completion_usage(usage)
    return body


def completion_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    prompt, completion = usage_of(usage)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason(state: str) -> str:
    """A reply that ended as asked or was stopped by a member ended at a stop."""
    return "stop"


def completion(
    reply: MessageDict, model: str, text: str, usage: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": completion_id(reply["id"]),
        "object": "chat.completion",
        "created": unix(reply["created"]),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(reply["status"]),
            }
        ],
        "usage": completion_usage(usage),
    }


# --- Responses ----------------------------------------------------------------------------


def response_id(message_id: str) -> str:
    return f"{RESPONSE_PREFIX}{message_id}"


def item_id(message_id: str) -> str:
    return f"msg_{message_id}"


def _output(message_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id(message_id),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def response(
    reply: MessageDict,
    *,
    model: str,
    text: str,
    status: str,
    usage: dict[str, Any] | None = None,
    background: bool = False,
    reason: str | None = None,
) -> dict[str, Any]:
    """A reply as a ``response`` object, ``status`` a Parley status."""
    state = RESPONSE_STATUS.get(status, "in_progress")
    item_status = {"completed": "completed", "in_progress": "in_progress"}.get(state, "incomplete")
    body: dict[str, Any] = {
        "id": response_id(reply["id"]),
        "object": "response",
        "created_at": unix(reply["created"]),
        "status": state,
        "background": background,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [] if status == Status.QUEUED else [_output(reply["id"], text, item_status)],
        "parallel_tool_calls": False,
        "temperature": None,
        "tool_choice": "none",
        "tools": [],
        "top_p": None,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": None,
        "metadata": {},
        # Extension: the reply's own status (``paused`` shows here; a response has none).
        "parley_status": status,
    }
    if state == "failed":
        body["error"] = {"code": "server_error", "message": reason or "the reply failed"}
    if state == "incomplete":
        body["incomplete_details"] = {"reason": "interrupted"}
    if status in (Status.COMPLETE, Status.STOPPED, Status.FAILED, Status.INTERRUPTED):
        prompt, completion_tokens = usage_of(usage)
        body["usage"] = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion_tokens,
        }
    return body


class ResponseEvents:
    """Turns one reply's room events into Responses stream events, keeping the text so
    far (for the ``done`` events). ``text``: what the client already has (a resume)."""

    def __init__(self, reply: MessageDict, *, model: str, background: bool, text: str = "") -> None:
        self.reply = reply
        self.model = model
        self.background = background
        self.text = text
        self.status = reply["status"]

    def _event(self, kind: str, seq: int, **fields: Any) -> bytes:
        return sse({"type": kind, "sequence_number": seq, **fields}, event=kind)

    def _response(self, status: str, **kw: Any) -> dict[str, Any]:
        return response(
            self.reply,
            model=self.model,
            text=self.text,
            status=status,
            background=self.background,
            **kw,
        )

    def opening(self, seq: int, *, status: str | None = None) -> bytes:
        """The reply's ``message`` event (``status``: the reply's then, queued or
        streaming)."""
        if status is not None:
            self.status = status
        message_id = self.reply["id"]
        return b"".join(
            [
                self._event("response.created", seq, response=self._response(self.status)),
                self._event(
                    "response.output_item.added",
                    seq,
                    output_index=0,
                    item=_output(message_id, "", "in_progress") | {"content": []},
                ),
                self._event(
                    "response.content_part.added",
                    seq,
                    item_id=item_id(message_id),
                    output_index=0,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                ),
            ]
        )

    def delta(self, seq: int, text: str) -> bytes:
        self.text += text
        return self._event(
            "response.output_text.delta",
            seq,
            item_id=item_id(self.reply["id"]),
            output_index=0,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def state(self, seq: int, event: dict[str, Any], *, final_text: str | None = None) -> bytes:
        """A ``generation`` event: in progress again, or the end. ``final_text``: the
        reply's whole text, when this stream began mid-reply (a resume)."""
        state = event["state"]
        if final_text is not None:
            self.text = final_text
        self.status = state
        if state == Status.STREAMING:
            return self._event("response.in_progress", seq, response=self._response(state))
        if state == Status.PAUSED:
            return b""  # no such state in a response (the GET shows it: parley_status)
        message_id = self.reply["id"]
        final = self._response(state, usage=event.get("usage"), reason=event.get("reason"))
        kind = {
            Status.COMPLETE: "response.completed",
            Status.FAILED: "response.failed",
        }.get(state, "response.incomplete")
        item_status = "completed" if state == Status.COMPLETE else "incomplete"
        part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
        return b"".join(
            [
                self._event(
                    "response.output_text.done",
                    seq,
                    item_id=item_id(message_id),
                    output_index=0,
                    content_index=0,
                    text=self.text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    seq,
                    item_id=item_id(message_id),
                    output_index=0,
                    content_index=0,
                    part=part,
                ),
                self._event(
                    "response.output_item.done",
                    seq,
                    output_index=0,
                    item=_output(message_id, self.text, item_status),
                ),
                self._event(kind, seq, response=final),
            ]
        )
