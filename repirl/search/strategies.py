"""The search algorithms: best-of-N (and its adaptive form), step beam search, DVTS (diverse verifier tree search),
particle filtering and particle Gibbs, with optional lookahead. Best-of-N, beam and DVTS follow HF search-and-learn's
definitions, the particle methods Puri et al. 2025 / its_hub's (docs/search.md maps the names), so results compare:

- best-of-N: n complete samples, scored once at the end, then a naive / PRM-weighted / majority choice.
- beam: each step expands the kept beams to n candidates in total, scores them, keeps the best n / beam_width
  unfinished ones; finished candidates are collected until n are done or max_steps is reached.
- DVTS: n / beam_width independent subtrees; each expands its one beam into beam_width candidates and keeps the
  best one (greedy per subtree), which spreads the budget over distinct solution paths.
- particle filtering: n particles; each step extends every unfinished one by one step and the PRM scores it; weights
  are softmax(log-weight / particle_temperature) over all n (finished ones keep theirs); when the effective sample
  size drops below ess_threshold x n the particles are resampled by weight (copies share their prefix).
- particle Gibbs: `sweeps` filtering sweeps; each keeps `reference_particles` drawn by weight from the sweep before,
  which take part in every step's weighting and resampling (conditional SMC) without being re-sampled themselves.
"""

from __future__ import annotations

import random

from repirl.search import smc
from repirl.search.core import SearchContext, choose, rank, votes
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


def _rollouts(ctx: SearchContext, k: int) -> list[Candidate]:
    """k complete samples, one step at a time (all k in one policy call per step); cut at max_steps or when a budget
    is spent. Sample order."""
    p = ctx.params
    root = ctx.new_candidate([])
    live = [kid for kids in ctx.expand([root], k) for kid in kids]
    ctx.stats.steps += 1
    depth, completed = 1, []
    while True:
        done = [c for c in live if c.finished]
        live = [c for c in live if not c.finished]
        completed.extend(done)
        ctx.emit(SearchEvent("step", ctx.stats.steps, beams=live, completed=done))
        if not live or depth >= p.max_steps or not ctx.may_continue():
            break
        live = [kids[0] for kids in ctx.expand(live, 1)]
        ctx.stats.steps += 1
        depth += 1
    completed += _cut(ctx, live)
    completed.sort(key=lambda c: c.id)  # sample order, so ties (and a constant PRM) keep the first sample
    return completed


def best_of_n(ctx: SearchContext) -> SearchResult:
    completed = ctx.dedup(_rollouts(ctx, ctx.params.n))
    ctx.check_cancel()
    ctx.score(completed)
    return _finish(ctx, completed)


def _settled(ctx: SearchContext, completed: list[Candidate], remaining: int) -> bool:
    """No unsampled rest can overturn the leader: its vote beats the runner-up's by more than settle x remaining x
    the largest vote one sample casts (1: a majority vote, a probability score, or exp(0) for the current top of
    unbounded scores: there a new top rescales the others, so the rule is a heuristic)."""
    p = ctx.params
    tally = sorted(votes(completed, p.select, p.vote_temperature, ctx.probability_scores).values(), reverse=True)
    if not tally:
        return False
    runner_up = tally[1] if len(tally) > 1 else 0.0
    return tally[0] - runner_up > p.settle * remaining


