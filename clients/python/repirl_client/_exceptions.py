"""The exception tree, shaped like openai-python's: one class per HTTP status under `APIStatusError`, which carries
the service's error body (`{"error": {"type", "message", "param"}}`) and the response's `x-request-id`."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "RepirlError", "APIError", "APIStatusError", "APIConnectionError", "APITimeoutError", "APIResponseValidationError",
    "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
    "RequestTooLargeError", "UnprocessableEntityError", "RateLimitError", "InternalServerError",
]


class RepirlError(Exception):
    """Every error this package raises."""


class APIError(RepirlError):
    message: str
    request: httpx.Request | None
    body: object | None

    def __init__(self, message: str, request: httpx.Request | None = None, *, body: object | None = None):
        super().__init__(message)
        self.message, self.request, self.body = message, request, body


class APIConnectionError(APIError):
    """The request never got an HTTP answer (refused, reset, DNS, TLS, ...)."""

    def __init__(self, *, message: str = "Connection error.", request: httpx.Request | None = None):
        super().__init__(message, request)


class APITimeoutError(APIConnectionError):
    def __init__(self, request: httpx.Request | None = None):
        super().__init__(message="Request timed out.", request=request)


class APIResponseValidationError(APIError):
    """A 2xx response whose body does not fit the expected model."""

    def __init__(self, message: str, response: httpx.Response, *, body: object | None = None):
        super().__init__(message, response.request, body=body)
        self.response = response
        self.status_code = response.status_code
        self.request_id = response.headers.get("x-request-id")


class APIStatusError(APIError):
    """The service answered 4xx/5xx, or a stream delivered an error event (then `status_code` comes from the error
    `type` and `response` is the stream's 200)."""

    status_code: int
    type: str | None  # the service's error type ("limit_exceeded", "validation_error", ...)
    param: str | None  # the request field it names ("items[2].steps", "n", ...)
    request_id: str | None  # the response's x-request-id: quote it when reporting a problem

    def __init__(self, message: str, *, response: httpx.Response, body: object | None, status_code: int | None = None):
        super().__init__(message, response.request, body=body)
        self.response = response
        self.status_code = status_code if status_code is not None else response.status_code
        self.request_id = response.headers.get("x-request-id")
        from pydantic import ValidationError

        from repirl_client.types import ErrorResponse

        try:  # the service's error body; a proxy's HTML page or a bare 502 leaves these None
            self.error = ErrorResponse.model_validate(body).error
        except ValidationError:
            self.error = None
        self.type = self.error.type if self.error else None
        self.param = self.error.param if self.error else None
        self.error_message = self.error.message if self.error else None

    def __str__(self) -> str:
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.message}{rid}"


class BadRequestError(APIStatusError):
    """400"""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403"""


class NotFoundError(APIStatusError):
    """404: unknown model, policy or path."""


class ConflictError(APIStatusError):
    """409"""


class RequestTooLargeError(APIStatusError):
    """413: over a service limit; `param` names the field (items, n, items[3].steps, body, ...)."""


class UnprocessableEntityError(APIStatusError):
    """422: the request does not fit the schema; `param` names the field."""


class RateLimitError(APIStatusError):
    """429: the service's queue or search budget is full (retried by default, honouring Retry-After)."""


class InternalServerError(APIStatusError):
    """>= 500"""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 413: RequestTooLargeError, 422: UnprocessableEntityError, 429: RateLimitError,
}

# the service's error types (server/errors.py) -> status, for errors that arrive inside a 200 stream
STATUS_OF_TYPE = {"invalid_request": 400, "unauthorized": 401, "not_found": 404, "method_not_allowed": 405,
                  "limit_exceeded": 413, "validation_error": 422, "queue_full": 429, "client_closed": 499,
                  "internal_error": 500, "unavailable": 503, "timeout": 504}


def status_error_class(status: int) -> type[APIStatusError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InternalServerError if status >= 500 else APIStatusError


def make_status_error(response: httpx.Response, body: Any, status: int | None = None) -> APIStatusError:
    status = status if status is not None else response.status_code
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        what = f"{err.get('type') or 'error'}: {err['message']}"
    else:
        what = str(body)[:500] if body not in (None, "") else "no body"
    return status_error_class(status)(f"Error code: {status} - {what}", response=response, body=body,
                                      status_code=status)
