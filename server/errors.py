"""One mapping from errors to JSON responses `{"error": {"type", "message", "param"}}` (400/401/404/413/422/429/503)."""

from __future__ import annotations

import logging
import re

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
    """(message, param) from pydantic's most specific error (the deepest: a union reports one error per member, the
    member that matched the input's shape goes deepest), param the field's dotted path ("items.0.steps"); for
    malformed JSON the param is the body and the byte offset goes into the message (pydantic puts it in the loc)."""
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    if first.get("type") == "json_invalid":
        pos = next((x for x in first.get("loc", ()) if isinstance(x, int)), None)
        detail = (first.get("ctx") or {}).get("error") or first.get("msg")
        return f"body: invalid JSON{f' at byte {pos}' if pos is not None else ''} ({detail})", "body"
    loc = [str(x) for x in first.get("loc", ()) if x != "body" and not _UNION_MEMBER.search(str(x))]
    return f"{'.'.join(loc) or 'body'}: {first.get('msg')}", ".".join(loc)


# pydantic puts the union member that failed into an error's loc ("candidates.2.function-after[...]",
# "messages.0.content.list[ContentPart]"); our field names are snake_case, so these are easy to drop
_UNION_MEMBER = re.compile(r"^[A-Z]|[\[\-]|^(str|int|float|bool|list|dict|none)$")


def install(app: FastAPI) -> None:
    async def handler(_: Request, exc: Exception):
        return to_response(exc)

    for exc_type in (APIError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, handler)
