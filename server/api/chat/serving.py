"""Chat completions through the same SearchJob as /v1/search: the last user message is the question, the search's
pick is the assistant message (steps joined by the policy's separator), the search itself is in `search`.

`stream: true` follows OpenAI's chunk format: the role chunk at once, then (the pick is only known when the search
ends) the chosen trajectory one step per chunk, a chunk with finish_reason (and repirl's `search`), the usage chunk
when `stream_options.include_usage`, and `data: [DONE]`. Errors before the stream starts (validation, limits, the
in-flight budget) are ordinary 4xx/429 responses; after it, an OpenAI-style `{"error": ...}` data line."""

from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator

from fastapi import Request
from pydantic import ValidationError

from repirl.search import SearchParams, SearchResult
from repirl.validation import error_message, field_path, main_error
from server.api.chat.protocol import (ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, Choice,
                                      ChunkChoice, Delta, ResponseMessage, SearchInfo, Usage)
from server.cancellation import until_deadline
from server.deps import AppState
from server.errors import APIError, error_body, to_response
from server.searching import SearchJob, fit_defaults, run_job, streaming_response


def _question(req: ChatCompletionRequest) -> str:
    users = [m for m in req.messages if m.role == "user"]
    if not users or not users[-1].text().strip():
        raise APIError(422, "messages: needs a user message with text (the question)", "messages")
    return users[-1].text()


def _make_job(state: AppState, req: ChatCompletionRequest) -> SearchJob:
    prm, policy = req.prm, None
    if prm is not None and prm not in state.runtimes:  # (the search would name it `model`)
        raise APIError(404, f"PRM {prm!r} is not loaded (loaded: {', '.join(state.runtimes)})", "prm")
    if req.model in state.policies:
        policy = req.model
    elif req.model in state.runtimes:
        prm = prm or req.model
    else:
        loaded = ", ".join([*state.policies, *state.runtimes])
        raise APIError(404, f"model {req.model!r} is not loaded (loaded: {loaded})", "model")
    overrides = {"temperature": req.temperature, "top_p": req.top_p, "seed": req.seed,
                 "max_step_tokens": req.max_completion_tokens or req.max_tokens}
    overrides["budget"] = req.budget
    given = {k for k, v in overrides.items() if v is not None}
    params = req.search.model_copy(update={k: overrides[k] for k in given})
    try:
        params = type(params).model_validate(params.model_dump())  # re-validate with the overrides applied
        params = fit_defaults(state, params, req.search.model_fields_set | given)
        return SearchJob(state, params, _question(req), prm, policy)
    except ValidationError as e:
        first = main_error(e)
        raise _in_chat_terms(APIError(422, error_message(first), field_path(first)), req, given) from None
    except APIError as e:
        raise _in_chat_terms(e, req, given) from None


def _in_chat_terms(e: APIError, req: ChatCompletionRequest, overridden: set[str]) -> APIError:
    """An error about a search knob, named as this request set it: `max_tokens` (or `max_completion_tokens`) for the
    step cap, the top-level field for the other overrides, `search.x` for the rest, `messages` for the question."""
    if e.param == "max_step_tokens" and e.param in overridden:
        name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    elif e.param in overridden:
        name = e.param
    elif e.param == "question":
        name = "messages"
    elif e.param in SearchParams.model_fields:
        name = f"search.{e.param}"
    else:
        return e
    message = e.message[len(e.param):] if e.message.startswith(e.param) else f": {e.message}"
    return APIError(e.status, f"{name}{message}", name, e.headers)


def _usage(job: SearchJob, result: SearchResult) -> Usage:
    prompt_tokens = len(job.policy.encoder.prompt_ids(job.question))
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=result.stats.policy_tokens,
                 total_tokens=prompt_tokens + result.stats.policy_tokens)


def _search_info(job: SearchJob, result: SearchResult, trace_steps: list | None) -> SearchInfo:
    best = result.best
    trace = None
    if trace_steps is not None:
        trace = {"steps": [e.to_dict() for e in trace_steps], "candidates": [c.to_dict() for c in result.candidates]}
    return SearchInfo(strategy=job.params.strategy, select=job.params.select, prm=job.runtime.name,
                      answer=result.answer, score=best.score if best else None, stats=result.stats.to_dict(),
                      trace=trace)


def _finish_reason(result: SearchResult) -> str:
    return "length" if result.best is None or result.best.truncated else "stop"


async def serve_chat(state: AppState, req: ChatCompletionRequest, request: Request):
    job = _make_job(state, req)  # every 4xx (model, search knobs, limits) before anything runs
    if req.stream:
        job.admit()  # over the in-flight budget: 429 before the stream's 200
        return streaming_response(_chunks(job, req, request), job)
    steps_seen: list = []
    result = await run_job(job, request, on_step=steps_seen.append if req.return_trace else None)
    best = result.best
    sep = job.policy.config.step_separator
    return ChatCompletionResponse(
        model=req.model,
        choices=[Choice(message=ResponseMessage(content=sep.join(best.steps) if best else ""),
                        finish_reason=_finish_reason(result))],
        usage=_usage(job, result),
        search=_search_info(job, result, steps_seen if req.return_trace else None))


def _data(chunk: ChatCompletionChunk | dict) -> str:
    body = chunk if isinstance(chunk, dict) else chunk.model_dump(exclude_none=True)
    return f"data: {json.dumps(body)}\n\n"


async def _chunks(job: SearchJob, req: ChatCompletionRequest, request: Request) -> AsyncIterator[str]:
    ident = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model}
    steps_seen: list = []
    try:
        yield _data(ChatCompletionChunk(**ident, choices=[ChunkChoice(delta=Delta(role="assistant", content=""))]))
        result = None
        # a disconnect closes this generator, request_timeout_s ends the events: either way job.run() cancels the search
        async for kind, obj in until_deadline(request, job.run()):
            if kind == "result":
                result = obj
            elif req.return_trace:
                steps_seen.append(obj)
                yield _data(ChatCompletionChunk(**ident, choices=[], search_step=obj.to_dict()))
        steps = result.best.steps if result.best else []
        sep = job.policy.config.step_separator
        for k, step in enumerate(steps):
            yield _data(ChatCompletionChunk(**ident, choices=[ChunkChoice(delta=Delta(content=(sep if k else "")
                                                                                      + step))]))
        info = _search_info(job, result, steps_seen if req.return_trace else None)
        yield _data(ChatCompletionChunk(**ident, choices=[ChunkChoice(delta=Delta(), finish_reason=_finish_reason(
            result))], search=info))
        if req.stream_options and req.stream_options.include_usage:
            yield _data(ChatCompletionChunk(**ident, choices=[], usage=_usage(job, result)))
    except Exception as e:  # the 200 is sent: an OpenAI-style error line (the openai client raises APIError on it)
        resp = to_response(e)
        yield _data(json.loads(resp.body) if resp.body else error_body(500, "internal error"))
    finally:
        job.release()
    yield "data: [DONE]\n\n"
