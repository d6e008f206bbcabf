"""Talking to upstream services (the model server, the speech services) over httpx or a
WebSocket.

What every such client needs to turn a failure into a reason a room member can read:
the server's own error message from its body, why a connection failed, what each httpx
error means and what each failure to open a WebSocket means (``websockets``' connect).
The model backend and the speech engines wrap the result in their own exception types
(``LLMError``, ``TTSError``), so every engine words the same failure the same way.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

# How long an idle keep-alive connection is kept: shorter than the idle timeouts of common
# servers and load balancers (60 s and up), so a pooled connection is rarely found dead.
KEEPALIVE_EXPIRY = 30.0

# What of a server's own error message a room member sees: enough for "model not found" or
# "Incorrect API key provided: sk-...", short enough for one line in the chat.
MAX_REASON_CHARS = 300


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str  # "message" unless an ``event:`` field says otherwise
    data: str


class EventTooLarge(ValueError):
    """A server-sent event past the reader's limit."""


async def sse_events(
    lines: AsyncIterator[str], *, limit: int
) -> AsyncGenerator[ServerSentEvent, None]:
    """The events of a ``text/event-stream`` body (WHATWG HTML, "Server-sent events").

    An event is a run of lines ended by a blank line; its ``data:`` lines are joined with
    newlines, its ``event:`` field names it. Comments (``:``, such as DashScope's
    ``:HTTP_STATUS/200``), ``id`` and ``retry`` are skipped; an event without data is
    not dispatched. An event still open when the stream ends is dispatched too: servers
    that close right after their last ``data:`` line lose nothing. Raises
    :class:`EventTooLarge` once an event's data passes ``limit`` characters.
    """
    event = ""
    data: list[str] = []
    size = 0
    async for line in lines:
        if not line:
            if data:
                yield ServerSentEvent(event or "message", "\n".join(data))
            event, data, size = "", [], 0
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            size += len(value)
            if size > limit:
                raise EventTooLarge(f"an event of more than {limit} characters")
            data.append(value)
    if data:
        yield ServerSentEvent(event or "message", "\n".join(data))


def content_type(resp: httpx.Response) -> str:
    return resp.headers.get("content-type", "").partition(";")[0].strip().lower()


async def read_capped(resp: httpx.Response, limit: int) -> str:
    """Up to ``limit`` bytes of the body, decoded; the rest is left unread."""
    body = bytearray()
    async for part in resp.aiter_bytes():
        body += part
        if len(body) >= limit:
            break
    return bytes(body[:limit]).decode(resp.encoding or "utf-8", errors="replace")


def error_message_from_body(body: str) -> str:
    """The server's own words: from an OpenAI-style JSON error, else the start of the body."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        message = error_message(parsed)
        if message:
            return message
    return clip(body)


def error_message(payload: dict[str, Any]) -> str:
    """``{"error": {"message"}}`` (OpenAI, vLLM, DashScope's realtime API), ``{"error":
    "..."}`` (Ollama, Volcano), ``{"code", "message"}`` (DashScope), ``{"Message"}``
    (some API gateways), and kin."""
    error = payload.get("error")
    if isinstance(error, dict):
        for key in ("message", "Message"):
            message = error.get(key)
            if isinstance(message, str) and message.strip():
                return clip(message)
    if isinstance(error, str) and error.strip():
        return clip(error)
    for key in ("message", "Message", "detail"):
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return clip(value)
    return ""


def clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > MAX_REASON_CHARS:
        return text[: MAX_REASON_CHARS - 1] + "…"
    return text


def connect_failure(exc: BaseException) -> str:
    """Name why a connection failed, from the OS error under httpx's wrappers."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host not found"
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "host not found"
    return clip(str(exc)) or type(exc).__name__


async def status_failure(
    resp: httpx.Response, *, service: str, limit: int, auth_hint: str = ""
) -> str:
    """The reason for a non-2xx answer: its status and the server's own message.

    ``auth_hint`` ("check DASHSCOPE_API_KEY") is added to a 401 or 403.
    """
    body = await read_capped(resp, limit)
    return status_reason(
        resp.status_code,
        resp.reason_phrase,
        error_message_from_body(body),
        service=service,
        auth_hint=auth_hint,
    )


def status_reason(
    status_code: int, phrase: str, message: str, *, service: str, auth_hint: str = ""
) -> str:
    """``The <service> answered HTTP 401 Unauthorized (<auth_hint>): <message>``."""
    status = f"HTTP {status_code}"
    if phrase:
        status += f" {phrase}"
    reason = f"The {service} answered {status}"
    if auth_hint and status_code in (401, 403):
        reason += f" ({auth_hint})"
    return f"{reason}: {message}" if message else f"{reason}."


