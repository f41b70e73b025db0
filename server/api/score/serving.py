"""POST /v1/score logic: limits, the PRM runtime (cache + batcher + engine), aggregation."""

from __future__ import annotations

from repirl.artifacts import active_calibration
from repirl.scoring.aggregate import aggregate
from server.api.limits import check_count, check_trajectory
from server.api.score.protocol import ScoreRequest, ScoreResponse, ScoreResult, Usage
from server.deps import AppState, get_runtime
from server.errors import APIError


async def serve_score(state: AppState, req: ScoreRequest) -> ScoreResponse:
    limits = state.settings.limits
    items = req.item_list()
    batch = req.items is not None
    check_count("items", len(items), limits.max_items, "items")
    params = [f"items[{i}]" if batch else "body" for i in range(len(items))]
    for item, param in zip(items, params):
        check_trajectory(limits, param, item.question, item.steps)
    runtime = get_runtime(state, req.model)
    how = req.aggregation or runtime.config.default_aggregation
    cal = runtime.calibration_for(req.aggregate_input)
    scored = await runtime.score([(it.question, it.steps) for it in items], params)
    data = []
    for i, s in enumerate(scored):
        sc = s.scores
        p = cal.p_correct_all(sc.step_rewards) if cal is not None else None  # from raw: cached raws stay valid
        data.append(ScoreResult(index=i, step_rewards=sc.step_rewards, p_correct=p,
                                score=aggregate(p, how) if req.aggregate_input == "probability"
                                else aggregate(sc.step_rewards, how, sc.token_rewards),
                                token_rewards=sc.token_rewards if req.return_token_rewards else None,
                                cached_steps=s.cached_steps))
    usage = Usage(items=len(items), tokens=sum(s.scores.tokens_total for s in scored),
                  tokens_computed=sum(s.scores.tokens_computed for s in scored),
                  cached_steps=sum(s.cached_steps for s in scored))
    return ScoreResponse(model=runtime.name, revision=runtime.scorer.revision, aggregation=how,
                         aggregate_input=req.aggregate_input, data=data, usage=usage)
