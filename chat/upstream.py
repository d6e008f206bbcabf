"""Talking to upstream HTTP services (the model server, the speech server) over httpx.

What every such client needs to turn a failure into a reason a room member can read:
the server's own error message from its body, why a connection failed, and what each
httpx error means. The model backend and the speech engine wrap the result in their own
exception types (``LLMError``, ``TTSError``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from typing import Any

import httpx

# How long an idle keep-alive connection is kept: shorter than the idle timeouts of common
# servers and load balancers (60 s and up), so a pooled connection is rarely found dead.
KEEPALIVE_EXPIRY = 30.0

# What of a server's own error message a room member sees: enough for "model not found" or
# "Incorrect API key provided: sk-...", short enough for one line in the chat.
MAX_REASON_CHARS = 300


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
    """``{"error": {"message"}}`` (OpenAI, vLLM), ``{"error": "..."}`` (Ollama), and kin."""
    error = payload.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message.strip():
            return clip(message)
    if isinstance(error, str) and error.strip():
        return clip(error)
    for key in ("message", "detail"):
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


async def status_failure(resp: httpx.Response, *, service: str, limit: int) -> str:
    """The reason for a non-2xx answer: its status and the server's own message."""
    body = await read_capped(resp, limit)
    status = f"HTTP {resp.status_code}"
    if resp.reason_phrase:
        status += f" {resp.reason_phrase}"
    message = error_message_from_body(body)
    reason = f"The {service} answered {status}"
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
        return "timeout", f"{the} sent nothing for {read_timeout:g} s."
    if isinstance(exc, httpx.WriteTimeout):
        return "timeout", f"{the} did not take the request within {connect_timeout:g} s."
    if isinstance(exc, httpx.PoolTimeout):
        return "timeout", f"Too many replies are waiting for the {service}."
    if isinstance(exc, httpx.DecodingError):
        article = "a reply" if product == "reply" else product
        return "malformed", f"{the} sent {article} that could not be decoded."
    return "disconnected", f"{the} closed the connection before the {product} was complete."


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
