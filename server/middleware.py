"""Pure ASGI middleware: request metrics (by route template), the body-size limit (413 before parsing), the
request id every response carries (`x-request-id`) and the write timeout (a client that stops reading)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from server.errors import BodyTooLarge, error_body
from server.text_work import REQUEST_BYTES

log = logging.getLogger("repirl.server")


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes`: by Content-Length up front, and by counting when the body streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_413(send, int(length), self.max_bytes)
        # what its text work costs in the turns of server/text_work.py: a body without a length may be the largest
        REQUEST_BYTES.set(int(length) if length is not None and length.isdigit() else self.max_bytes)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # FastAPI re-raises it from its body reading: the error mapper's 413
                    raise BodyTooLarge(seen, self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:  # raised where no exception handler runs (e.g. a body read outside a route)
            if not started:
                await _send_413(send, seen, self.max_bytes)


async def _send_413(send, size: int, limit: int) -> None:
    body = json.dumps(error_body(413, f"body: {size} bytes exceeds the limit of {limit}", "body")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


# An incoming id is echoed only when it is short and plain (no header or log injection, no unbounded growth).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class RequestIdMiddleware:
    """Every response carries `x-request-id`: the client's `X-Request-Id` when it is sane, else a new `req_<hex>`.
    Outermost of ours, so the body-limit 413s, streams and 500s (sent here, then re-raised) carry it too; the id is
    also in `scope["state"]["request_id"]` for routes and logs."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SANE_REQUEST_ID.fullmatch(given) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # Starlette's outermost error middleware would answer without the id
            if not started:
                from server.errors import to_response

                await to_response(exc)(scope, receive, send_with_id)
            raise


HEALTH_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


class DrainMiddleware:
    """Counts the requests in flight (health routes aside: pollers never hold a drain open) and, once the service
    drains (SIGTERM: server/drain.py), refuses new ones with 503 + `Connection: close` while in-flight ones finish."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            return await self.app(scope, receive, send)
        state = self.state
        if state.draining:
            body = json.dumps(error_body(503, "the service is shutting down (draining); retry on another replica",
                                         None)).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"retry-after", b"1"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        state.in_flight += 1
        state.metrics.requests_in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            state.in_flight -= 1
            state.metrics.requests_in_flight.dec()


class WriteTimeoutMiddleware:
    """A response write that waits more than `timeout_s` for the client to read closes the connection. uvicorn has
    no write timeout: its `send` waits for the transport to drain for as long as the client keeps its receive window
    shut, so a stream whose client never reads held its connection, its buffers and its generator forever.

    Outermost, so `send` is the server's own: uvicorn's (httptools and h11) is a method of its request cycle, which
    holds the transport; `abort()` drops the connection at once (`close()` would wait for the buffer to drain,
    i.e. forever). The app then sees the client as gone (`http.disconnect`) and ends as for a disconnect. Under
    another server the send is only timed out (the message dropped) and the app goes on as for a gone client."""

    def __init__(self, app, timeout_s: float, metrics):
        self.app, self.timeout_s, self.metrics = app, timeout_s, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        closed = False

        async def timed_send(message):
            nonlocal closed
            if closed:
                return
            try:
                async with asyncio.timeout(self.timeout_s):
                    await send(message)
            except TimeoutError:
                closed = True
                self.metrics.write_timeouts.inc()
                log.warning("closed a connection whose client read nothing for %g s (write_timeout_s): %s %s",
                            self.timeout_s, scope.get("method"), scope.get("path"))
                transport = getattr(getattr(send, "__self__", None), "transport", None)
                if transport is not None:
                    transport.abort()

        await self.app(scope, receive, timed_send)