def transport_failure(
    exc: httpx.HTTPError,
    *,
    service: str,
    product: str,
    server: str,
    connect_timeout: float,
    read_timeout: float,
) -> tuple[str, str]:
    """(code, reason) for an httpx error talking to ``service`` ("model server").

    ``product`` names what it was sending ("reply", "audio"). Codes: ``refused``,
    ``timeout``, ``malformed``, ``disconnected``.
    """
    the = f"The {service}"
    if isinstance(exc, httpx.ConnectTimeout):
        return "refused", (
            f"Could not connect to the {service} at {server}: "
            f"no answer within {connect_timeout:g} s."
        )
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError | httpx.UnsupportedProtocol):
        return "refused", f"Could not connect to the {service} at {server}: {connect_failure(exc)}."
    if isinstance(exc, httpx.ReadTimeout):
        return "timeout", silence_reason(service=service, seconds=read_timeout)
    if isinstance(exc, httpx.WriteTimeout):
        return "timeout", f"{the} did not take the request within {connect_timeout:g} s."
    if isinstance(exc, httpx.PoolTimeout):
        return "timeout", f"Too many replies are waiting for the {service}."
    if isinstance(exc, httpx.DecodingError):
        article = "a reply" if product == "reply" else product
        return "malformed", f"{the} sent {article} that could not be decoded."
    return "disconnected", disconnect_reason(service=service, product=product)


def silence_reason(*, service: str, seconds: float) -> str:
    return f"The {service} sent nothing for {seconds:g} s."


def disconnect_reason(*, service: str, product: str) -> str:
    return f"The {service} closed the connection before the {product} was complete."


def websocket_failure(
    exc: BaseException,
    *,
    service: str,
    server: str,
    connect_timeout: float,
    auth_hint: str = "",
    read_message: Callable[[str], str] = error_message_from_body,
) -> tuple[str, str]:
    """(code, reason) for a failure to open a WebSocket to ``service``.

    ``exc`` is what ``websockets.asyncio.client.connect`` (inside ``asyncio.timeout``)
    raised: a refused handshake (``InvalidStatus``, with the server's own message from
    its body as ``read_message`` finds it, and ``auth_hint`` on a 401 or 403), another
    bad handshake, a timeout, a socket error, or the connection closed at once. Codes:
    ``upstream_status``, ``refused``, ``disconnected``.
    """
    could_not = f"Could not connect to the {service} at {server}"
    if isinstance(exc, InvalidStatus):
        response = exc.response
        body = response.body.decode("utf-8", "replace") if response.body else ""
        reason = status_reason(
            response.status_code,
            response.reason_phrase,
            read_message(body) if body.strip() else "",
            service=service,
            auth_hint=auth_hint,
        )
        return "upstream_status", reason
    if isinstance(exc, TimeoutError):
        return "refused", f"{could_not}: no answer within {connect_timeout:g} s."
    if isinstance(exc, InvalidHandshake | InvalidURI):
        return "refused", f"{could_not}: {clip(str(exc)) or type(exc).__name__}."
    if isinstance(exc, ConnectionClosed):
        return "disconnected", f"The {service} closed the connection at once."
    return "refused", f"{could_not}: {connect_failure(exc)}."


def http_base_url(value: str, *, setting: str) -> str:
    """``value`` (a setting named ``setting``) as an http(s) base URL without a trailing
    slash; ValueError naming the setting when it is not one (a deployment mistake, found
    at start, not at the first request)."""
    try:
        url = httpx.URL(value.strip())
    except httpx.InvalidURL as exc:
        raise ValueError(f"{setting} is not a URL: {value!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{setting} must be an http(s) URL, not {value!r}")
    return str(url).rstrip("/")


def server_of(url: str) -> str:
    """Scheme, host and port of ``url`` for an error message: never a key, query or path."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "the configured URL"
    netloc = parsed.netloc.decode("ascii", "replace").rpartition("@")[2]
    return f"{parsed.scheme}://{netloc}"


class LoopClient:
    """One ``httpx.AsyncClient`` for an upstream service, made in the running event loop.

    A client's pooled sockets belong to the loop that opened them; used from another loop
    (a test suite with a loop per test) it starts afresh rather than touch sockets of a
    loop that may be closed. Timeouts: ``read`` is the longest silence between two bytes,
    including the wait for the response headers; writing the request and waiting for a
    pooled connection are as quick as connecting.
    """

    def __init__(
        self,
        *,
        headers: dict[str, str],
        api_key: str | None,
        connect_timeout: float,
        read_timeout: float,
        max_keepalive: int,
    ) -> None:
        self.headers = {"User-Agent": "parley", **headers}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=connect_timeout
        )
        self.limits = httpx.Limits(
            max_connections=None,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        )
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._loop is not loop:
            self._client = httpx.AsyncClient(
                headers=self.headers, timeout=self.timeout, limits=self.limits
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.aclose()
