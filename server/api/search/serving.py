"""Search request logic: resolve PRM + policy, admission (fan-out counted as n x steps), run the library's
`run_search` in a worker thread, bridge its PRM calls back to the PRM runtime (prefix cache + micro-batcher), and
cancel between steps when the client goes away or the request times out (server/cancellation.py).
/v1/chat/completions runs through `run_job` too."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from contextlib import aclosing
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from repirl.policy.base import PolicyError
from repirl.scoring.base import StepScores
from repirl.search import SearchCancelled, SearchParams, SearchResult, run_search
from server.api.limits import check_count
from server.api.score.serving import calibration_for
from server.api.search.protocol import CandidateOut, SearchRequest, SearchResponse
from server.cancellation import until_deadline, with_cancellation
from server.deps import AppState, get_runtime
from server.errors import APIError, LimitExceeded, QueueFull, error_body, to_response
from server.runtime import TENANT, PRMRuntime

log = logging.getLogger("repirl.server")


def load_policies(settings) -> dict:
    """`--policy` as the policy named "policy": a URL (remote server), `vllm:DIR` / `hf:DIR`, or a DIR whose engine
    follows the PRM engine setting (hf -> transformers, vllm -> vLLM, auto -> vLLM when installed)."""
    if not settings.policy:
        return {}
    from repirl.policy import load_policy

    engine = {"hf": "transformers", "vllm": "vllm"}.get(settings.engine, "auto")
    if settings.policy.startswith(("http://", "https://", "vllm:", "hf:")):
        engine = "auto"  # the spec names its engine
    on_vllm = engine == "vllm" or settings.policy.startswith("vllm:")
    kwargs = settings.vllm_engine_kwargs() if on_vllm else {}
    policy = load_policy(settings.policy, engine=engine, **kwargs)
    log.info("loaded policy from %s (%s)", settings.policy, type(policy).__name__)
    return {"policy": policy}


def get_policy(state: AppState, name: str | None):
    policies = state.policies
    if not policies:
        raise APIError(503, "no policy is loaded (start the service with --policy DIR_OR_URL)", "policy")
    if name is None:
        name = next(iter(policies))
    if name not in policies:
        raise APIError(404, f"policy {name!r} is not loaded (loaded: {', '.join(policies)})", "policy")
    return name, _alive(name, policies[name])


def _alive(name: str, policy):
    """The policy, or 503 when its engine has died (vLLM's engine core does not come back: every call would fail)."""
    dead = getattr(policy, "engine_dead", None)
    if dead is not None and dead():
        raise APIError(503, f"policy {name!r}: its engine process died; the service must be restarted", "policy")
    return policy


class _Admission:
    """Samples (n x steps x (1 + lookahead)) of the searches in flight, against one budget: 429 beyond it."""

    def __init__(self):
        self.in_flight = 0


def _admission(state: AppState) -> _Admission:
    return state.__dict__.setdefault("_search_admission", _Admission())  # one per app (tests run several)


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


class PRMBridge:
    """A synchronous StepScorer for the search thread: each call runs `PRMRuntime.score` on the event loop."""

    def __init__(self, runtime: PRMRuntime, loop: asyncio.AbstractEventLoop, tenant: str | None = None):
        self.runtime, self.loop, self.tenant = runtime, loop, tenant
        self.name, self.revision, self.config = runtime.name, runtime.scorer.revision, runtime.config

    def score(self, items):
        items = [(q, list(steps)) for q, steps in items]
        # admitted: the search holds its samples of max_search_samples_in_flight; the scoring queue's 429 would
        # throw its work away mid-search (seen under overload: tests/server/test_overload.py)
        coro = self.runtime.score(items, [f"candidates[{i}]" for i in range(len(items))], tenant=self.tenant,
                                  admitted=True)
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop closed (server shutting down under a cancelled search)
            coro.close()
            raise
        out = []
        for r in fut.result():
            s = r.scores
            out.append(StepScores(s.step_rewards, s.token_rewards, s.tokens_computed, s.tokens_total,
                                  meta={**s.meta, "cache_hits": r.cached_steps}))
        return out


class SearchJob:
    """One search in a worker thread; events and the outcome come back to the event loop through a queue."""

    def __init__(self, state: AppState, params: SearchParams, question: str, prm: str | None, policy: str | None):
        self.state, self.params, self.question = state, params, question
        self.runtime = get_runtime(state, prm)
        calibration_for(self.runtime, params.aggregate_input)  # 400 before anything runs
        self.policy_name, self.policy = get_policy(state, policy)
        self.cost = check_search_limits(state, params, question, self.policy, self.runtime)
        self.tenant = TENANT.get()  # captured in the request's context: the search thread scores on its behalf
        self.cancel = threading.Event()
        self.queue: asyncio.Queue = asyncio.Queue()
        self._admitted = False

    def admit(self) -> None:
        """Take this search's samples from the in-flight budget, or raise 429. Streaming responses call it before
        the status line goes out, so an over-budget stream gets a real 429 (not an error event after a 200)."""
        if self._admitted:
            return
        admission = _admission(self.state)
        budget = self.state.settings.limits.max_search_samples_in_flight
        if admission.in_flight + self.cost > budget:
            raise QueueFull(message=f"searches in flight hold {admission.in_flight} of {budget} policy samples "
                                    f"(max_search_samples_in_flight); this one needs {self.cost}: retry later")
        admission.in_flight += self.cost
        self._admitted = True

    def release(self) -> None:
        """Give the samples back (idempotent: the stream's generator and its response's background task both call
        it, since a client can vanish before the generator ever starts)."""
        if self._admitted:
            self._admitted = False
            _admission(self.state).in_flight -= self.cost

    async def run(self) -> AsyncIterator[tuple[str, object]]:
        """Yields ("step", SearchEvent) per step, then ("result", SearchResult); raises what the search raised."""
        self.admit()
        loop = asyncio.get_running_loop()

        def put(kind: str, obj: object) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, (kind, obj))
            except RuntimeError:  # loop closed: nobody is listening any more (a cancelled search at shutdown)
                pass

        def work():
            metrics, outcome = self.state.metrics, "error"
            metrics.searches_in_flight.inc()  # falls when this thread ends: a cancelled search, after its step
            try:
                result = run_search(self.policy, PRMBridge(self.runtime, loop, self.tenant), self.question, self.params,
                                    on_event=lambda e: put("step", e) if e.kind == "step" else None,
                                    should_stop=self.cancel.is_set)
                outcome = "completed"
                put("result", result)
            except BaseException as e:  # noqa: BLE001 - handed to the event loop, re-raised there
                outcome = "cancelled" if isinstance(e, SearchCancelled) else "error"
                put("error", e)
            finally:
                metrics.searches_in_flight.dec()
                metrics.searches.labels(outcome).inc()

        thread = threading.Thread(target=work, name="repirl-search", daemon=True)
        thread.start()
        try:
            while True:
                kind, obj = await self.queue.get()
                if kind == "error" and isinstance(obj, PolicyError):
                    raise APIError(503, f"policy: {obj}", "policy")
                if kind == "error":
                    raise obj  # type: ignore[misc]
                yield kind, obj
                if kind == "result":
                    return
        finally:
            self.cancel.set()  # no-op after a result; stops the search after its current step otherwise
            self.release()


