"""The error codes of docs/protocol.md "WebSocket", shared by every transport.

Services raise these; the WebSocket consumer turns them into ``error`` frames, the HTTP
views into JSON bodies with the status below.
"""

from __future__ import annotations


class ParleyError(Exception):
    code = "bad_request"
    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ParleyError):
    code = "bad_request"
    status = 400


class BadJson(ParleyError):
    code = "bad_json"
    status = 400


class TooLong(ParleyError):
    code = "too_long"
    status = 413


class Unauthorized(ParleyError):
    code = "unauthorized"
    status = 401


class Forbidden(ParleyError):
    code = "forbidden"
    status = 403


class NotFound(ParleyError):
    code = "not_found"
    status = 404


class MethodNotAllowed(ParleyError):
    code = "method_not_allowed"
    status = 405


class NotGenerating(ParleyError):
    code = "not_generating"
    status = 409


class Conflict(ParleyError):
    code = "conflict"
    status = 409


class RateLimited(ParleyError):
    code = "rate_limited"
    status = 429

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Busy(ParleyError):
    code = "busy"
    status = 503


class TooManyConnections(ParleyError):
    """The user already holds PARLEY_MAX_CONNECTIONS_PER_USER connections here.

    (accounts/connections.py)
    """

    code = "too_many_connections"
    status = 429


class SpeechTooLong(ParleyError):
    """An utterance past PARLEY_SPEECH_MAX_SECONDS or PARLEY_SPEECH_MAX_BYTES."""

    code = "speech_too_long"
    status = 413


class NoSpeech(ParleyError):
    """The utterance held no words the speech-to-text engine could make out."""

    code = "no_speech"
    status = 422


class SpeechFailed(ParleyError):
    """The speech-to-text engine failed (its reason is the detail)."""

    code = "speech_failed"
    status = 502
