"""The request bodies of the OpenAI-compatible API, checked field by field.

Each parser takes the decoded JSON object and returns what Parley will do with it, or
raises ``OpenAIError`` naming the field (``param``), so a stranger's body (wrong types,
NUL, lone surrogates, huge numbers) is a 400 in OpenAI's shape and never reaches a
service half-checked. Fields Parley does not use (``top_p``, ``user``, ``seed``,
``metadata`` ...) are accepted and ignored, as clients send them by default; what Parley
cannot do (``n`` > 1, tools, images, audio) is refused rather than silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chat.errors import ParleyError
from chat.openai_api.errors import OpenAIError
from chat.replies import Sampling
from chat.text import clean_text


@dataclass(frozen=True)
class Ask:
    """One question for a room's assistant: the text posted as the user's message, which
    model (room and assistant) answers it, and how its answer is delivered."""

    model: str
    text: str
    sampling: Sampling
    stream: bool
    include_usage: bool = False
    background: bool = False


def _bool(data: dict[str, Any], name: str, default: bool = False) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise OpenAIError(f"{name} must be a boolean", param=name, code="invalid_type")
    return value


def _temperature(data: dict[str, Any]) -> float | None:
    value = data.get("temperature")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise OpenAIError("temperature must be a number", param="temperature", code="invalid_type")
    if not math.isfinite(value) or not 0 <= value <= 2:
        raise OpenAIError(
            "temperature must be between 0 and 2", param="temperature", code="invalid_value"
        )
    return float(value)


def _max_tokens(data: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise OpenAIError(f"{name} must be an integer", param=name, code="invalid_type")
        if not 1 <= value <= settings.PARLEY_OPENAI_MAX_TOKENS:
            raise OpenAIError(
                f"{name} must be between 1 and {settings.PARLEY_OPENAI_MAX_TOKENS}",
                param=name,
                code="invalid_value",
            )
        return value
    return None


def _text(value: object, *, param: str, max_chars: int, required: bool = True) -> str:
    try:
        return clean_text(value, field=param, max_chars=max_chars, required=required)
    except ParleyError as exc:
        raise OpenAIError(exc.detail, param=param, code="invalid_value") from exc


def _stop(data: dict[str, Any]) -> tuple[str, ...]:
    value = data.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise OpenAIError(
            "stop must be a string or a list of strings", param="stop", code="invalid_type"
        )
    if len(items) > settings.PARLEY_OPENAI_STOP_MAX:
        raise OpenAIError(
            f"stop takes at most {settings.PARLEY_OPENAI_STOP_MAX} sequences",
            param="stop",
            code="invalid_value",
        )
    return tuple(_text(s, param="stop", max_chars=settings.PARLEY_OPENAI_STOP_CHARS) for s in items)


def _refuse_unsupported(data: dict[str, Any]) -> None:
    for name in ("tools", "functions"):
        if data.get(name):
            raise OpenAIError(
                f"{name} are not supported: a Parley room's assistants answer in text",
                param=name,
                code="unsupported_parameter",
            )
    if data.get("tool_choice") not in (None, "none", "auto"):
        raise OpenAIError(
            "tool_choice is not supported", param="tool_choice", code="unsupported_parameter"
        )


def _content_text(content: object, *, param: str, text_types: tuple[str, ...]) -> str:
    """A message's content: a string, or a list of text parts (joined); images, audio and
    files are refused."""
    limit = settings.PARLEY_MAX_MESSAGE_CHARS
    if isinstance(content, str):
        return _text(content, param=param, max_chars=limit, required=False)
    if not isinstance(content, list):
        raise OpenAIError(
            "content must be a string or a list of content parts",
            param=param,
            code="invalid_type",
        )
    pieces = []
    for part in content:
        if not isinstance(part, dict):
            raise OpenAIError("a content part must be an object", param=param, code="invalid_type")
        kind = part.get("type")
        if kind not in text_types:
            shown = kind if isinstance(kind, str) else type(kind).__name__
            raise OpenAIError(
                f"content parts of type {shown[:40]!r} are not supported: only text",
                param=param,
                code="unsupported_content",
            )
        pieces.append(_text(part.get("text"), param=param, max_chars=limit, required=False))
    return "".join(pieces)


def _last_user_text(messages: object, *, param: str, text_types: tuple[str, ...]) -> str:
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(f"{param} must be a non-empty list", param=param, code="invalid_type")
    found: str | None = None
    for index, message in enumerate(messages):
        where = f"{param}[{index}]"
        if not isinstance(message, dict):
            raise OpenAIError(f"{where} must be an object", param=where, code="invalid_type")
        role = message.get("role")
        if not isinstance(role, str):
            raise OpenAIError(f"{where}.role must be a string", param=where, code="invalid_type")
        content = message.get("content")
        if content is None and role == "assistant":
            continue  # an assistant turn that called tools: nothing to read
        text = _content_text(content, param=f"{where}.content", text_types=text_types)
        if role == "user":
            found = text
    if found is None or not found.strip():
        raise OpenAIError(
            f"{param} must contain a user message with text: it is what is posted to the room",
            param=param,
            code="invalid_value",
        )
    return found


def chat_completion(data: dict[str, Any]) -> Ask:
    """POST /v1/chat/completions. Only the last ``user`` message is posted; the room's
    own history is the context (docs/protocol.md "OpenAI-compatible API")."""
    _refuse_unsupported(data)
    n = data.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n != 1):
        raise OpenAIError(
            "n must be 1: a room's assistant writes one reply", param="n", code="unsupported_value"
        )
    stream = _bool(data, "stream")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise OpenAIError(
                "stream_options must be an object", param="stream_options", code="invalid_type"
            )
        include_usage = _bool(options, "include_usage")
    modalities = data.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise OpenAIError("only text is supported", param="modalities", code="unsupported_value")
    text = _last_user_text(data.get("messages"), param="messages", text_types=("text",))
    return Ask(
        model=_model(data),
        text=text,
        sampling=Sampling(
            temperature=_temperature(data),
            max_tokens=_max_tokens(data, "max_completion_tokens", "max_tokens"),
            stop=_stop(data),
        ),
        stream=stream,
        include_usage=include_usage,
    )


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str):
        raise OpenAIError("model must be a string", param="model", code="invalid_type")
    return model


def response_create(data: dict[str, Any]) -> Ask:
    """POST /v1/responses, text in and text out: ``input`` is a string or a list of
    input messages (the last user one is posted). ``instructions`` are refused: an
    assistant's instructions are its own system prompt, set in the room."""
    _refuse_unsupported(data)
    if data.get("instructions") not in (None, ""):
        raise OpenAIError(
            "instructions are not supported: the assistant's system prompt is set in its room",
            param="instructions",
            code="unsupported_parameter",
        )
    if data.get("previous_response_id") is not None:
        raise OpenAIError(
            "previous_response_id is not needed: the room's history is the context",
            param="previous_response_id",
            code="unsupported_parameter",
        )
    raw = data.get("input")
    if isinstance(raw, str):
        text = _text(raw, param="input", max_chars=settings.PARLEY_MAX_MESSAGE_CHARS)
    else:
        text = _last_user_text(raw, param="input", text_types=("input_text", "text"))
    return Ask(
        model=_model(data),
        text=text,
        sampling=Sampling(
            temperature=_temperature(data),
            max_tokens=_max_tokens(data, "max_output_tokens"),
        ),
        stream=_bool(data, "stream"),
        background=_bool(data, "background"),
    )
