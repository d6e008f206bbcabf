"""OpenAI's error shape for everything under /v1/: ``{"error": {"message", "type",
"param", "code"}}`` with the status OpenAI gives, so its SDKs raise their own exception
types (``AuthenticationError``, ``NotFoundError``, ``RateLimitError``, ...).

Parley's services raise ``chat.errors`` exceptions; this module only translates them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponseBase, JsonResponse

from chat.errors import (
    Busy,
    MethodNotAllowed,
    NotFound,
    ParleyError,
    RateLimited,
    TooLong,
    Unauthorized,
)

# Parley's status -> OpenAI's error type (https://platform.openai.com/docs/guides/error-codes).
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class OpenAIError(ParleyError):
    """A refusal of this API alone, naming the request field at fault (``param``) and
    OpenAI's code for it."""

    def __init__(
        self, detail: str, *, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(detail)
        self.param = param
        self.code = code or "invalid_value"
        self.status = status


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def openai_error(exc: ParleyError) -> JsonResponse:
    """``exc`` in OpenAI's shape. A value too long is a bad request there (400), as is
    any other bad body; the rate limit keeps its ``Retry-After``."""
    status = 400 if isinstance(exc, TooLong) else exc.status
    param = getattr(exc, "param", None)
    code: str | None = exc.code
    if isinstance(exc, Unauthorized):
        code = "invalid_api_key"
    elif isinstance(exc, RateLimited):
        code = "rate_limit_exceeded"
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    response = JsonResponse(
        error_body(exc.detail, type=kind, param=param, code=code), status=status
    )
    if isinstance(exc, RateLimited):
        response["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, Busy):
        response["Retry-After"] = "1"
    return response


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        f"The model '{model[:200]}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
        status=404,
    )


def method_not_allowed(method: str, allowed: str) -> JsonResponse:
    use = allowed or "another method"
    answer = openai_error(MethodNotAllowed(f"{method} is not allowed here; use {use}"))
    if allowed:
        answer["Allow"] = allowed
    return answer


def not_found() -> JsonResponse:
    return openai_error(NotFound("Unknown request URL. Please check the URL and method."))


def openai_api(
    view: Callable[..., Awaitable[HttpResponseBase]],
) -> Callable[..., Coroutine[Any, Any, HttpResponseBase]]:
    """An async /v1/ view: bearer token (or session) required; every ``ParleyError``
    becomes OpenAI's error shape. A bad token is refused before the view by
    accounts.middleware.BearerTokenMiddleware, in the same shape."""

    @wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            user = await request.auser()
            if not user.is_authenticated:
                raise Unauthorized(
                    "You didn't provide an API key: send Authorization: Bearer <token>"
                )
            assert isinstance(user, User)
            return await view(request, user, *args, **kwargs)
        except ParleyError as exc:
            return openai_error(exc)

    return wrapper


__all__ = [
    "OpenAIError",
    "error_body",
    "method_not_allowed",
    "model_not_found",
    "not_found",
    "openai_api",
    "openai_error",
]
