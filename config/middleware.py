"""Django's own middleware, with the hooks that do no I/O run in the event loop.

Under ASGI, Django runs every hook of a ``MiddlewareMixin`` middleware through
``sync_to_async``: one hop to the request's thread and back per hook, thirteen for every
request through security, session, common, auth, CSRF, messages and clickjacking, before
a view has read anything. Measured on this project (docs/benchmarks.md "The
OpenAI-compatible API's first chunk"): a ``GET /healthz`` took 4.3 ms through them and
1.9 ms through none; an SSE stream, a long poll, every ``/api/`` and ``/v1/`` request paid
it.

Almost all of those hooks read the request and set headers, which is as safe in the loop
as anything else an async view does. The subclasses below run those in the loop and keep
a hop for the few cases that touch the database or a file:

- a session that was modified (or ``SESSION_SAVE_EVERY_REQUEST``): its save;
- messages that were read or added: their store may load the session;
- CSRF's view check of a request it enforces: it may parse the body (a form post, an
  upload spooled to disk). The requests it does not enforce (safe methods, a bearer token,
  ``csrf_exempt`` views) are decided from headers alone.

Subclasses rather than our own middleware: Django's classes keep their behaviour and
their settings, and the admin's checks, which look for these classes, still find them.
Django 5.2 has no switch for this (its ``MiddlewareMixin`` always hops).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, security

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


class _InLoop:
    """``MiddlewareMixin.__acall__`` without the hops: the hooks run where the request is.
    A subclass whose hook may do I/O in some requests says so in ``_hop_response``."""

    get_response: Any

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        before = getattr(self, "process_request", None)
        if before is not None:
            response = before(request)
        response = response or await self.get_response(request)
        after = getattr(self, "process_response", None)
        if after is not None:
            if self._hop_response(request):
                hop = sync_to_async(after, thread_sensitive=True)
                return await hop(request, response)
            response = after(request, response)
        return response

    def _hop_response(self, request: HttpRequest) -> bool:
        return False


class SecurityMiddleware(_InLoop, security.SecurityMiddleware):
    pass


class CommonMiddleware(_InLoop, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(_InLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class AuthenticationMiddleware(_InLoop, auth.AuthenticationMiddleware):
    """Its hook only sets a lazy ``request.user``; reading it is the view's hop."""


class SessionMiddleware(_InLoop, sessions.SessionMiddleware):
    """The store is opened lazily; only a save (a modified session) does I/O."""

    def _hop_response(self, request: HttpRequest) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(_InLoop, messages.MessageMiddleware):
    """Storing messages (some were read or added) may load the session."""

    def _hop_response(self, request: HttpRequest) -> bool:
        store = getattr(request, "_messages", None)
        return store is not None and bool(store.used or store.added_new)


class CsrfViewMiddleware(_InLoop, csrf.CsrfViewMiddleware):
    """Request and response hooks read and set the cookie. Under ASGI the view check runs
    in the loop when it decides from headers alone (``CSRF_USE_SESSIONS`` off, which is
    this project's setting), else on the request's thread, as Django runs it; under a
    sync handler (Django's test client) it is Django's own."""

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        if iscoroutinefunction(get_response):
            # The handler reads ``process_view`` once, after this, and awaits it as is.
            setattr(self, "process_view", self._process_view_async)  # noqa: B010

    async def _process_view_async(
        self,
        request: HttpRequest,
        callback: Callable[..., Any],
        callback_args: tuple[Any, ...],
        callback_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        check = super().process_view
        if _csrf_from_headers(request, callback):
            return check(request, callback, callback_args, callback_kwargs)
        return await sync_to_async(check, thread_sensitive=True)(
            request, callback, callback_args, callback_kwargs
        )


def _csrf_from_headers(request: HttpRequest, callback: Callable[..., Any]) -> bool:
    if settings.CSRF_USE_SESSIONS:
        return False
    return (
        request.method in SAFE_METHODS
        or getattr(request, "_dont_enforce_csrf_checks", False)
        or getattr(callback, "csrf_exempt", False)
    )