def adaptive_best_of_n(ctx: SearchContext) -> SearchResult:
    """Self-consistency / weighted best-of-N in rounds of `round_size` samples, scored as they complete; stops once
    the vote is settled (`_settled`) or a budget is spent, else at n samples."""
    p = ctx.params
    size = p.round_size or max(1, p.n // 4)
    completed: list[Candidate] = []
    while len(completed) < p.n:
        if completed and not ctx.may_continue():
            break
        batch = ctx.dedup(_rollouts(ctx, min(size, p.n - len(completed))))
        ctx.check_cancel()
        ctx.score(batch)
        completed += batch
        if len(completed) < p.n and _settled(ctx, completed, p.n - len(completed)):
            ctx.stats.stopped_by = "vote_settled"
            break
    return _finish(ctx, completed)


def beam_search(ctx: SearchContext) -> SearchResult:
    p = ctx.params
    keep = p.n // p.beam_width
    beams = [ctx.new_candidate([])]
    completed: list[Candidate] = []
    while beams and len(completed) < p.n and ctx.stats.steps < p.max_steps and ctx.may_continue():
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
    while subtrees and ctx.stats.steps < p.max_steps and ctx.may_continue():
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


def _score_unique(ctx: SearchContext, cands: list[Candidate]) -> None:
    """Score each distinct trajectory once (resampled copies often sample the same next step) and share the result."""
    first: dict[tuple, Candidate] = {}
    for c in cands:
        first.setdefault(tuple(c.steps), c)
    ctx.score(list(first.values()), lookahead=ctx.params.lookahead)
    for c in cands:
        rep = first[tuple(c.steps)]
        if rep is not c:
            c.step_rewards, c.score, c.p_correct = list(rep.step_rewards), rep.score, rep.p_correct


def _weights(ctx: SearchContext, particles: list[Candidate]) -> list[float]:
    return smc.normalized_weights([smc.log_weight(c.score, ctx.probability_scores) for c in particles],
                                  ctx.params.particle_temperature)


def _lineage(c: Candidate, nodes: dict[int, Candidate]) -> list[Candidate]:
    """c's ancestors from its first step to itself: the reference particle's state at every step of the next sweep."""
    chain = []
    while c is not None and c.steps:
        chain.append(c)
        c = nodes.get(c.parent) if c.parent is not None else None
    return chain[::-1]


def _sweep(ctx: SearchContext, rng: random.Random, references: list[list[Candidate]], sweep: int | None,
           nodes: dict[int, Candidate], finished: list[Candidate]) -> list[Candidate]:
    """One filtering sweep: n - len(references) free particles from the question; each reference lineage shows its
    state at step t (its last once it is shorter) in the weighting and resampling, and is never extended. Returns the
    final n particles (free ones cut at max_steps or a spent budget), references last. Every particle that finished
    on the way is appended to `finished`."""
    p = ctx.params
    n_free = p.n - len(references)
    root = ctx.new_candidate([])
    nodes[root.id] = root
    free, depth = [root] * n_free, 0
    while depth < p.max_steps and ctx.may_continue():
        live = [i for i, c in enumerate(free) if not c.finished]
        if not live and all(depth >= len(r) for r in references):
            break
        kids = ctx.expand([free[i] for i in live], 1)
        for i, group in zip(live, kids):
            free[i] = group[0]
            nodes[group[0].id] = group[0]
        _score_unique(ctx, [k[0] for k in kids])
        finished.extend(k[0] for k in kids if k[0].finished)
        depth += 1
        ctx.stats.steps += 1
        particles = free + [r[min(depth, len(r)) - 1] for r in references]
        weights = _weights(ctx, particles)
        ess = smc.effective_sample_size(weights)
        ancestors = None
        if ess < p.ess_threshold * p.n and not all(c.finished for c in particles):
            ancestors = smc.resample(weights, n_free, p.resampling, rng)
            free = [particles[i] for i in ancestors]
            ctx.stats.resamplings += 1
        ctx.emit(SearchEvent("step", ctx.stats.steps, beams=particles, completed=[kid for k in kids for kid in k
                                                                                  if kid.finished],
                             weights=weights, ess=ess, ancestors=ancestors, sweep=sweep))
    free = [c if c.finished else _cut(ctx, [c])[0] for c in free]
    return free + [r[-1] for r in references]


def _finish_particles(ctx: SearchContext, particles: list[Candidate], finished: list[Candidate]) -> SearchResult:
    """The choice over the final particles as a multiset (a resampled copy is one more vote), the candidates listed
    once. When no final particle states an answer (resampling can drop every answered particle for answerless ones
    of a higher weight: seen with the untrained PRM), the choice falls back to every particle that finished on the
    way, which are then listed too: a repirl addition, its_hub returns the answerless particle."""
    p = ctx.params
    best, answer = choose(rank(particles), p.select, p.vote_temperature, ctx.probability_scores)
    pool = particles
    if answer is None and any(c.answer is not None for c in finished):
        pool = particles + finished
        best, answer = choose(rank(finished), p.select, p.vote_temperature, ctx.probability_scores)
    unique = rank(list({id(c): c for c in pool}.values()))
    ctx.emit(SearchEvent("final", ctx.stats.steps, completed=unique))
    return SearchResult(question=ctx.question, best=best, answer=answer, candidates=unique, params=ctx.params,
                        stats=ctx.finish_stats())


def _need_prm(ctx: SearchContext) -> None:
    if ctx.scorer is None:
        raise ValueError(f"strategy={ctx.params.strategy!r} weighs particles with a PRM; none was given")


def particle_filtering(ctx: SearchContext) -> SearchResult:
    _need_prm(ctx)
    finished: list[Candidate] = []
    return _finish_particles(ctx, _sweep(ctx, random.Random(ctx.params.seed), [], None, {}, finished), finished)


def particle_gibbs(ctx: SearchContext) -> SearchResult:
    """Sweep 1 is particle filtering; each later sweep keeps `reference_particles` drawn by final weight from the
    sweep before (its_hub draws them the same way, multinomially). The pick is made among the last sweep's particles."""
    _need_prm(ctx)
    p, rng, nodes = ctx.params, random.Random(ctx.params.seed), {}
    references: list[list[Candidate]] = []
    particles: list[Candidate] = []
    finished: list[Candidate] = []  # the last sweep's: the fallback of the pick
    for sweep in range(1, p.sweeps + 1):
        if sweep > 1 and not ctx.may_continue():
            break
        finished.clear()
        particles = _sweep(ctx, rng, references, sweep, nodes, finished)
        if ctx.stats.stopped_by is not None:
            break
        picks = rng.choices(range(len(particles)), weights=_weights(ctx, particles), k=p.reference_particles)
        references = [_lineage(particles[i], nodes) or [particles[i]] for i in picks]
    return _finish_particles(ctx, particles, finished)


STRATEGY_FUNCS = {"best-of-n": best_of_n, "adaptive-best-of-n": adaptive_best_of_n, "beam": beam_search, "dvts": dvts,
                  "particle-filtering": particle_filtering, "particle-gibbs": particle_gibbs}
