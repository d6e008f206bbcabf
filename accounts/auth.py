"""One authentication path for HTTP, SSE and WebSocket.

Programs send ``Authorization: Bearer <token>``; browsers carry Django's session cookie.
``user_from_bearer`` is the only place a token is checked; the HTTP middleware and the
WebSocket middleware both call it, so the transports cannot disagree on who someone is.
"""

from __future__ import annotations

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
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_token(raw), revoked__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        raise BadCredentials("invalid or revoked token")
    now = timezone.now()
    if token.last_used is None or now - token.last_used > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)
    return token.user


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BearerTokenAuthMiddleware:
    """ASGI middleware for WebSocket: a bearer token in the handshake sets ``scope['user']``.

    Runs inside Channels' AuthMiddlewareStack, so a request without the header keeps the
    session user. A header with a bad token leaves the connection anonymous; the consumer
    then closes with 4401 (PROTOCOL.md section 5).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        try:
            raw = bearer_from_header(_header(scope.get("headers", []), b"authorization"))
            if raw is not None:
                scope = {**scope, "user": await sync_to_async(user_from_bearer)(raw)}
        except BadCredentials:
            scope = {**scope, "user": AnonymousUser()}
        return await self.inner(scope, receive, send)


def AuthStack(inner: Any) -> Any:  # noqa: N802 - named like Channels' AuthMiddlewareStack
    """Who is connecting (session or bearer token), then their connection cap; a bounded
    number of handshakes at a time (accounts/connections.py)."""
    return HandshakeGateMiddleware(
        AuthMiddlewareStack(BearerTokenAuthMiddleware(ConnectionCapMiddleware(inner)))
    )


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
