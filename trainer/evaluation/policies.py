"""Policy accuracy per training run: greedy and sampled, through run_search (n=1 greedy; n samples at T), grouped
by algorithm with mean and spread over the runs' seeds. Runs are folders runs/<name>/ with policy/ and config.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from repirl.search import SearchParams, run_search
from repirl.tasks.arithmetic import ArithmeticTask
from repirl.tasks.base import Problem
from trainer.evaluation.metrics import mean_spread


@dataclass
class RunInfo:
    name: str
    path: Path
    algorithm: str
    seed: int


def describe_run(run_dir: Path) -> RunInfo:
    """Algorithm and seed from the run's config.yaml; a bootstrap folder (no config) is the SFT starting point."""
    algorithm, seed = "sft (bootstrap)", 0
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        algorithm, seed = cfg.get("algorithm", "?"), int(cfg.get("seed", 0))
        if algorithm == "repirl" and (cfg.get("prm") or {}).get("parameterization") == "head":
            algorithm = "repirl-head"  # the paper's literal reward form: its own row, not a fourth rePIRL seed
    return RunInfo(run_dir.name, run_dir, algorithm, seed)


def policy_accuracy(policy, task: ArithmeticTask, problems: Sequence[Problem], temperature: float, n: int,
                    seed: int, max_steps: int = 8, max_step_tokens: int = 32) -> float:
    """Mean correctness of n samples per problem (n=1 and T=0: greedy accuracy)."""
    hits = total = 0
    for i, p in enumerate(problems):
        params = SearchParams(strategy="best-of-n", n=n, select="majority", temperature=temperature,
                              seed=seed + 7919 * i, max_steps=max_steps, max_step_tokens=max_step_tokens)
        for c in run_search(policy, None, p.question, params).candidates:
            hits += task.check(p, c.steps).correct
            total += 1
    return hits / total if total else float("nan")


def by_algorithm(rows: Sequence[dict]) -> list[dict]:
    """rows: {algorithm, seed, greedy, sampled} per run -> per algorithm mean and std over seeds."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["algorithm"], []).append(r)
    out = []
    for alg, rs in groups.items():
        g, gs = mean_spread([r["greedy"] for r in rs])
        s, ss = mean_spread([r["sampled"] for r in rs])
        out.append({"algorithm": alg, "runs": [r["run"] for r in rs], "seeds": sorted(r["seed"] for r in rs),
                    "greedy_mean": g, "greedy_std": gs, "sampled_mean": s, "sampled_std": ss})
    return out
