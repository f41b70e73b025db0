"""The search algorithms: best-of-N, step beam search and DVTS (diverse verifier tree search), with optional
lookahead. They follow HF search-and-learn's definitions so results compare:

- best-of-N: n complete samples, scored once at the end, then a naive / PRM-weighted / majority choice.
- beam: each step expands the kept beams to n candidates in total, scores them, keeps the best n / beam_width
  unfinished ones; finished candidates are collected until n are done or max_steps is reached.
- DVTS: n / beam_width independent subtrees; each expands its one beam into beam_width candidates and keeps the
  best one (greedy per subtree), which spreads the budget over distinct solution paths.
"""

from __future__ import annotations

from repirl.search.core import SearchContext, choose, rank
from repirl.search.types import Candidate, SearchEvent, SearchResult


def _finish(ctx: SearchContext, completed: list[Candidate]) -> SearchResult:
    ranked = rank(completed)
    best, answer = choose(ranked, ctx.params.select, ctx.params.vote_temperature, ctx.probability_scores)
    ctx.emit(SearchEvent("final", ctx.stats.steps, completed=ranked))
    return SearchResult(question=ctx.question, best=best, answer=answer, candidates=ranked, params=ctx.params,
                        stats=ctx.finish_stats())


def _cut(ctx: SearchContext, beams: list[Candidate]) -> list[Candidate]:
    """Unfinished beams at the step limit become completed, truncated, answerless trajectories."""
    for b in beams:
        b.finished = b.truncated = True
    return beams


def best_of_n(ctx: SearchContext) -> SearchResult:
    p = ctx.params
    root = ctx.new_candidate([])
    live = [kid for kids in ctx.expand([root], p.n) for kid in kids]
    ctx.stats.steps = 1
    completed: list[Candidate] = []
    while True:
        done = [c for c in live if c.finished]
        live = [c for c in live if not c.finished]
        completed.extend(done)
        ctx.emit(SearchEvent("step", ctx.stats.steps, beams=live, completed=done))
        if not live or ctx.stats.steps >= p.max_steps:
            break
        ctx.check_cancel()
        live = [kids[0] for kids in ctx.expand(live, 1)]
        ctx.stats.steps += 1
    completed += _cut(ctx, live)
    completed.sort(key=lambda c: c.id)  # sample order, so ties (and a constant PRM) keep the first sample
    completed = ctx.dedup(completed)
    ctx.check_cancel()
    ctx.score(completed)
    return _finish(ctx, completed)


def beam_search(ctx: SearchContext) -> SearchResult:
    p = ctx.params
    keep = p.n // p.beam_width
    beams = [ctx.new_candidate([])]
    completed: list[Candidate] = []
    while beams and len(completed) < p.n and ctx.stats.steps < p.max_steps:
        ctx.check_cancel()
        n_each = max(1, p.n // len(beams))  # n candidates per step in total, as in search-and-learn
        cands = ctx.dedup([kid for kids in ctx.expand(beams, n_each) for kid in kids])
        ctx.stats.steps += 1
        ctx.score(cands, lookahead=p.lookahead)
        done = [c for c in cands if c.finished]
        live = rank([c for c in cands if not c.finished])
        completed.extend(done)
        beams, pruned = live[:keep], live[keep:]
        ctx.emit(SearchEvent("step", ctx.stats.steps, beams=beams, pruned=pruned, completed=done))
    if not completed or beams and len(completed) < p.n:
        completed.extend(_cut(ctx, beams))
    return _finish(ctx, completed)


def dvts(ctx: SearchContext) -> SearchResult:
    p = ctx.params
    root = ctx.new_candidate([])
    subtrees = [root] * (p.n // p.beam_width)  # one current beam per subtree; all start at the question
    completed: list[Candidate] = []
    while subtrees and ctx.stats.steps < p.max_steps:
        ctx.check_cancel()
        groups = [ctx.dedup(kids) for kids in ctx.expand(subtrees, p.beam_width)]
        ctx.stats.steps += 1
        ctx.score([c for g in groups for c in g], lookahead=p.lookahead)
        next_beams, pruned, done_now = [], [], []
        for group in groups:
            if not group:  # every child duplicated another subtree's: this subtree has nothing new to explore
                continue
            ranked = rank(group)
            best = max(ranked, key=lambda c: c.score)  # finished or not, the subtree follows its best child
            done_now.extend(c for c in ranked if c.finished)
            pruned.extend(c for c in ranked if c is not best and not c.finished)
            if not best.finished:
                next_beams.append(best)
        completed.extend(done_now)
        subtrees = next_beams
        ctx.emit(SearchEvent("step", ctx.stats.steps, beams=next_beams, pruned=pruned, completed=done_now))
    completed.extend(_cut(ctx, subtrees))
    return _finish(ctx, completed)


STRATEGY_FUNCS = {"best-of-n": best_of_n, "beam": beam_search, "dvts": dvts}
