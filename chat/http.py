"""Helpers shared by the JSON views: body parsing, error responses, auth checks."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from chat.errors import (
    BadJson,
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ParleyError,
    RateLimited,
    TooLong,
    Unauthorized,
)


def error_response(exc: ParleyError) -> JsonResponse:
    body: dict[str, Any] = {"code": exc.code, "detail": exc.detail}
    response = JsonResponse(body, status=exc.status)
    if isinstance(exc, RateLimited):
        body["retry_after"] = exc.retry_after
        response = JsonResponse(body, status=exc.status)
        response["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response


def read_json(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object body; an empty body is an empty object."""
    length = request.headers.get("Content-Length")
    limit = settings.PARLEY_MAX_BODY_BYTES
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise TooLong(f"request body is over {limit} bytes")
    raw = request.body
    if len(raw) > limit:
        raise TooLong(f"request body is over {limit} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: "[[[[..." nested deeper than the parser's stack, within the limit.
        raise BadJson("request body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def query_int(request: HttpRequest, name: str, *, minimum: int = 0) -> int | None:
    value = request.GET.get(name)
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18 or int(value) < minimum:
        raise BadRequest(f"{name} must be an integer >= {minimum}")
    return int(value)


def api(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A JSON API view: signed-in users only, ParleyError becomes its JSON error."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            if not request.user.is_authenticated:
                raise Unauthorized("sign in or send a bearer token")
            return view(request, *args, **kwargs)
        except ParleyError as exc:
            return error_response(exc)

    return wrapper


def async_api(
    view: Callable[..., Awaitable[HttpResponseBase]],
) -> Callable[..., Coroutine[Any, Any, HttpResponseBase]]:
    """``api`` for async views (SSE, waiting sends)."""

    @wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            user = await request.auser()
            if not user.is_authenticated:
                raise Unauthorized("sign in or send a bearer token")
            return await view(request, user, *args, **kwargs)
        except ParleyError as exc:
            return error_response(exc)

    return wrapper


def request_user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF failures as the API's JSON errors (settings.CSRF_FAILURE_VIEW).

    A request with neither session nor token is told to authenticate first; a signed-in
    browser request without the token is told what is missing.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return error_response(Unauthorized("sign in or send a bearer token"))
    return error_response(
        Forbidden("CSRF check failed: send the csrftoken cookie's value as X-CSRFToken")
    )


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 as JSON under /api/ (and in OpenAI's shape under /v1/), Django's page
    elsewhere (urls.handler404)."""
    if request.path.startswith("/api/"):
        return error_response(NotFound("no such endpoint"))
    if request.path.startswith(OPENAI_PREFIX):
        from chat.openai_api.errors import not_found as openai_not_found

        return openai_not_found()
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Exception("not found"))


# Where the OpenAI-compatible API lives (chat/openai_api/): its errors are OpenAI's shape.
OPENAI_PREFIX = "/v1/"


class ApiMethodNotAllowedMiddleware:
    """A 405 under /api/ as the API's JSON error (under /v1/, OpenAI's), with its Allow
    header: Django's
    ``require_http_methods`` answers an empty body, which an API client cannot read (and
    a URL such as ``/api/rooms/./leave``, which clients normalise to ``/api/rooms/leave``,
    reaches a view that does not take its method). Async and sync, so it adds no thread
    hop to the async views."""

    async_capable = True
    sync_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return self._json(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        return self._json(request, await self.get_response(request))

    @staticmethod
    def _json(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        openai = request.path.startswith(OPENAI_PREFIX)
        if response.status_code != 405 or not (openai or request.path.startswith("/api/")):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        allowed = response.get("Allow", "")
        if openai:
            from chat.openai_api.errors import method_not_allowed

            return method_not_allowed(request.method or "", allowed)
        use = allowed or "another method"
        refused = MethodNotAllowed(f"{request.method} is not allowed here; use {use}")
        answer = error_response(refused)
        if allowed:
            answer["Allow"] = allowed
        return answer
