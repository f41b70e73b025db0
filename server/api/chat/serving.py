"""Chat completions through the same SearchJob as /v1/search: the last user message is the question, the search's
pick is the assistant message (steps joined by the policy's separator), the search itself is in `search`."""

from __future__ import annotations

from fastapi import Request

from server.api.chat.protocol import (ChatCompletionRequest, ChatCompletionResponse, Choice, ResponseMessage,
                                      SearchInfo, Usage)
from server.api.search.serving import SearchJob, fit_defaults, run_job
from server.deps import AppState
from server.errors import APIError


def _question(req: ChatCompletionRequest) -> str:
    users = [m for m in req.messages if m.role == "user"]
    if not users or not users[-1].text().strip():
        raise APIError(422, "messages: needs a user message with text (the question)", "messages")
    return users[-1].text()


async def serve_chat(state: AppState, req: ChatCompletionRequest, request: Request) -> ChatCompletionResponse:
    if req.stream:
        raise APIError(400, "stream: chat streaming is not supported; POST /v1/search with stream: true streams "
                       "search steps", "stream")
    prm, policy = req.prm, None
    if req.model in state.policies:
        policy = req.model
    elif req.model in state.runtimes:
        prm = prm or req.model
    else:
        loaded = ", ".join([*state.policies, *state.runtimes])
        raise APIError(404, f"model {req.model!r} is not loaded (loaded: {loaded})", "model")
    overrides = {"temperature": req.temperature, "top_p": req.top_p, "seed": req.seed,
                 "max_step_tokens": req.max_completion_tokens or req.max_tokens}
    params = req.search.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    params = type(params).model_validate(params.model_dump())  # re-validate with the overrides applied
    given = req.search.model_fields_set | {k for k, v in overrides.items() if v is not None}
    params = fit_defaults(state, params, given)
    question = _question(req)
    job = SearchJob(state, params, question, prm, policy)
    steps_seen = []
    result = await run_job(job, request, on_step=steps_seen.append if req.return_trace else None)
    best = result.best
    sep = job.policy.config.step_separator
    trace = None
    if req.return_trace:
        trace = {"steps": [e.to_dict() for e in steps_seen], "candidates": [c.to_dict() for c in result.candidates]}
    prompt_tokens = len(job.policy.encoder.prompt_ids(question))
    return ChatCompletionResponse(
        model=req.model,
        choices=[Choice(message=ResponseMessage(content=sep.join(best.steps) if best else ""),
                        finish_reason="length" if best is None or best.truncated else "stop")],
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=result.stats.policy_tokens,
                    total_tokens=prompt_tokens + result.stats.policy_tokens),
        search=SearchInfo(strategy=params.strategy, select=params.select, prm=job.runtime.name, answer=result.answer,
                          score=best.score if best else None, stats=result.stats.to_dict(), trace=trace))
