"""HTTP side of the shared authentication path (see accounts/auth.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse

from accounts.auth import BadCredentials, bearer_from_header, user_from_bearer_async


class BearerTokenMiddleware:
    """A bearer token sets ``request.user`` and exempts the request from CSRF.

    CSRF protects cookies a browser sends on its own; a bearer token is never sent
    implicitly, so token requests are exempt (docs/protocol.md "Identity"). A token that is
    wrong is answered 401 at once rather than silently falling back to the session.
    """

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(self.get_response):
            markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/metrics":
            # Its bearer is the scrape token (PARLEY_METRICS_TOKEN), no user's: the view
            # checks it (config/metrics.py).
            response: HttpResponse = await self.get_response(request)
            return response
        try:
            raw = bearer_from_header(request.headers.get("Authorization"))
            if raw is not None:
                found = await user_from_bearer_async(raw)
                if found is None:
                    raise BadCredentials("invalid or revoked token")
                user = found
                request.user = user

                async def auser() -> User:
                    return user

                request.auser = auser
                request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
        except BadCredentials as exc:
            if request.path.startswith("/v1/"):
                # The OpenAI-compatible API answers in OpenAI's error shape (its SDKs
                # raise AuthenticationError on it): chat/openai_api/errors.py.
                error = {
                    "message": f"Incorrect API key provided: {exc}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
                return JsonResponse({"error": error}, status=401)
            return JsonResponse({"code": "unauthorized", "detail": str(exc)}, status=401)
        response = await self.get_response(request)
        return response
