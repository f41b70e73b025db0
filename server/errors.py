"""One mapping from errors to JSON responses `{"error": {"type", "message", "param"}}` (400/401/404/413/422/429/503)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("repirl.server")

_TYPES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          413: "limit_exceeded", 422: "validation_error", 429: "queue_full", 499: "client_closed",
          500: "internal_error", 503: "unavailable", 504: "timeout"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


class LimitExceeded(APIError):
    def __init__(self, param: str, value: int, limit: int, what: str):
        super().__init__(413, f"{param}: {value} {what} exceeds the limit of {limit}", param)


class QueueFull(APIError):
    def __init__(self, retry_after_s: int = 1):
        super().__init__(429, "the scoring queue is full; retry later", None, {"Retry-After": str(retry_after_s)})


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"type": _TYPES.get(status, "error"), "message": message, "param": param}}


def to_response(exc: Exception) -> JSONResponse:
    """The one mapper: every error the service returns goes through here."""
    if isinstance(exc, APIError):
        status, message, param, headers = exc.status, exc.message, exc.param, exc.headers
    elif isinstance(exc, RequestValidationError):
        first = exc.errors()[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        status, message, param, headers = 422, f"{'.'.join(loc) or 'body'}: {first.get('msg')}", ".".join(loc), {}
    elif isinstance(exc, StarletteHTTPException):
        status, message, param, headers = exc.status_code, str(exc.detail), None, dict(exc.headers or {})
    else:
        log.exception("unhandled error", exc_info=exc)
        status, message, param, headers = 500, "internal error", None, {}
    return JSONResponse(error_body(status, message, param or None), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    async def handler(_: Request, exc: Exception):
        return to_response(exc)

    for exc_type in (APIError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, handler)
