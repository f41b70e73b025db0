"""Held-out accuracy of groups of training runs over iterations, on one plot (issue 24: rePIRL vs RLOO over 60
iterations, docs/trainer.md).

    PYTHONPATH=. .venv/bin/python tools/policy_curves.py --group rePIRL=runs/s35-iterations-60-s* \
        --group RLOO=runs/s35-rloo60-s* --out docs/measurements/issue24-longer/results/policy_by_iteration.png

Reads each run's own checks: metrics.jsonl (`eval_accuracy`, sampled at the recipe's temperature every `eval_every`
iterations) and summary.json (the same before training, and greedy pass@1 before and after). Plots each group's
mean over its runs with the range shaded, greedy before/after as markers, and prints the series it plotted.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path
from statistics import mean

from trainer.metrics import read_rows
from trainer.summary import RunSummary


def run_series(run_dir: Path) -> dict:
    """{iteration: sampled held-out accuracy} (0 = before training) and the greedy figures of one run."""
    summary = RunSummary.read(run_dir)
    sampled = {0: summary.eval_accuracy_before}
    for row in read_rows(run_dir / "metrics.jsonl"):
        if "eval_accuracy" in row:
            sampled[row["iter"] + 1] = row["eval_accuracy"]  # checked after iteration `iter` (0-based)
    return {"sampled": sampled, "greedy_before": summary.eval_accuracy_greedy_before,
            "greedy_after": summary.eval_accuracy_greedy, "iterations": summary.iterations}


def group_series(run_dirs: list[Path]) -> dict:
    """Mean, min and max over the runs at every iteration that all of them checked."""
    runs = [run_series(d) for d in run_dirs]
    common = sorted(set.intersection(*(set(r["sampled"]) for r in runs)))
    at = {i: [r["sampled"][i] for r in runs] for i in common}
    greedy_after = [r["greedy_after"] for r in runs if r["greedy_after"] is not None]
    return {"iterations": common, "mean": [mean(at[i]) for i in common], "low": [min(at[i]) for i in common],
            "high": [max(at[i]) for i in common], "runs": len(runs),
            "greedy_before": runs[0]["greedy_before"], "greedy_after": greedy_after,
            "last_iteration": max(r["iterations"] for r in runs)}


def plot(groups: dict[str, dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for k, (name, g) in enumerate(groups.items()):
        color = f"C{k}"
        ax.plot(g["iterations"], g["mean"], marker="o", color=color,
                label=f"{name}: sampled, mean of {g['runs']} seeds (range shaded)")
        ax.fill_between(g["iterations"], g["low"], g["high"], color=color, alpha=0.15)
        if g["greedy_after"]:
            ax.scatter([g["last_iteration"]] * len(g["greedy_after"]), g["greedy_after"], marker="x", color=color,
                       label=f"{name}: greedy after, per seed")
    starts = {g["greedy_before"] for g in groups.values() if g["greedy_before"] is not None}
    for s in starts:
        ax.axhline(s, color="gray", linestyle="--", linewidth=1, label=f"greedy before training ({s:.3f})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", action="append", required=True, metavar="NAME=GLOB",
                    help="a label and a glob of run folders (each with summary.json and metrics.jsonl); repeat")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    ap.add_argument("--title", default="held-out accuracy during training")
    args = ap.parse_args(argv)
    groups = {}
    for spec in args.group:
        name, sep, pattern = spec.partition("=")
        dirs = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "summary.json").exists())
        if not sep or not dirs:
            ap.error(f"--group {spec!r}: expected NAME=GLOB matching run folders that hold summary.json")
        groups[name] = group_series(dirs)
    plot(groups, args.out, args.title)
    for name, g in groups.items():
        series = ", ".join(f"{i}: {m:.3f}" for i, m in zip(g["iterations"], g["mean"]))
        print(f"{name} ({g['runs']} runs): sampled mean by iteration {series}; greedy "
              f"{g['greedy_before']} -> {g['greedy_after']} (mean {mean(g['greedy_after']):.3f})")
    print(f"wrote {args.out}")
    return groups


if __name__ == "__main__":
    main()
