"""/v1/search and /v1/best-of-n: a request becomes a `SearchJob` (server/searching.py, shared with chat), whose
result or stream of step events becomes the response."""

from __future__ import annotations

import json

from fastapi import Request

from repirl.search import SearchParams, SearchResult
from server.api.search.protocol import CandidateOut, SearchRequest, SearchResponse
from server.cancellation import until_deadline
from server.deps import AppState
from server.errors import error_body, to_response
from server.searching import SearchJob, fit_defaults, run_job, streaming_response


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


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


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
