"""What every search strategy shares: expanding candidates with the policy, scoring them with the PRM (with the
accounting), duplicate filtering, cancellation between steps, events, and the final choice (naive / weighted / vote)."""

from __future__ import annotations

import math
import re
import time
from typing import Callable, Sequence

from repirl.answers import extract_answer, majority_answer, normalize_answer
from repirl.artifacts import active_calibration
from repirl.policy.base import SamplingConfig, StepPolicy
from repirl.scoring import StepScorer, aggregate
from repirl.scoring.formats import scores_are_probabilities
from repirl.search.types import SELECTIONS, Candidate, SearchCancelled, SearchEvent, SearchParams, SearchStats

EventCallback = Callable[[SearchEvent], None]
CancelCheck = Callable[[], bool]
_SEED_STRIDE = 1_000_003  # call k of a search samples with seed + k * stride; prefixes inside a call add their index


def default_aggregation(scorer: StepScorer | None) -> str:
    """The scorer's own default (prm.json) when it exposes one, else rePIRL's mean-token."""
    for owner in (scorer, getattr(scorer, "config", None)):
        how = getattr(owner, "default_aggregation", None)
        if isinstance(how, str):
            return how
    return "mean-token"


def _key(steps: Sequence[str]) -> tuple[str, ...]:
    return tuple(re.sub(r"\s+", " ", s).strip() for s in steps)


