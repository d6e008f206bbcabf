"""Typed errors carrying the wire contract's codes (docs/protocol.md "WebSocket").

Every error the client raises is a :class:`ParleyError`. Its ``str()`` is one sentence a
person can read; ``code`` is the contract's error code (``"rate_limited"``, ...),
``status`` the HTTP status and ``close_code`` the WebSocket close code when there was one.

============================  ==========================  ========  ==========
class                         contract codes              HTTP      close code
============================  ==========================  ========  ==========
:class:`Unauthorized`         ``unauthorized``            401       4401
:class:`NotMember`            ``forbidden`` (room)        403       4403
:class:`Forbidden`            ``forbidden`` (control)     403
:class:`NotFound`             ``not_found``               404       4404
:class:`BadRequest`           ``bad_request``,            400
                              ``bad_json``,
                              ``unknown_action``
:class:`TooLong`              ``too_long``                413       1009
:class:`NotGenerating`        ``not_generating``          409
:class:`Conflict`             ``conflict``                409
:class:`RateLimited`          ``rate_limited``            429       4429
:class:`SlowReader`                                                 4408
:class:`ServerError`          ``internal``, ``busy``,     5xx
                              ``timeout``
:class:`Unreachable`          (no answer at all)
:class:`ConnectionLost`       (the connection dropped)
============================  ==========================  ========  ==========

:class:`SlowReader` and :class:`ConnectionLost` are what a room session reconnects from by
itself; a program sees them only as the ``reason`` of a
:class:`~parley_client.models.Reconnecting` event.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequest",
    "Conflict",
    "ConnectionLost",
    "Forbidden",
    "NotFound",
    "NotGenerating",
    "NotMember",
    "ParleyError",
    "RateLimited",
    "ServerError",
    "SlowReader",
    "TooLong",
    "Unauthorized",
    "Unreachable",
    "error_from_body",
    "error_from_close",
    "network_reason",
]


class ParleyError(Exception):
    """Base of every error the client raises."""

    #: The contract's error code, or a client-side one (``unreachable``, ``connection_lost``).
    default_code = "error"
    #: What the error means to a person, used when the server gave no detail.
    summary = "the Parley server reported an error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        close_code: int | None = None,
    ) -> None:
        self.detail = detail or self.summary
        self.code = code or self.default_code
        self.status = status
        self.close_code = close_code
        super().__init__(self.detail)

    def __str__(self) -> str:
        return self.detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, code={self.code!r})"


class Unauthorized(ParleyError):
    default_code = "unauthorized"
    summary = "the server did not accept the token (it is wrong or was revoked)"


class Forbidden(ParleyError):
    """Not allowed, e.g. controlling a reply you neither asked for nor own the room of."""

    default_code = "forbidden"
    summary = "you are not allowed to do that"


class NotMember(Forbidden):
    """The room exists and is public, but you have not joined it."""

    summary = "you are not a member of this room (join it first)"


class NotFound(ParleyError):
    default_code = "not_found"
    summary = "no such room or message (private rooms are invisible to non-members)"


class BadRequest(ParleyError):
    default_code = "bad_request"
    summary = "the server could not accept that request"


class TooLong(BadRequest):
    default_code = "too_long"
    summary = "the message is too long"


class NotGenerating(ParleyError):
    default_code = "not_generating"
    summary = "that reply has already ended"


class Conflict(ParleyError):
    default_code = "conflict"
    summary = "the request conflicts with the current state"


class RateLimited(ParleyError):
    """Too many sends (or connections); ``retry_after`` says how many seconds to wait."""

    default_code = "rate_limited"
    summary = "too many requests; slow down"

    def __init__(self, detail: str | None = None, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.detail} (retry in {self.retry_after:g} s)"


class SlowReader(ParleyError):
    """The server cut the connection because we read too slowly (close code 4408)."""

    default_code = "slow_reader"
    summary = "the server cut the connection because we read too slowly"


class ServerError(ParleyError):
    """The server failed (5xx, ``internal``), is busy, or timed out; trying later may help."""

    default_code = "internal"
    summary = "the server failed to handle the request"


class Unreachable(ParleyError):
    """No answer from the server at all: refused, timed out, name not resolved."""

    default_code = "unreachable"
    summary = "cannot reach the Parley server"


class ConnectionLost(ParleyError):
    """An open connection dropped (network, server restart)."""

    default_code = "connection_lost"
    summary = "the connection to the server was lost"


def network_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: the innermost OS error's, if any.

    httpx wraps a refused connection as "All connection attempts failed"; the errno in
    its cause chain says what happened.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


_BY_CODE: dict[str, type[ParleyError]] = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "bad_request": BadRequest,
    "bad_json": BadRequest,
    "unknown_action": BadRequest,
    "too_long": TooLong,
    "not_generating": NotGenerating,
    "conflict": Conflict,
    "rate_limited": RateLimited,
    "busy": ServerError,
    "internal": ServerError,
    "timeout": ServerError,
}

_BY_STATUS: dict[int, type[ParleyError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLong,
    429: RateLimited,
}


def error_from_body(
    body: Any, *, status: int | None = None, room_scope: bool = False
) -> ParleyError:
    """The typed error for an ``error`` frame or an HTTP JSON error body.

    ``room_scope``: the request was about a room (connect, read, send), where ``forbidden``
    means "not a member".
    """
    code = detail = None
    retry_after: float | None = None
    if isinstance(body, dict):
        code = body.get("code") if isinstance(body.get("code"), str) else None
        detail = body.get("detail") if isinstance(body.get("detail"), str) else None
        raw_retry = body.get("retry_after")
        if isinstance(raw_retry, int | float) and not isinstance(raw_retry, bool):
            retry_after = float(raw_retry)
    cls: type[ParleyError] | None = _BY_CODE.get(code) if code else None
    if cls is None and status is not None:
        cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ParleyError)
    cls = cls or ParleyError
    if cls is Forbidden and room_scope:
        cls = NotMember
    if detail is None and status is not None:
        detail = f"{cls.summary} (HTTP {status})"
    if cls is RateLimited:
        return RateLimited(detail, retry_after=retry_after or 1.0, code=code, status=status)
    return cls(detail, code=code, status=status)


_BY_CLOSE: dict[int, tuple[type[ParleyError], str]] = {
    4401: (Unauthorized, Unauthorized.summary),
    4403: (NotMember, NotMember.summary),
    4404: (NotFound, "no such room (private rooms are invisible to non-members)"),
    4408: (SlowReader, SlowReader.summary),
    4429: (RateLimited, "too many connections to this room; try again later"),
    1009: (TooLong, "a frame was over the server's size limit"),
}

#: Close codes after which reconnecting cannot help.
FATAL_CLOSE_CODES = frozenset({4401, 4403, 4404, 1009})


def error_from_close(code: int | None, reason: str = "") -> ParleyError:
    """The typed error for a WebSocket close code."""
    if code in _BY_CLOSE:
        assert code is not None
        cls, summary = _BY_CLOSE[code]
        return cls(summary, close_code=code)
    detail = ConnectionLost.summary
    if code is not None:
        detail += f" (close code {code}{': ' + reason if reason else ''})"
    return ConnectionLost(detail, close_code=code)
