"""How a request's work ends early, in one place: its client goes away (499) or it runs past `limits.request_timeout_s`
(504). Cancelling the work cancels what it awaits: the micro-batcher drops the request's queued PRM items, and a
search's event generator sets the search's cancel flag in its `finally`, so the search thread stops after the step
in flight.

- Plain responses: `with_cancellation` races the work against the ASGI `http.disconnect` message (as vLLM's
  `with_cancellation` does: one task waits on `receive()`, nothing polls) and the deadline.
- Streams: Starlette closes the body's generator when the client goes away; `until_deadline` bounds the events.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import AsyncIterator, Awaitable, TypeVar

from fastapi import Request

from server.errors import APIError

T = TypeVar("T")


def _limit(request: Request) -> float:
    return request.app.state.repirl.settings.limits.request_timeout_s


def _timed_out(limit: float) -> APIError:
    return APIError(504, f"the request ran past request_timeout_s ({limit:g} s); its work was cancelled",
                    "request_timeout_s")


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def with_cancellation(request: Request, work: Awaitable[T]) -> T:
    """`await work`, cancelled when the client disconnects (499) or after request_timeout_s (504)."""
    limit = _limit(request)
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if gone in done:
            raise APIError(499, "client disconnected; work cancelled")
        raise _timed_out(limit)
    finally:
        for t in (task, gone):
            t.cancel()


async def until_deadline(request: Request, events: AsyncIterator[T]) -> AsyncIterator[T]:
    """`events` until request_timeout_s from now; then the generator is cancelled (and closed) and 504 is raised,
    which a stream sends as its error event."""
    limit = _limit(request)
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    async with aclosing(events):
        while True:
            try:
                item = await asyncio.wait_for(anext(events), max(0.0, end - loop.time()))
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _timed_out(limit) from None
            yield item
