"""One mapping from errors to JSON responses `{"error": {"type", "message", "param"}}` (400/401/404/413/422/429/503)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from repirl.validation import error_message, field_path, main_error

log = logging.getLogger("repirl.server")

_TYPES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          413: "limit_exceeded", 422: "validation_error", 429: "queue_full", 499: "client_closed",
          500: "internal_error", 503: "unavailable", 504: "timeout"}


class ErrorDetail(BaseModel):
    type: str = Field(description="one per status: " + ", ".join(f"{k} {v}" for k, v in sorted(_TYPES.items())))
    message: str
    param: str | None = Field(description="the request field at fault (dotted path), when there is one")


class ErrorResponse(BaseModel):
    """Every error the service answers (server/errors.py `to_response`)."""

    error: ErrorDetail


_WHY = {400: "malformed request (invalid JSON, a request the PRM cannot serve)", 401: "missing or invalid API key",
        404: "no such model or policy", 413: "over a limit (body size, items, steps, tokens, context): names the field",
        422: "invalid field (names it)", 429: "queue or search budget full (Retry-After)",
        499: "the client disconnected; its work was cancelled", 503: "unavailable (no policy, engine dead, draining)",
        504: "ran past request_timeout_s"}


def sse_event(event: str | None, data_schema: dict | None) -> dict:
    """The OpenAPI (3.1, one event per `schema`) shape of one server-sent event whose `data` is JSON matching
    `data_schema` (a `$ref` to a component, or a schema), or exactly the text `data_schema["const"]`."""
    if data_schema is not None and "const" in data_schema:
        data = {"type": "string", "const": data_schema["const"]}
    else:
        data = {"type": "string", "contentMediaType": "application/json", **({"contentSchema": data_schema}
                                                                             if data_schema else {})}
    props = {"data": data, **({"event": {"type": "string", "const": event}} if event else {})}
    return {"type": "object", "required": ["data"], "properties": props}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def responses(*statuses: int) -> dict:
    """FastAPI `responses=` for the errors a route answers, all with the one error body."""
    return {s: {"model": ErrorResponse, "description": _WHY[s]} for s in statuses}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


class LimitExceeded(APIError):
    """`at_least`: `value` is where counting stopped, past the limit (the service does not count a refused
    trajectory to its end: that would cost the whole request's tokenizing)."""

    def __init__(self, param: str, value: int, limit: int, what: str, at_least: bool = False):
        super().__init__(413, f"{param}: {'at least ' if at_least else ''}{value} {what} exceeds the limit of {limit}",
                         param)


class QueueFull(APIError):
    def __init__(self, retry_after_s: int = 1, message: str = "the scoring queue is full; retry later"):
        super().__init__(429, message, None, {"Retry-After": str(retry_after_s)})


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in (server/middleware.py). A Starlette HTTPException because FastAPI re-raises
    those from its body reading (any other error there became a 400 "error parsing the body")."""

    def __init__(self, size: int, limit: int):
        super().__init__(413, f"body: {size} bytes exceeds the limit of {limit}")
        self.param = "body"


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"type": _TYPES.get(status, "error"), "message": message, "param": param}}


def to_response(exc: Exception) -> JSONResponse:
    """The one mapper: every error the service returns goes through here."""
    if isinstance(exc, APIError):
        status, message, param, headers = exc.status, exc.message, exc.param, exc.headers
    elif isinstance(exc, RequestValidationError):
        status, message, param, headers = 422, *_validation_message(exc.errors()), {}
    elif isinstance(exc, StarletteHTTPException):
        status, message, headers = exc.status_code, str(exc.detail), dict(exc.headers or {})
        param = getattr(exc, "param", None)  # BodyTooLarge names the body
    else:
        log.exception("unhandled error", exc_info=exc)
        status, message, param, headers = 500, "internal error", None, {}
    return JSONResponse(error_body(status, message, param or None), status_code=status, headers=headers)


def _validation_message(errors) -> tuple[str, str]:
    """(message, param) from pydantic's most specific error (repirl/validation.py), param the field's dotted path
    ("items.0.steps"); for malformed JSON the param is the body and the byte offset goes into the message (pydantic
    puts it in the loc)."""
    first = main_error(errors)
    if first.get("type") == "json_invalid":
        pos = next((x for x in first.get("loc", ()) if isinstance(x, int)), None)
        detail = (first.get("ctx") or {}).get("error") or first.get("msg")
        return f"body: invalid JSON{f' at byte {pos}' if pos is not None else ''} ({detail})", "body"
    param = field_path(first, skip=("body",))
    return f"{param or 'body'}: {error_message(first)}", param


def install(app: FastAPI) -> None:
    async def handler(_: Request, exc: Exception):
        return to_response(exc)

    for exc_type in (APIError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, handler)