class SearchContext:
    def __init__(self, policy: StepPolicy, scorer: StepScorer | None, question: str, params: SearchParams,
                 on_event: EventCallback | None = None, should_stop: CancelCheck | None = None):
        if scorer is None and params.select != "majority":
            raise ValueError(f"select={params.select!r} needs a PRM; only select='majority' runs without one")
        self.policy, self.scorer, self.question, self.params = policy, scorer, question, params
        self.aggregation = params.aggregation or default_aggregation(scorer)
        self.calibration = active_calibration(getattr(scorer, "config", None))  # raw -> p_correct, or None
        if params.aggregate_input == "probability" and self.calibration is None:
            raise ValueError("aggregate_input='probability' needs a PRM with a calibration (prm.json `calibration`; "
                             "`repirl calibrate --prm DIR` fits one)")
        self.on_probability = params.aggregate_input == "probability"
        self.probability_scores = self.on_probability or scores_are_probabilities(scorer)
        self.on_event, self.should_stop = on_event, should_stop
        self.stats = SearchStats()
        self._t0 = time.perf_counter()
        self._next_id = 0
        self._seen: set[tuple[str, ...]] = set()
        self._tree_nodes: set[tuple[str, ...]] = set()
        self.stats.tree_tokens = len(policy.encoder.prompt_ids(question))

    # ---- bookkeeping ------------------------------------------------------------------------------------------
    def new_candidate(self, steps: list[str], **fields) -> Candidate:
        cand = Candidate(steps=steps, id=self._next_id, **fields)
        self._next_id += 1
        self.stats.candidates += 1
        if cand.finished and steps:
            cand.answer = extract_answer(steps[-1]) or extract_answer("\n".join(steps))
        return cand

    def check_cancel(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise SearchCancelled(f"search cancelled after {self.stats.steps} steps")

    def budget_reached(self) -> str | None:
        """The first budget field already spent, or None. PRM tokens count what the PRM computed (cache hits and
        KV reuse are free); seconds count from the context's creation."""
        b = self.params.budget
        if b is None:
            return None
        spent = {"policy_tokens": self.stats.policy_tokens, "prm_tokens": self.stats.prm_tokens_computed,
                 "seconds": time.perf_counter() - self._t0}
        return next((k for k in ("policy_tokens", "prm_tokens", "seconds")
                     if getattr(b, k) is not None and spent[k] >= getattr(b, k)), None)

    def may_continue(self) -> bool:
        """Before a step: raises on cancellation; False (and `stats.stopped_by` set) once a budget is spent. The first
        step always runs, so a search returns something; a budget is exceeded by at most the step started under it."""
        self.check_cancel()
        if self.stats.steps == 0:
            return True
        reached = self.budget_reached()
        if reached is not None:
            self.stats.stopped_by = reached
        return reached is None

    def emit(self, event: SearchEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def finish_stats(self) -> SearchStats:
        self.stats.wall_time_s = time.perf_counter() - self._t0
        return self.stats

    def dedup(self, cands: list[Candidate]) -> list[Candidate]:
        """Drop candidates whose steps (whitespace-normalised) were already produced anywhere in this search."""
        if not self.params.dedup_on:
            return cands
        kept = []
        for c in cands:
            k = _key(c.steps)
            if k in self._seen:
                self.stats.duplicates_dropped += 1
                continue
            self._seen.add(k)
            kept.append(c)
        return kept

    # ---- policy -----------------------------------------------------------------------------------------------
    def expand(self, parents: list[Candidate], n_each: int, greedy: bool = False) -> list[list[Candidate]]:
        """n_each children of every parent: one policy call for all of them."""
        if not parents:
            return []
        p = self.params
        seed = None if p.seed is None else p.seed + self.stats.policy_calls * _SEED_STRIDE
        cfg = SamplingConfig(n=n_each, temperature=0.0 if greedy else p.temperature, top_p=p.top_p,
                             max_tokens=p.max_step_tokens, seed=seed)
        samples = self.policy.sample_steps([(self.question, c.steps) for c in parents], cfg)
        self.stats.policy_calls += 1
        children = []
        for parent, outs in zip(parents, samples):
            kids = []
            for s in outs:
                self.stats.policy_tokens += len(s.token_ids)
                if s.text:
                    steps, finished = parent.steps + [s.text], s.finished
                else:  # an empty step cannot be extended meaningfully: the trajectory ends here, without an answer
                    steps, finished = list(parent.steps), True
                kids.append(self.new_candidate(steps, finished=finished, logprob=parent.logprob + s.logprob,
                                               truncated=(not s.text and not s.finished) or s.finish_reason == "length",
                                               parent=parent.id))
            children.append(kids)
        return children

    # ---- PRM --------------------------------------------------------------------------------------------------
    def score(self, cands: list[Candidate], lookahead: int = 0) -> None:
        """Set step_rewards and score on every candidate: one scorer call for the whole batch."""
        if not cands:
            return
        if self.scorer is None:
            for c in cands:
                c.score = 0.0
            return
        trajectories = [list(c.steps) for c in cands]
        if lookahead:
            trajectories = self._roll_out(cands, lookahead)
        todo = [i for i, t in enumerate(trajectories) if t]
        results = self.scorer.score([(self.question, trajectories[i]) for i in todo]) if todo else []
        self.stats.prm_calls += 1 if todo else 0
        scored = dict(zip(todo, results))
        for i, c in enumerate(cands):
            r = scored.get(i)
            if r is None:  # nothing to score (empty trajectory)
                c.step_rewards, c.score = [], aggregate([], self.aggregation)
                continue
            self.stats.prm_tokens_total += r.tokens_total
            self.stats.prm_tokens_computed += r.tokens_computed
            self.stats.cache_hits += int(r.meta.get("cache_hits", 0))
            c.step_rewards = list(r.step_rewards[: len(c.steps)])
            if self.calibration is not None:
                c.p_correct = self.calibration.p_correct_all(c.step_rewards)
            if self.on_probability:  # the steps' probabilities (lookahead steps included), no token values
                c.score = aggregate(self.calibration.p_correct_all(r.step_rewards), self.aggregation)
            else:
                c.score = aggregate(r.step_rewards, self.aggregation, r.token_rewards)
            self._count_tree(trajectories[i])

    def _count_tree(self, steps: list[str]) -> None:
        for k in range(1, len(steps) + 1):
            node = tuple(steps[:k])
            if node not in self._tree_nodes:
                self._tree_nodes.add(node)
                self.stats.tree_tokens += len(self.policy.encoder.step_ids(steps[k - 1]))

    def _roll_out(self, cands: list[Candidate], depth: int) -> list[list[str]]:
        """Each unfinished candidate extended by up to `depth` greedy steps (the lookahead used only for scoring)."""
        rolls = [Candidate(steps=list(c.steps), finished=c.finished) for c in cands]
        for _ in range(depth):
            live = [r for r in rolls if not r.finished]
            if not live:
                break
            for r, kids in zip(live, self.expand(live, 1, greedy=True)):
                r.steps, r.finished = kids[0].steps, kids[0].finished
                self.stats.candidates -= 1  # rollouts are not search candidates
        return [r.steps for r in rolls]


def vote_weights(cands: list[Candidate], select: str, vote_temperature: float = 1.0,
                 probability_scores: bool = False) -> list[float]:
    """Each candidate's vote. Weighted: probability scores vote with the score itself (search-and-learn); unbounded
    scores (token-reward, implicit) with exp((score - max) / vote_temperature), the score read as a log-weight.
    Majority (and naive, which does not vote): 1 each."""
    if select not in SELECTIONS:
        raise ValueError(f"select must be naive, weighted or majority, got {select!r}")
    if select != "weighted" or not cands:
        return [1.0] * len(cands)
    scores = [c.score if c.score is not None else 0.0 for c in cands]
    if probability_scores:
        return [max(s, 0.0) for s in scores]
    top = max(scores)
    return [math.exp((s - top) / vote_temperature) for s in scores]


def votes(cands: list[Candidate], select: str, vote_temperature: float = 1.0,
          probability_scores: bool = False) -> dict[str, float]:
    """Normalized answer -> summed vote, over the candidates that state an answer (what `choose` counts)."""
    out: dict[str, float] = {}
    answered = [c for c in cands if c.answer is not None]
    for c, w in zip(answered, vote_weights(answered, select, vote_temperature, probability_scores)):
        key = normalize_answer(c.answer)
        if key is not None:
            out[key] = out.get(key, 0.0) + w
    return out


def choose(cands: list[Candidate], select: str, vote_temperature: float = 1.0,
           probability_scores: bool = False) -> tuple[Candidate | None, str | None]:
    """The final pick among completed candidates, for search, /v1/rerank and the evaluator alike. Candidates with
    an answer beat those without; ties keep order. naive: the best score; weighted / majority: the answer with the
    most votes (`vote_weights`), then its best-scored candidate."""
    if not cands:
        return None, None
    with_answer = [c for c in cands if c.answer is not None] or cands
    weights = vote_weights(with_answer, select, vote_temperature, probability_scores)
    if select == "naive":
        best = max(with_answer, key=lambda c: c.score if c.score is not None else -math.inf)
        return best, best.answer
    answer = majority_answer([c.answer for c in with_answer], weights)
    group = [c for c in with_answer if normalize_answer(c.answer) == answer] or with_answer
    best = max(group, key=lambda c: c.score if c.score is not None else -math.inf)
    return best, best.answer


def rank(cands: list[Candidate]) -> list[Candidate]:
    """Completed candidates best first: answered before unanswered, then by score (stable for ties)."""
    return sorted(cands, key=lambda c: (c.answer is not None, c.score if c.score is not None else -math.inf),
                  reverse=True)
