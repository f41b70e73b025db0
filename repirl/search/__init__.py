"""Test-time search over a StepPolicy and a StepScorer: best-of-N (naive / PRM-weighted / majority, adaptive), step
beam search, DVTS, particle filtering, particle Gibbs, optional lookahead, budgets. Pure algorithms: the evaluator
and the server call `run_search` alike.

    result = run_search(policy, scorer, question, SearchParams(strategy="beam", n=16, beam_width=4))
    result.answer, result.best.steps, result.stats.to_dict()

`on_event` receives a SearchEvent after every step (beams kept, pruned, completed) and a final one; `should_stop`
is polled between steps and raises SearchCancelled when it returns True (a client that went away).
"""

from __future__ import annotations

from repirl.policy.base import StepPolicy
from repirl.scoring import StepScorer
from repirl.search.core import (CancelCheck, EventCallback, SearchContext, choose, default_aggregation, rank, vote_weights,
                                votes)
from repirl.search.strategies import STRATEGY_FUNCS
from repirl.search.types import (SELECTIONS, STRATEGIES, Budget, Candidate, SearchCancelled, SearchEvent, SearchParams,
                                 SearchResult, SearchStats)


def run_search(policy: StepPolicy, scorer: StepScorer | None, question: str, params: SearchParams | None = None,
               on_event: EventCallback | None = None, should_stop: CancelCheck | None = None) -> SearchResult:
    params = params or SearchParams()
    ctx = SearchContext(policy, scorer, question, params, on_event=on_event, should_stop=should_stop)
    return STRATEGY_FUNCS[params.strategy](ctx)


__all__ = ["Budget", "Candidate",
           "SELECTIONS", "STRATEGIES", "SearchCancelled", "SearchEvent", "SearchParams", "SearchResult",
           "SearchStats", "choose", "default_aggregation", "rank", "run_search", "vote_weights", "votes"]
