"""POST /v1/rerank logic: score every candidate, rank, select under a voting mode.

- none: the best-scored candidate.
- majority: the most frequent extracted answer (repirl.answers.majority_answer); among its candidates, the best.
- weighted: answers vote with weights from the PRM. Probability-valued formats (qwen-step-tag, math-shepherd)
  vote with the score itself (search-and-learn's weighted best-of-N); unbounded formats (token-reward, implicit)
  vote with exp(score - max score), i.e. the score read as a log-weight, so negative rewards still vote sensibly.
"""

from __future__ import annotations

import math

from repirl.answers import extract_answer, majority_answer, normalize_answer
from repirl.scoring.aggregate import aggregate
from repirl.trajectory import split_steps
from server.api.limits import check_count, check_trajectory
from server.api.rerank.protocol import RerankRequest, RerankResponse, RerankResult, Selection
from server.deps import AppState, get_runtime
from server.errors import APIError

PROBABILITY_FORMATS = ("qwen-step-tag", "math-shepherd")


async def serve_rerank(state: AppState, req: RerankRequest) -> RerankResponse:
    limits = state.settings.limits
    check_count("candidates", len(req.candidates), limits.max_candidates, "candidates")
    runtime = get_runtime(state, req.model)
    sep = runtime.config.step_separator
    steps_list, texts = [], []
    for i, cand in enumerate(req.candidates):
        if isinstance(cand, str):
            check_count(f"candidates[{i}]", len(cand), limits.max_chars * limits.max_steps, "characters")
            steps = split_steps(cand, sep)
            if not steps:
                raise APIError(422, f"candidates[{i}]: the text has no steps", f"candidates[{i}]")
        else:
            steps = cand.steps
        texts.append("\n".join(steps))  # answers are read one step per line, whatever the PRM's separator
        check_trajectory(limits, f"candidates[{i}]", req.question, steps)
        steps_list.append(steps)
    how = req.aggregation or runtime.config.default_aggregation
    scored = await runtime.score([(req.question, s) for s in steps_list],
                                 [f"candidates[{i}]" for i in range(len(steps_list))])
    results = [RerankResult(index=i, score=aggregate(s.scores.step_rewards, how, s.scores.token_rewards),
                            answer=extract_answer(texts[i]), step_rewards=s.scores.step_rewards)
               for i, s in enumerate(scored)]
    ranked = sorted(results, key=lambda r: (-r.score, r.index))
    selected = _select(req.voting, ranked, runtime.config.format)
    return RerankResponse(model=runtime.name, revision=runtime.scorer.revision, aggregation=how, voting=req.voting,
                          results=ranked[: req.top_n] if req.top_n else ranked, ranking=[r.index for r in ranked],
                          selected=selected)


def _select(voting: str, ranked: list[RerankResult], fmt: str) -> Selection:
    best = ranked[0]
    if voting == "none":
        return Selection(index=best.index, answer=best.answer, score=best.score)
    if voting == "majority":
        weights = [1.0] * len(ranked)
    elif fmt in PROBABILITY_FORMATS:
        weights = [max(r.score, 0.0) for r in ranked]
    else:
        top = max(r.score for r in ranked)
        weights = [math.exp(r.score - top) for r in ranked]
    answers = [r.answer for r in ranked]
    winner = majority_answer(answers, weights)  # ties go to the first seen, i.e. the better-scored candidate
    votes: dict[str, float] = {}
    for a, w in zip(answers, weights):
        key = normalize_answer(a)
        if key is not None:
            votes[key] = votes.get(key, 0.0) + w
    if winner is None:
        return Selection(index=None, answer=None, score=None, votes=votes)
    chosen = next(r for r in ranked if normalize_answer(r.answer) == winner)
    return Selection(index=chosen.index, answer=chosen.answer, score=chosen.score, votes=votes)
