"""The search machinery both /v1/search (+ /v1/best-of-n) and /v1/chat/completions run on: admission (a search's n x steps x (1 + lookahead) samples against one in-flight
budget), the PRM bridge (the search thread's PRM calls go back to the event loop: prefix cache + micro-batcher), and
`SearchJob` (one search in a worker thread, its events queued back to the loop).

Cancellation reaches the engines (repirl/cancel.py): a job whose client went away or timed out sets its cancel flag;
the search stops after its current step, a vLLM policy aborts its engine requests between engine steps, and the PRM
call in flight is cancelled (its queued items dropped, an engine batch of it alone stopped between forwards).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from contextlib import aclosing
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from repirl.cancel import WorkCancelled, stop_when
from repirl.policy.base import PolicyError
from repirl.scoring.base import StepScores
from repirl.search import SearchCancelled, SearchParams, SearchResult, run_search
from server.api.limits import check_count
from server.cancellation import with_cancellation
from server.deps import AppState, get_runtime
from server.errors import APIError, LimitExceeded, QueueFull
from server.policies import get_policy
from server.runtime import CALLER, TENANT, PRMRuntime

log = logging.getLogger("repirl.server")


def check_search_limits(state: AppState, params: SearchParams, question: str, policy, runtime: PRMRuntime) -> int:
    limits = state.settings.limits
    check_count("question", len(question), limits.max_chars, "characters")
    # the models' own context, known at load time: a question they cannot hold (with room for a step) is the
    # client's 413 here, not a 500 from inside the search
    for what, encoder, context in (("the policy's", policy.encoder, getattr(policy, "context_tokens", None)),
                                   (f"PRM {runtime.name!r}'s", runtime.scorer.encoder, runtime.max_tokens)):
        if context is not None:
            check_count("question", len(encoder.prompt_ids(question)), context - 1, f"tokens ({what} context)")
    check_count("n", params.n, limits.max_candidates, "samples")
    check_count("max_steps", params.max_steps, limits.max_steps, "steps")
    check_count("max_step_tokens", params.max_step_tokens, limits.max_tokens, "tokens")
    cost = params.cost()
    if cost > limits.max_search_samples:
        raise LimitExceeded("n", cost, limits.max_search_samples, "samples (n x max_steps x (1 + lookahead))")
    return cost


def fit_defaults(state: AppState, params: SearchParams, given: set[str]) -> SearchParams:
    """A knob the client did not set never exceeds a limit (explicit values over a limit still get 413)."""
    limits = state.settings.limits
    caps = {"max_steps": limits.max_steps, "max_step_tokens": limits.max_tokens}
    update = {k: min(getattr(params, k), cap) for k, cap in caps.items() if k not in given}
    return params.model_copy(update=update)


class PRMBridge:
    """A synchronous StepScorer for the search thread: each call runs `PRMRuntime.score` on the event loop. The call
    in flight is cancelled with the search (`cancel()`), so a cancelled search leaves no PRM work behind."""

    def __init__(self, runtime: PRMRuntime, loop: asyncio.AbstractEventLoop, tenant: str | None,
                 stopped: threading.Event, caller: str = ""):
        self.runtime, self.loop, self.tenant, self.stopped, self.caller = runtime, loop, tenant, stopped, caller
        self.name, self.revision, self.config = runtime.name, runtime.scorer.revision, runtime.config
        self._in_flight: concurrent.futures.Future | None = None

    def score(self, items):
        items = [(q, list(steps)) for q, steps in items]
        # admitted: the search holds its samples of max_search_samples_in_flight; the scoring queue's 429 would
        # throw its work away mid-search (seen under overload: tests/server/test_overload.py)
        coro = self.runtime.score(items, [f"candidates[{i}]" for i in range(len(items))], tenant=self.tenant,
                                  admitted=True, caller=self.caller)
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop closed (server shutting down under a cancelled search)
            coro.close()
            raise
        self._in_flight = fut
        if self.stopped.is_set():  # cancelled between the check in `cancel()` and this call's start
            fut.cancel()
        try:
            scored = fut.result()
        except concurrent.futures.CancelledError:
            raise SearchCancelled("search cancelled during a PRM call") from None
        finally:
            self._in_flight = None
        return [StepScores(r.scores.step_rewards, r.scores.token_rewards, r.scores.tokens_computed,
                           r.scores.tokens_total, meta={**r.scores.meta, "cache_hits": r.cached_steps})
                for r in scored]

    def cancel(self) -> None:
        """From the event loop, once `stopped` is set: the queued items of the call in flight are dropped."""
        fut = self._in_flight
        if fut is not None:
            fut.cancel()


class SearchJob:
    """One search in a worker thread; events and the outcome come back to the event loop through a queue."""

    def __init__(self, state: AppState, params: SearchParams, question: str, prm: str | None, policy: str | None):
        self.state, self.params, self.question = state, params, question
        self.runtime = get_runtime(state, prm)
        self.runtime.calibration_for(params.aggregate_input)  # 400 before anything runs
        entry = get_policy(state.policies, policy)
        self.policy_name, self.policy = entry.name, entry.engine
        self.cost = check_search_limits(state, params, question, self.policy, self.runtime)
        self.tenant = TENANT.get()  # captured in the request's context: the search thread scores on its behalf
        self.caller = CALLER.get()
        self.cancel = threading.Event()
        self.queue: asyncio.Queue = asyncio.Queue()
        self._admitted = False
        self._working = False  # the worker thread runs: it gives the budget back when it ends
        self._bridge: PRMBridge | None = None

    def admit(self) -> None:
        """Take this search's samples from the in-flight budget, or raise 429. Streaming responses call it before
        the status line goes out, so an over-budget stream gets a real 429 (not an error event after a 200)."""
        if self._admitted:
            return
        limits = self.state.settings.limits
        budget, held = limits.max_search_samples_in_flight, self.state.search_samples_in_flight
        searches = self.state.searches_in_flight
        if searches >= limits.max_searches_in_flight:
            raise QueueFull(message=f"{searches} searches hold the search budget (max_searches_in_flight): "
                                    "retry later")
        if held + self.cost > budget:
            raise QueueFull(message=f"searches in flight hold {held} of {budget} policy samples "
                                    f"(max_search_samples_in_flight); this one needs {self.cost}: retry later")
        self._hold(+1)
        self._admitted = True

    def _hold(self, sign: int) -> None:
        state = self.state
        state.search_samples_in_flight += sign * self.cost
        state.searches_in_flight += sign
        # the gauges count exactly what holds budget (a search whose client left, until its work stops)
        state.metrics.searches_in_flight.set(state.searches_in_flight)
        state.metrics.search_samples_in_flight.set(state.search_samples_in_flight)

    def release(self) -> None:
        """Give the samples back, unless the worker thread runs: then its end gives them back (`_worker_ended`),
        whatever the client or the socket does. Abandoned work holds its budget until it has really stopped, and
        finished work never holds it, even while its stream waits on a client that does not read. Idempotent: the
        stream's generator and its response's background task both call it (a client can vanish before the
        generator ever starts)."""
        if self._admitted and not self._working:
            self._admitted = False
            self._hold(-1)

    def _worker_ended(self, outcome: str) -> None:
        """On the event loop, once the worker thread's work is over (its last event is queued before this)."""
        self._working = False
        self.state.metrics.searches.labels(outcome).inc()
        self.release()

    def stop(self) -> None:
        """Cancel the search: after its current step, inside a vLLM policy's engine, and its PRM call in flight."""
        self.cancel.set()
        if self._bridge is not None:
            self._bridge.cancel()

    async def run(self) -> AsyncIterator[tuple[str, object]]:
        """Yields ("step", SearchEvent) per step, then ("result", SearchResult); raises what the search raised."""
        self.admit()
        loop = asyncio.get_running_loop()
        self._bridge = PRMBridge(self.runtime, loop, self.tenant, self.cancel, self.caller)

        def put(kind: str, obj: object) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, (kind, obj))
            except RuntimeError:  # loop closed: nobody is listening any more (a cancelled search at shutdown)
                pass

        def work():
            outcome = "error"
            try:
                with stop_when(self.cancel.is_set):  # read by the policy engine between its steps
                    result = run_search(self.policy, self._bridge, self.question, self.params,
                                        on_event=lambda e: put("step", e) if e.kind == "step" else None,
                                        should_stop=self.cancel.is_set)
                outcome = "completed"
                put("result", result)
            except BaseException as e:  # noqa: BLE001 - handed to the event loop, re-raised there
                if isinstance(e, WorkCancelled):
                    outcome = "cancelled"
                    if e.units:  # a policy engine call stopped midway (its requests aborted)
                        self.state.metrics.cancelled_work.labels(self.policy_name, e.stage).inc(e.units)
                put("error", e)
            finally:  # the budget comes back now, not when the client or its socket gets round to it
                try:
                    loop.call_soon_threadsafe(self._worker_ended, outcome)
                except RuntimeError:  # loop closed (shutdown): nobody counts any more
                    pass

        thread = threading.Thread(target=work, name="repirl-search", daemon=True)
        self._working = True
        thread.start()
        try:
            while True:
                kind, obj = await self.queue.get()
                if kind == "error" and isinstance(obj, PolicyError):  # the whole story in our log, not the body
                    log.warning("policy %r failed: %s", self.policy_name, obj)
                    raise APIError(503, f"policy: {obj.public}", "policy")
                if kind == "error":
                    raise obj  # type: ignore[misc]
                yield kind, obj
                if kind == "result":
                    return
        finally:
            self.stop()  # no-op after a result; otherwise the search's engine work stops
            self.release()  # a no-op while the worker runs: its end releases


async def run_job(job: SearchJob, request: Request, on_step=None) -> SearchResult:
    """The whole search; a client that disconnects (499) or a search past request_timeout_s (504) cancels it."""

    async def consume() -> SearchResult:
        async with aclosing(job.run()) as events:  # closed at once: its finally stops the job, returns the budget
            async for kind, obj in events:
                if kind == "result":
                    return obj  # type: ignore[return-value]
                if on_step is not None:
                    on_step(obj)
        raise RuntimeError("the search ended without a result")

    try:
        return await with_cancellation(request, consume())
    except WorkCancelled:
        raise APIError(499, "client disconnected; search cancelled") from None


def streaming_response(body: AsyncIterator[str], job: SearchJob) -> StreamingResponse:
    """text/event-stream for an admitted job; the budget comes back even if the body never starts."""
    return StreamingResponse(body, media_type="text/event-stream", background=BackgroundTask(job.release),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
