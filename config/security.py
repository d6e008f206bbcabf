"""The Content-Security-Policy header of every HTML page (README, "Security headers").

The policy is one fixed string (``PARLEY_CSP`` in config/settings.py): scripts and styles
only from this origin, no inline script, no ``eval``, nothing framed, no plugins. The pages
can hold to it because their code is static files (chat/pages.py).

Our own middleware rather than django-csp: Django 5.2 has none of its own (6.0 adds one),
the policy needs no nonce, and django-csp's ``MiddlewareMixin`` would run as a sync
middleware, a thread hop on every request under ASGI, SSE and long polls included. This
one is a header set on the way out, in the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

HEADER = "Content-Security-Policy"


class ContentSecurityPolicyMiddleware:
    async_capable = True
    sync_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase]
        | Callable[[HttpRequest], Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.policy: str = settings.PARLEY_CSP
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        return self._add(response)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        assert not isinstance(response, HttpResponseBase)
        return self._add(await response)

    def _add(self, response: HttpResponseBase) -> HttpResponseBase:
        # Only documents run scripts; JSON, event streams and files need no policy.
        if self.policy and response.get("Content-Type", "").startswith("text/html"):
            response.headers.setdefault(HEADER, self.policy)
        return response