def to_search_response(job: SearchJob, result: SearchResult, with_candidates: bool) -> SearchResponse:
    best = result.best
    cands = [CandidateOut(id=c.id, steps=c.steps, answer=c.answer, score=c.score, step_rewards=c.step_rewards,
                          p_correct=c.p_correct, finished=c.finished, truncated=c.truncated, logprob=c.logprob)
             for c in result.candidates]
    return SearchResponse(model=job.runtime.name, revision=job.runtime.scorer.revision, policy=job.policy_name,
                          strategy=job.params.strategy, select=job.params.select,
                          aggregation=job.params.aggregation or job.runtime.config.default_aggregation,
                          aggregate_input=job.params.aggregate_input,
                          answer=result.answer, text=result.text, steps=best.steps if best else [],
                          score=best.score if best else None, candidates=cands if with_candidates else None,
                          stats=result.stats.to_dict())


async def run_job(job: SearchJob, request: Request, on_step=None) -> SearchResult:
    """The whole search; a client that disconnects (499) or a search past request_timeout_s (504) cancels it
    within one step."""

    async def consume() -> SearchResult:
        async with aclosing(job.run()) as events:  # closed at once: its finally hands the budget back
            async for kind, obj in events:
                if kind == "result":
                    return obj  # type: ignore[return-value]
                if on_step is not None:
                    on_step(obj)
        raise RuntimeError("the search ended without a result")

    try:
        return await with_cancellation(request, consume())
    except SearchCancelled:
        raise APIError(499, "client disconnected; search cancelled") from None


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def fit_defaults(state: AppState, params: SearchParams, given: set[str]) -> SearchParams:
    """A knob the client did not set never exceeds a limit (explicit values over a limit still get 413)."""
    limits = state.settings.limits
    caps = {"max_steps": limits.max_steps, "max_step_tokens": limits.max_tokens}
    update = {k: min(getattr(params, k), cap) for k, cap in caps.items() if k not in given}
    return params.model_copy(update=update)


async def serve_search(state: AppState, req: SearchRequest, request: Request):
    params = SearchParams.model_validate(req.model_dump(include=set(SearchParams.model_fields)))
    params = fit_defaults(state, params, req.model_fields_set)
    job = SearchJob(state, params, req.question, req.model, req.policy)  # limits checked before anything runs
    if not req.stream:
        result = await run_job(job, request)
        return to_search_response(job, result, req.return_candidates)

    job.admit()  # over the in-flight budget: 429 now, before the 200 of the stream

    async def events():
        try:
            async for kind, obj in until_deadline(request, job.run()):
                if kind == "step":
                    yield _sse("step", obj.to_dict())
                else:
                    yield _sse("result", to_search_response(job, obj, req.return_candidates).model_dump())
        except Exception as e:  # the status line is sent: errors become an `error` event with the usual body
            resp = to_response(e)
            yield _sse("error", json.loads(resp.body) if resp.body else error_body(500, "internal error"))
        finally:  # a disconnect cancels this generator: job.run()'s finally sets the cancel flag
            job.release()

    return streaming_response(events(), job)


def streaming_response(body: AsyncIterator[str], job: SearchJob) -> StreamingResponse:
    """text/event-stream for an admitted job; the budget comes back even if the body never starts."""
    return StreamingResponse(body, media_type="text/event-stream", background=BackgroundTask(job.release),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
