"""One error taxonomy for every part of sdserve.

Each exception's docstring names the HTTP status it maps to; the mapping itself lives in
one place (`http_status_for`) and the JSON body shape in `error_body`, so services and
central render errors identically and central can translate a stage's body back into the
same type (`error_from_body`).
"""

from __future__ import annotations

from typing import Any


class SdserveError(Exception):
    """Base of all domain errors. Unmapped subclasses become 500 without a traceback."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}


class InvalidInput(SdserveError):
    """422: a field of the request is missing, malformed or out of range."""

    status_code = 422
    error_type = "invalid_request_error"


class UnsupportedSize(InvalidInput):
    """422: the requested image size is not one this deployment serves."""

    error_type = "unsupported_size"


class Unauthorized(SdserveError):
    """401: credentials are required and none were sent."""

    status_code = 401
    error_type = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class HostNotAllowed(SdserveError):
    """400: the Host header names no host this part answers (shared.browsers)."""

    status_code = 400
    error_type = "invalid_host"


class Forbidden(SdserveError):
    """403: the credentials sent are wrong, or a web page of another site sent it."""

    status_code = 403
    error_type = "forbidden"


class TooManyRequests(SdserveError):
    """429: this API key already has its allowed number of requests in flight."""

    status_code = 429
    error_type = "rate_limited"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class UnsupportedMediaType(SdserveError):
    """415: the body is not in the media type the route reads."""

    status_code = 415
    error_type = "unsupported_media_type"


class PayloadTooLarge(SdserveError):
    """413: the request body (or a tensor inside it) exceeds the configured cap."""

    status_code = 413
    error_type = "payload_too_large"


class QueueFull(SdserveError):
    """503 with Retry-After: the bounded queue in front of a model is full."""

    status_code = 503
    error_type = "queue_full"

    def __init__(self, message: str, *, retry_after_s: int = 1, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ModelNotReady(SdserveError):
    """503: models are still loading or warming up."""

    status_code = 503
    error_type = "model_not_ready"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class ShuttingDown(SdserveError):
    """503: this process is draining before it exits; another replica should serve."""

    status_code = 503
    error_type = "shutting_down"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1", "Connection": "close"}


class UpstreamUnavailable(SdserveError):
    """503: a stage service cannot be reached (connection refused, DNS, reset)."""

    status_code = 503
    error_type = "upstream_unavailable"


class UpstreamBadResponse(SdserveError):
    """502: a stage service answered with something that is not a valid reply."""

    status_code = 502
    error_type = "upstream_bad_response"


class UpstreamTimeout(SdserveError):
    """504: a stage service did not answer within the configured timeout."""

    status_code = 504
    error_type = "upstream_timeout"


class JobNotFound(SdserveError):
    """404: no job has this id (it never existed, expired, or the gateway restarted)."""

    status_code = 404
    error_type = "not_found"


class JobStoreUnavailable(SdserveError):
    """503 with Retry-After: the job store (Redis) cannot be reached; jobs wait in it."""

    status_code = 503
    error_type = "job_store_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


class ModelNotFound(SdserveError):
    """404: the request names a model this gateway does not serve (see /v1/models)."""

    status_code = 404
    error_type = "model_not_found"


class WeightsError(SdserveError):
    """Start-up only: weights are missing, corrupt or of the wrong shape."""

    error_type = "weights_error"


_BY_TYPE: dict[str, type[SdserveError]] = {
    cls.error_type: cls
    for cls in (
        InvalidInput,
        UnsupportedSize,
        Unauthorized,
        Forbidden,
        TooManyRequests,
        UnsupportedMediaType,
        PayloadTooLarge,
        QueueFull,
        ModelNotReady,
        ShuttingDown,
        UpstreamUnavailable,
        UpstreamBadResponse,
        UpstreamTimeout,
    )
}


def http_status_for(error: SdserveError) -> int:
    """The single mapping from domain errors to HTTP status codes."""
    return error.status_code


def error_body(error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The one JSON error body shape: {"error": {"type", "message", "param"?}}."""
    inner: dict[str, Any] = {"type": error_type, "message": message}
    if param is not None:
        inner["param"] = param
    return {"error": inner}


def error_of_type(error_type: str, message: str, param: str | None = None) -> SdserveError:
    """The domain error of this type again (a job's stored error, raised to its waiter);
    a type no class declares is a 500 that keeps its type."""
    for cls in _all_error_classes():
        if cls.error_type == error_type:
            return cls(message, param=param)
    error = SdserveError(message, param=param)
    error.error_type = error_type
    return error


def _all_error_classes() -> list[type[SdserveError]]:
    found, todo = [], [SdserveError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def error_from_body(status_code: int, body: Any, *, stage: str) -> SdserveError:
    """Rebuild the domain error a stage service sent, naming the stage in the message.

    A stage's 4xx stays a 4xx of the same type (the client's input was wrong); anything a
    stage sends that is not our error shape is a bad upstream response.
    """
    inner = body.get("error") if isinstance(body, dict) else None
    if not isinstance(inner, dict) or not isinstance(inner.get("message"), str):
        return UpstreamBadResponse(
            f"{stage} stage answered HTTP {status_code} without an error body"
        )
    cls = _BY_TYPE.get(str(inner.get("type")))
    message = f"{stage} stage: {inner['message']}"
    param = inner.get("param") if isinstance(inner.get("param"), str) else None
    if cls is None or cls.status_code != status_code:
        if status_code >= 500:
            return UpstreamBadResponse(message)
        return InvalidInput(message, param=param)
    if cls is QueueFull:
        return QueueFull(message, param=param)
    if cls in (
        UpstreamUnavailable,
        UpstreamBadResponse,
        UpstreamTimeout,
        ModelNotReady,
        ShuttingDown,
    ):
        return cls(message)
    return cls(message, param=param)
