"""One authentication path for HTTP, SSE and WebSocket.

Programs send ``Authorization: Bearer <token>``; browsers carry Django's session cookie.
``user_from_bearer`` is the only place a token is checked; the HTTP middleware and the
WebSocket middleware both call it, so the transports cannot disagree on who someone is.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.security.websocket import OriginValidator as _ChannelsOriginValidator
from django.contrib.auth.models import AnonymousUser, User
from django.utils import timezone

from accounts.connections import ConnectionCapMiddleware, HandshakeGateMiddleware
from accounts.models import ApiToken, hash_token

# Writing last_used on every request would make each API call a write; once a minute is
# plenty for "when was this token last seen" in the admin.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class BadCredentials(Exception):
    """An Authorization header was sent but names no active token."""


def bearer_from_header(value: str | None) -> str | None:
    """The raw token of an ``Authorization`` header value, or None when it is not Bearer."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token or len(token) > 200:
        raise BadCredentials("malformed bearer token")
    return token


def user_from_bearer(raw: str) -> User:
    """The active user owning token ``raw``; raises BadCredentials otherwise."""
    user = users_from_bearers([raw]).get(raw)
    if user is None:
        raise BadCredentials("invalid or revoked token")
    return user


def users_from_bearers(raws: list[str]) -> dict[str, User]:
    """The active users owning the tokens ``raws`` (unknown and revoked ones left out), in
    one query and at most one write for the lot."""
    by_hash = {hash_token(raw): raw for raw in raws}
    tokens = ApiToken.objects.select_related("user").filter(
        key_hash__in=list(by_hash), revoked__isnull=True, user__is_active=True
    )
    now = timezone.now()
    found: dict[str, User] = {}
    stale = []
    for token in tokens:
        if token.last_used is None or now - token.last_used > LAST_USED_RESOLUTION:
            stale.append(token.pk)
        # Open connections re-check their token by id while they last (chat/events/).
        token.user.api_token_id = token.pk  # type: ignore[attr-defined]
        found[by_hash[token.key_hash]] = token.user
    if stale:
        ApiToken.objects.filter(pk__in=stale).update(last_used=now)
    return found


class TokenBatcher:
    """Token checks of concurrent handshakes share one query (a DataLoader).

    The first check starts a lookup; checks arriving while it runs wait for the next one,
    which takes them all. One handshake alone costs what it did (one thread hop); a
    reconnect storm of thousands costs a few dozen queries instead of thousands of
    queries and writes serialized on the one database thread.
    """

    def __init__(self) -> None:
        self.pending: dict[str, list[asyncio.Future[User | None]]] = {}
        self.running = False
        self.task: asyncio.Task[None] | None = None

    async def user_for(self, raw: str) -> User | None:
        future: asyncio.Future[User | None] = asyncio.get_running_loop().create_future()
        self.pending.setdefault(raw, []).append(future)
        if not self.running:
            self.running = True
            self.task = asyncio.create_task(self._run(), name="token-batch")
        return await future

    async def _run(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, {}
                try:
                    found = await sync_to_async(users_from_bearers)(list(batch))
                except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for raw, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(found.get(raw))
        finally:
            self.running = False


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TokenBatcher] = (
    weakref.WeakKeyDictionary()
)


async def user_from_bearer_async(raw: str) -> User | None:
    """``user_from_bearer`` for async code, batched with concurrent checks; None when the
    token is unknown, revoked or its user inactive."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = TokenBatcher()
    return await batcher.user_for(raw)


def token_id_of(user: Any) -> int | None:
    """The id of the API token that authenticated ``user`` (None for a session)."""
    value = getattr(user, "api_token_id", None)
    return value if isinstance(value, int) else None


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BearerTokenAuthMiddleware:
    """ASGI middleware for WebSocket: a bearer token in the handshake sets ``scope['user']``.

    A handshake with the header skips the session stack altogether (one thread hop for the
    token, none for an empty session); one without it goes through Channels'
    AuthMiddlewareStack for the session user. A header with a bad token leaves the
    connection anonymous; the consumer then closes with 4401 (docs/protocol.md "WebSocket").
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session_stack = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        try:
            raw = bearer_from_header(_header(scope.get("headers", []), b"authorization"))
        except BadCredentials:
            return await self.inner({**scope, "user": AnonymousUser()}, receive, send)
        if raw is None:
            return await self.session_stack(scope, receive, send)
        user = await user_from_bearer_async(raw)
        return await self.inner({**scope, "user": user or AnonymousUser()}, receive, send)


def AuthStack(inner: Any) -> Any:  # noqa: N802 - named like Channels' AuthMiddlewareStack
    """Who is connecting (bearer token, else the session), then their connection cap; a
    bounded number of handshakes at a time (accounts/connections.py)."""
    return HandshakeGateMiddleware(BearerTokenAuthMiddleware(ConnectionCapMiddleware(inner)))


class OriginValidator(_ChannelsOriginValidator):
    """Check a WebSocket handshake's Origin against ``ALLOWED_HOSTS``.

    Browsers always send Origin, so a cross-site page cannot ride a user's session cookie
    into a room. Programs (bearer tokens, scripts) usually send none: a missing Origin
    carries no ambient browser credentials and is let through, where Channels' stock
    validator would refuse it.
    """

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))


def AllowedHostsOriginValidator(inner: Any) -> OriginValidator:  # noqa: N802
    from django.conf import settings

    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return OriginValidator(inner, allowed_hosts)
