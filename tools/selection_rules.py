"""Which way of turning a PRM's step rewards into a pick works on the harder split (issue 24; docs/trainer.md).

    PYTHONPATH=. .venv/bin/python tools/selection_rules.py --prm base-s0=runs/x/prm ... [--problems 200] [--n 16]

The sweep reranks by each PRM's default aggregation (rePIRL: the mean token reward). A PRM whose first wrong step is
found better than the likelihood's (F1 on policy samples) may still rerank no better if the mean hides the one bad
step. This scores the same cached samples (`repirl eval`'s cache: the same problems and samples as `repirl sweep`
with the same --problems/--n/--temperature) with each PRM and with the policy's own likelihood as a step scorer, and
reports best-of-n for four rules, every rule applied the same way to the likelihood (the baseline a rule must beat):

  mean     rerank by the scorer's default aggregation (what the service's best-of-n does)
  min      rerank by the lowest step reward ("min" aggregation, search-and-learn's PRM default)
  filter   drop the samples with a step below a threshold, majority vote among the rest (all, if none is left);
           the threshold maximises this rule's best-of-n on a dev split of other problems (never the test split)
  majority plain majority vote (no scorer)
  dev pick the one of mean / min / filter with the best best-of-n on the dev split, applied to the test split: a
           rule chosen without looking at the test problems (filter's dev figure uses the threshold fitted on that
           same dev split, so it is optimistic there; ties go to the simpler rule)

Subsets, seeds and problems are the same for every rule and scorer (metrics.subset_indices, one seed).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from repirl.policy import load_policy
from repirl.scoring import aggregate
from repirl.scoring.loader import load_scorer
from repirl.tasks.arithmetic import ArithmeticTask
from trainer.evaluation import bestofn
from trainer.evaluation.metrics import first_below, select, subset_indices
from trainer.evaluation.pipeline import EvalConfig, cached_samples, likelihood_scorer

LIKELIHOOD = "likelihood"


def pick(samples, rule: str, name: str | None, threshold: float | None = None):
    if rule == "majority":
        return select(samples, "majority")
    if rule == "mean":
        return select(samples, "naive", name)
    if rule == "min":
        return select(samples, "naive", f"{name}:min")  # add_min_scores wrote these once per sample
    if rule == "filter":  # "flagged" as the first-error F1 flags a step (metrics.first_below)
        kept = [s for s in samples if s.step_rewards[name] and first_below(s.step_rewards[name], threshold) is None]
        return select(kept or list(samples), "majority")
    raise ValueError(rule)


def add_min_scores(problems, name: str) -> None:
    """scores[name:min]: the lowest step reward (repirl.scoring's "min" aggregation), what rule "min" reranks by."""
    for samples in problems:
        for s in samples:
            s.scores[f"{name}:min"] = aggregate(s.step_rewards[name], "min")


def accuracy(problems, n: int, subsets: int, seed: int, rule: str, name: str | None, threshold=None) -> float:
    rng = random.Random(seed)  # the same subsets for every rule and scorer
    per = []
    for samples in problems:
        idx = subset_indices(len(samples), n, subsets, rng)
        per.append(statistics.fmean(pick([samples[i] for i in ix], rule, name, threshold).correct for ix in idx))
    return statistics.fmean(per)


def best_threshold(dev, n, subsets, seed, name) -> float:
    values = sorted({round(r, 4) for ss in dev for s in ss for r in s.step_rewards[name]})
    grid = [values[int(q * (len(values) - 1))] for q in [i / 40 for i in range(41)]] if values else [0.0]
    return max(grid, key=lambda t: (accuracy(dev, n, subsets, seed, "filter", name, t), -t))


def dev_pick(on_dev: dict[str, float], rules: tuple[str, ...]) -> str:
    """The rule with the best dev best-of-n; ties go to the one listed first (the simpler rule)."""
    return max(rules, key=lambda r: (on_dev[r], -rules.index(r)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="runs/demo/policy")
    ap.add_argument("--prm", action="append", required=True, help="NAME=PATH (repeat)")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--dev-problems", type=int, default=60)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--subsets", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here too")
    args = ap.parse_args()

    cfg = EvalConfig(prms={}, policy=args.policy, n=args.n, temperatures=(args.temperature,), problems=args.problems)
    policy = load_policy(args.policy, engine=cfg.policy_engine)
    scorers = {k: load_scorer(v, engine="hf", name=k) for k, v in (p.split("=", 1) for p in args.prm)}
    scorers[LIKELIHOOD] = likelihood_scorer(cfg, print)
    in_dist = bestofn.policy_task_config(policy)
    sample_cfg = bestofn.SampleConfig(n=args.n, temperature=args.temperature, seed=cfg.seed,
                                      max_step_tokens=cfg.max_step_tokens, max_steps=cfg.max_steps)
    out = {}
    for split, task_cfg in (("in-distribution", in_dist), ("harder", bestofn.harder(in_dist))):
        task = ArithmeticTask(task_cfg)
        sets = {}
        for part, problems in (("test", bestofn.heldout_problems(task_cfg, args.problems)),
                               ("dev", bestofn.heldout_problems(task_cfg, args.dev_problems, "dev"))):
            key = f"{split}, T={args.temperature}" + ("" if part == "test" else ", dev")
            samples, _ = cached_samples(cfg, policy, task, problems, sample_cfg, key, print)
            for name, scorer in scorers.items():
                bestofn.score_samples(scorer, name, [p.question for p in problems], samples)
                add_min_scores(samples, name)
            sets[part] = samples
        test, dev = sets["test"], sets["dev"]
        row = {"majority": accuracy(test, args.n, args.subsets, 0, "majority", None),
               "oracle": statistics.fmean(any(s.correct for s in ss) for ss in test)}
        for name in scorers:
            t = best_threshold(dev, args.n, args.subsets, 0, name)
            rules = ("mean", "min", "filter")
            row[name] = {rule: accuracy(test, args.n, args.subsets, 0, rule, name, t) for rule in rules}
            row[name]["threshold"] = t
            on_dev = {rule: accuracy(dev, args.n, args.subsets, 0, rule, name, t) for rule in rules}
            row[name]["dev"] = on_dev
            row[name]["dev_pick"] = dev_pick(on_dev, rules)
        out[split] = row
        print(f"\n{split}: best-of-{args.n} on {args.problems} problems (majority {row['majority']:.3f}, "
              f"any correct among the {args.n} {row['oracle']:.3f})")
        print("| scorer | mean (default) | min step | filter + majority (dev threshold) | rule picked on dev: test |")
        print("|---|---|---|---|---|")
        for name in scorers:
            r = row[name]
            print(f"| {name} | {r['mean']:.3f} | {r['min']:.3f} | {r['filter']:.3f} ({r['threshold']:.3f}) | "
                  f"{r['dev_pick']}: {r[r['dev_pick']]:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
