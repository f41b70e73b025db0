"""metrics.jsonl (one row per iteration, fsync'd) and PNG plots of every numeric series."""

from __future__ import annotations

import json
import os
from pathlib import Path

PLOTTED = ("accuracy", "eval_accuracy", "prm_loss", "margin", "ess", "ess_frac", "entropy", "kl_init",
           "policy_loss", "reward_mean", "t_iter")


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: dropped, the iteration reruns on resume
            break
    return rows


def truncate_rows(path: Path, keep_below_iter: int) -> None:
    """Keep the rows of iterations < keep_below_iter (what the checkpoint being resumed had seen)."""
    from repirl.artifacts import atomic_write_text

    rows = [r for r in read_rows(path) if r.get("iter", 0) < keep_below_iter]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per series that has numbers, plus overview.png with all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    series = {}
    for key in PLOTTED:
        pts = [(r["iter"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            series[key] = pts
    written = []
    for key, pts in series.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        ax.set_xlabel("iteration")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / f"{key}.png", dpi=80)
        plt.close(fig)
        written.append(out_dir / f"{key}.png")
    if series:
        cols = 3
        rows_n = (len(series) + cols - 1) // cols
        fig, axes = plt.subplots(rows_n, cols, figsize=(12, 3 * rows_n), squeeze=False)
        for ax, (key, pts) in zip(axes.flat, series.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=2)
            ax.set_title(key)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(series):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out_dir / "overview.png", dpi=70)
        plt.close(fig)
        written.append(out_dir / "overview.png")
    return written
