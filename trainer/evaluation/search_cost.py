"""Search accuracy and cost at equal budget: best-of-N (plain, PRM-weighted, adaptive) vs step beam search vs DVTS vs
particle filtering vs particle Gibbs, all with n samples per step / in total (particle Gibbs: n / 2 particles x 2
sweeps), through run_search with the same PRM. Cost = policy tokens generated and PRM tokens (handed over and
actually computed), from each SearchResult's stats."""

from __future__ import annotations

from typing import Sequence

from repirl.search import SearchParams, run_search
from repirl.tasks.arithmetic import ArithmeticTask
from repirl.tasks.base import Problem


def strategies(n: int, beam_width: int) -> dict[str, dict]:
    return {f"best-of-{n} (PRM rerank)": {"strategy": "best-of-n", "n": n, "select": "naive"},
            f"best-of-{n} (PRM-weighted vote)": {"strategy": "best-of-n", "n": n, "select": "weighted"},
            f"beam (n={n}, width={beam_width})": {"strategy": "beam", "n": n, "beam_width": beam_width},
            f"DVTS (n={n}, width={beam_width})": {"strategy": "dvts", "n": n, "beam_width": beam_width},
            f"adaptive best-of-{n} (majority, stops when settled)": {"strategy": "adaptive-best-of-n", "n": n},
            f"particle filtering (n={n})": {"strategy": "particle-filtering", "n": n},
            # its_hub's rule (resample at every step) with weights sharp enough for the demo PRMs' score spread
            # (about 0.01-0.1 between particles: at temperature 1 the weights stay uniform and nothing resamples)
            f"particle filtering (n={n}, resample every step, T=0.05)": {
                "strategy": "particle-filtering", "n": n, "ess_threshold": 1.0, "particle_temperature": 0.05},
            f"particle Gibbs (n={max(2, n // 2)}, 2 sweeps)": {"strategy": "particle-gibbs", "n": max(2, n // 2),
                                                               "sweeps": 2}}


def run_strategy(policy, scorer, task: ArithmeticTask, problems: Sequence[Problem], knobs: dict, temperature: float,
                 seed: int, max_steps: int = 8, max_step_tokens: int = 32) -> dict:
    totals = {"policy_tokens": 0, "prm_tokens_total": 0, "prm_tokens_computed": 0, "wall_time_s": 0.0}
    hits = 0
    for i, p in enumerate(problems):
        params = SearchParams(temperature=temperature, seed=seed + 7919 * i, max_steps=max_steps,
                              max_step_tokens=max_step_tokens, **knobs)
        cold_cache(scorer)  # every search starts cold, so no strategy profits from an earlier one's KV cache
        result = run_search(policy, scorer, p.question, params)
        hits += bool(result.best) and task.check(p, result.best.steps).correct
        stats = result.stats.to_dict()
        for k in totals:
            totals[k] += stats[k]
    m = len(problems)
    return {"accuracy": hits / m, "problems": m, **{f"{k}_per_problem": v / m for k, v in totals.items()}}


def cold_cache(scorer) -> None:
    kv = getattr(scorer, "kv", None)
    if kv is not None and hasattr(kv, "clear"):
        kv.clear()
