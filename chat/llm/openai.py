"""Stream a reply from any OpenAI-compatible ``/v1/chat/completions`` server.

OpenAI itself, Ollama, vLLM and the llama.cpp server all speak the same streaming dialect:
the request carries ``"stream": true`` and the response is ``text/event-stream`` whose
events are ``data: {chat.completion.chunk}`` lines, ended by ``data: [DONE]``. With
``stream_options.include_usage`` the server adds one chunk (with empty ``choices``) that
carries the token counts.

Stopping: the stream runs inside ``async with client.stream(...)``, so cancelling the task
that iterates it, or ``aclose()`` on the generator, leaves that block and closes the
response. httpx never returns a connection whose response was not read to the end to its
keep-alive pool; it closes the socket, so the server sees the connection drop at once and
stops generating (tests/chat/llm/test_openai.py checks this against a real socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, ClassVar

import httpx

from chat.llm.base import ChatMessage, LLMBackend, LLMError, Options, Usage
from core.upstream import (
    LoopClient,
    clip,
    content_type,
    error_message,
    error_message_from_body,
    http_base_url,
    read_capped,
    server_of,
    status_failure,
    transport_failure,
)

# A streamed reply's events are a few hundred bytes; anything this large without a line end
# is not a chat completion stream, and buffering more would only cost memory.
_MAX_EVENT_BYTES = 1024 * 1024
# An error body worth showing fits in a few kilobytes; an HTML error page from a proxy can
# be large, and we only want its start.
_MAX_ERROR_BODY_BYTES = 64 * 1024
# After ``[DONE]`` the body's end follows at once; reading it lets the connection be reused
# for the next reply. A server that keeps talking is given no longer than this, because
# the reply is complete and the room is waiting to hear so.
_DRAIN_TIMEOUT = 0.25
# Keep-alive connections held per process. One reply uses one connection; rooms answered
# one after another reuse it, and a burst across rooms opens more.
_MAX_KEEPALIVE_CONNECTIONS = 20


_NO_OPTIONS = Options()


class OpenAIBackend(LLMBackend):
    name: ClassVar[str] = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        connect_timeout: float,
        read_timeout: float,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> None:
        super().__init__(model=model)
        self.base_url = http_base_url(base_url, setting="OPENAI_BASE_URL")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key = api_key or None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_tokens = max_tokens
        self.temperature = temperature
        # Where errors point: scheme, host and port, never the key or a path.
        self._server = server_of(self.base_url)
        self._http = LoopClient(
            headers={"Accept": "text/event-stream"},
            api_key=self.api_key,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_keepalive=_MAX_KEEPALIVE_CONNECTIONS,
        )

    async def warm(self) -> None:
        self._http.get()  # the client (its SSL context, pool) is made in this loop now

    async def aclose(self) -> None:
        await self._http.aclose()

    def request_body(
        self, messages: Sequence[ChatMessage], options: Options | None = None
    ) -> dict[str, Any]:
        options = options or _NO_OPTIONS
        max_tokens = self.max_tokens if options.max_tokens is None else options.max_tokens
        temperature = self.temperature if options.temperature is None else options.temperature
        body: dict[str, Any] = {
            "model": options.model or self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if options.stop:
            body["stop"] = list(options.stop)
        return body

    async def stream(
        self, messages: Sequence[ChatMessage], usage: Usage, options: Options | None = None
    ) -> AsyncGenerator[str, None]:
        client = self._http.get()
        body = self.request_body(messages, options)
        try:
            async with client.stream("POST", self.url, json=body) as resp:
                if not resp.is_success:
                    raise await self._status_error(resp)
                if content_type(resp) == "application/json":
                    # Some servers answer an error, or ignore "stream", with a JSON body.
                    raise await self._json_instead_of_stream(resp)
                async for delta in _parse_stream(_sse_data(resp.aiter_lines()), usage):
                    yield delta
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    async def _status_error(self, resp: httpx.Response) -> LLMError:
        reason = await status_failure(resp, service="model server", limit=_MAX_ERROR_BODY_BYTES)
        return LLMError("upstream_status", reason)

    async def _json_instead_of_stream(self, resp: httpx.Response) -> LLMError:
        body = await read_capped(resp, _MAX_ERROR_BODY_BYTES)
        message = error_message_from_body(body)
        if message:
            return LLMError("upstream_status", f"The model server reported an error: {message}")
        return LLMError(
            "malformed", "The model server answered with JSON instead of a streamed reply."
        )

    def _transport_error(self, exc: httpx.HTTPError) -> LLMError:
        code, reason = transport_failure(
            exc,
            service="model server",
            product="reply",
            server=self._server,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )
        return LLMError(code, reason)


async def _sse_data(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The data of each server-sent event (WHATWG HTML, "Server-sent events").

    An event is a run of lines ended by a blank line; its ``data:`` lines are joined with
    newlines. Comments (``:``) and other fields (``event``, ``id``, ``retry``) are skipped.
    An event still open when the stream ends is dispatched too: servers that close right
    after their last ``data:`` line lose nothing.
    """
    data: list[str] = []
    size = 0
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data, size = [], 0
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field != "data":
            continue
        value = value.removeprefix(" ")
        size += len(value)
        if size > _MAX_EVENT_BYTES:
            raise LLMError("malformed", "The model server sent an event far too large to read.")
        data.append(value)
    if data:
        yield "\n".join(data)


async def _parse_stream(events: AsyncIterator[str], usage: Usage) -> AsyncGenerator[str, None]:
    """Text deltas from chat.completion.chunk events; fill ``usage`` from its chunk."""
    finished = False
    async for data in events:
        if data.strip() == "[DONE]":
            await _drain(events)
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise LLMError(
                "malformed", f"The model server sent a line that is not JSON: {clip(data)}"
            ) from None
        if not isinstance(chunk, dict):
            raise _shape_error(data)
        if chunk.get("error") is not None:
            message = error_message(chunk) or clip(data)
            raise LLMError("upstream_status", f"The model server reported an error: {message}")
        _fill_usage(chunk.get("usage"), usage, data)
        choices = chunk.get("choices")
        if choices is None:
            continue
        if not isinstance(choices, list):
            raise _shape_error(data)
        if not choices:
            continue
        choice = choices[0]
        if not isinstance(choice, dict):
            raise _shape_error(data)
        delta = choice.get("delta")
        if delta is not None:
            if not isinstance(delta, dict):
                raise _shape_error(data)
            content = delta.get("content")
            if content is not None and not isinstance(content, str):
                raise _shape_error(data)
            if content:
                yield content
        if choice.get("finish_reason") is not None:
            finished = True
    if not finished:
        raise LLMError(
            "disconnected",
            "The model server closed the connection before the reply was complete.",
        )


async def _drain(events: AsyncIterator[str]) -> None:
    """Read the end of the body after ``[DONE]`` so the connection can be reused.

    Servers end the body right after ``[DONE]``; one that does not is not waited for, and
    its connection is closed rather than pooled. Whatever comes now is ignored.
    """
    with contextlib.suppress(TimeoutError, httpx.HTTPError, LLMError):
        async with asyncio.timeout(_DRAIN_TIMEOUT):
            async for _ in events:
                pass


def _fill_usage(value: object, usage: Usage, data: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _shape_error(data)
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if _is_count(prompt):
        usage.prompt_tokens = prompt
    if _is_count(completion):
        usage.completion_tokens = completion


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shape_error(data: str) -> LLMError:
    return LLMError(
        "malformed", f"The model server sent a chunk that is not a chat completion: {clip(data)}"
    )
