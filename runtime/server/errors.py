"""HTTP errors: typed exceptions mapped to status codes once, in one table, and written as OpenAI error bodies."""

from __future__ import annotations

from exaone_edge.errors import ExaoneEdgeError, ImageRejected, InputError, PromptTooLong
from exaone_edge.runtime.scheduler import DecoderDied
from exaone_edge.runtime.server.prepare import DeadlineExceeded
from exaone_edge.runtime.server.schemas import ErrorBody, ErrorDetail


class InvalidRequest(InputError):
    """The body is not JSON or does not match the request schema; `param` names the offending field."""

    def __init__(self, what: str, *, param: str | None = None) -> None:
        super().__init__(what)
        self.param = param


class UnsupportedParameter(InvalidRequest):
    """A request field this server does not implement (refused by name rather than ignored)."""


class Unsupported(InputError):
    """A valid OpenAI feature this server does not implement."""


class ModelNotFound(InputError):
    """The request names a model this server does not serve."""


class AuthenticationFailed(ExaoneEdgeError):
    """Missing or wrong API key."""


class NotAllowed(ExaoneEdgeError):
    """A local path outside the allowed directories, or a remote URL while fetching is off."""


class UnsupportedMediaType(InputError):
    """The body is not sent as application/json."""


class HostNotAllowed(NotAllowed):
    """Without an API key, a Host header that is not an IP literal, localhost, or allowed (DNS rebinding)."""


class OriginNotAllowed(NotAllowed):
    """Without an API key, a browser Origin that is neither the server's own nor allowed (cross-site)."""


class ServerStopped(ExaoneEdgeError):
    """`serve` ended because the engine failed; a supervisor should start it again."""

    exit_code = 1


class BodyTooLarge(InputError):
    """The request body exceeds the configured limit."""


class BodyTimeout(InputError):
    """The client did not send its whole body in time."""


class QueueFull(ExaoneEdgeError):
    """Every queue slot is taken; the client should retry later."""


class ClientGone(Exception):
    """The client disconnected; nothing is sent back."""


# status, OpenAI error type, code. Looked up along the exception's MRO, so the most specific class wins.
HTTP_ERRORS: dict[type[BaseException], tuple[int, str, str | None]] = {
    PromptTooLong: (400, "invalid_request_error", "context_length_exceeded"),
    ImageRejected: (400, "invalid_request_error", "invalid_image"),
    UnsupportedParameter: (400, "invalid_request_error", "unsupported_parameter"),
    InvalidRequest: (400, "invalid_request_error", "invalid_request"),
    Unsupported: (400, "invalid_request_error", "unsupported"),
    ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    BodyTooLarge: (413, "invalid_request_error", "request_too_large"),
    BodyTimeout: (408, "invalid_request_error", "request_timeout"),
    InputError: (400, "invalid_request_error", None),
    AuthenticationFailed: (401, "invalid_request_error", "invalid_api_key"),
    NotAllowed: (403, "permission_error", "not_allowed"),
    HostNotAllowed: (403, "permission_error", "host_not_allowed"),
    OriginNotAllowed: (403, "permission_error", "origin_not_allowed"),
    UnsupportedMediaType: (415, "invalid_request_error", "unsupported_media_type"),
    DeadlineExceeded: (408, "invalid_request_error", "input_timeout"),
    DecoderDied: (503, "server_error", "engine_failed"),
    QueueFull: (429, "rate_limit_error", "queue_full"),
}
SERVER_ERROR = (500, "server_error", None)


def error_status(error: BaseException) -> tuple[int, str, str | None]:
    for cls in type(error).__mro__:
        if cls in HTTP_ERRORS:
            return HTTP_ERRORS[cls]
    return SERVER_ERROR


def error_body(error: BaseException) -> tuple[int, dict]:
    status, kind, code = error_status(error)
    if status == 500:
        message = "internal server error"  # details go to the server log, not to the client
    else:
        message = str(error)
    detail = ErrorDetail(message=message, type=kind, param=getattr(error, "param", None), code=code)
    return status, ErrorBody(error=detail).model_dump()
