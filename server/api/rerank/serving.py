"""POST /v1/rerank logic: score every candidate, rank, select under a voting mode with the very `choose()` that
search and the evaluator use (repirl/search/core.py): none = naive (the best score), majority, weighted (probability
formats vote with the score, unbounded ones with exp((score - max) / vote_temperature)); candidates that state an
answer beat those that do not."""

from __future__ import annotations

from repirl.answers import extract_answer
from repirl.scoring.aggregate import aggregate
from repirl.scoring.formats import format_facts
from repirl.search import Candidate, choose, votes
from repirl.trajectory import split_steps
from server.api.limits import check_count, check_trajectory
from server.api.rerank.protocol import RerankRequest, RerankResponse, RerankResult, Selection
from server.deps import AppState, get_runtime
from server.errors import APIError


def _parse_candidates(req: RerankRequest, limits, sep: str) -> tuple[list[list[str]], list[str | None]]:
    """Each candidate's steps (a text is split at the PRM's separator) and its final answer (read one step per line,
    whatever the PRM's separator)."""
    steps_list, answers = [], []
    for i, cand in enumerate(req.candidates):
        if isinstance(cand, str):
            check_count(f"candidates[{i}]", len(cand), limits.max_chars * limits.max_steps, "characters")
            steps = split_steps(cand, sep)
            if not steps:
                raise APIError(422, f"candidates[{i}]: the text has no steps", f"candidates[{i}]")
        else:
            steps = cand.steps
        check_trajectory(limits, f"candidates[{i}]", req.question, steps)  # lengths before any further parsing
        answers.append(extract_answer("\n".join(steps)))
        steps_list.append(steps)
    return steps_list, answers


async def serve_rerank(state: AppState, req: RerankRequest) -> RerankResponse:
    limits = state.settings.limits
    check_count("candidates", len(req.candidates), limits.max_candidates, "candidates")
    runtime = get_runtime(state, req.model)
    # splitting and answer extraction parse user text: off the event loop (issue 22.1)
    steps_list, answers = await runtime.off_loop(_parse_candidates, req, limits, runtime.config.step_separator)
    how = req.aggregation or runtime.config.default_aggregation
    scored = await runtime.score([(req.question, s) for s in steps_list],
                                 [f"candidates[{i}]" for i in range(len(steps_list))])
    results = [RerankResult(index=i, score=aggregate(s.scores.step_rewards, how, s.scores.token_rewards),
                            answer=answers[i], step_rewards=s.scores.step_rewards)
               for i, s in enumerate(scored)]
    ranked = sorted(results, key=lambda r: (-r.score, r.index))
    selected = _select(req, ranked, format_facts(runtime.config).is_probability)
    return RerankResponse(model=runtime.name, revision=runtime.scorer.revision, aggregation=how, voting=req.voting,
                          results=ranked[: req.top_n] if req.top_n else ranked, ranking=[r.index for r in ranked],
                          selected=selected)


VOTING_TO_SELECT = {"none": "naive", "weighted": "weighted", "majority": "majority"}


def _select(req: RerankRequest, ranked: list[RerankResult], probability_scores: bool) -> Selection:
    """The one `choose()` of search and the evaluator, on the ranked candidates (so ties go to the better score)."""
    cands = [Candidate(steps=[], score=r.score, answer=r.answer, id=r.index) for r in ranked]
    select = VOTING_TO_SELECT[req.voting]
    best, answer = choose(cands, select, req.vote_temperature, probability_scores)
    counted = votes(cands, select, req.vote_temperature, probability_scores) if req.voting != "none" else {}
    return Selection(index=best.id, answer=answer, score=best.score, votes=counted)
