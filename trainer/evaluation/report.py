"""Renders docs/results.md and its PNG plots (docs/results/*.png) from results.json. Pure rendering: no models."""

from __future__ import annotations

import math
from pathlib import Path

from repirl.artifacts import atomic_write_text
from trainer.evaluation.report_text import curve_at, fmt, markdown


def plot_bestofn(bestofn: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(bestofn)
    cols = 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for method, c in bestofn[key]["curves"].items():
            ns = sorted(int(n) for n in c)
            style = "--" if method.startswith("oracle") else ":" if "weighted" in method else "-"
            ax.plot(ns, [curve_at(c, n) for n in ns], style, marker="o", ms=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1)
        ax.set_xlabel("N (samples)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{key} ({bestofn[key]['problems']} problems)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusions(source: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prms = list(source["prms"])
    fig, axes = plt.subplots(1, len(prms), figsize=(4.2 * len(prms), 3.8), squeeze=False)
    for ax, name in zip(axes.flat, prms):
        table = source["prms"][name]["confusion"]
        ax.imshow(table, cmap="Blues")
        labels = ["none"] + [str(i) for i in range(1, len(table))]
        ax.set_xticks(range(len(table)), labels)
        ax.set_yticks(range(len(table)), labels)
        ax.set_xlabel("predicted first wrong step")
        ax.set_ylabel("true first wrong step")
        ax.set_title(f"{name}: F1 {fmt(source['prms'][name]['f1'], 2)}", fontsize=9)
        for i, row in enumerate(table):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_search(search: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    markers = "osD^v<>"
    for k, (prm, rows) in enumerate(search["prms"].items()):
        for label, r in rows.items():
            ax.scatter(r["policy_tokens_per_problem"] + r["prm_tokens_computed_per_problem"], r["accuracy"], s=40,
                       marker=markers[k % len(markers)], label=f"{label} [{prm}]")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_xlabel("tokens per problem (policy generated + PRM computed)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_policies(pol: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pol["by_algorithm"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["greedy_mean"] for r in rows], 0.4, yerr=[r["greedy_std"] for r in rows],
           label="greedy")
    ax.bar([x + 0.2 for x in xs], [r["sampled_mean"] for r in rows], 0.4, yerr=[r["sampled_std"] for r in rows],
           label=f"sampled (T={pol['sampled_temperature']})")
    ax.set_xticks(list(xs), [r["algorithm"] for r in rows], fontsize=8)
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: dict, md_path: Path, plot_dir: Path, commands: list[str] | None = None) -> str:
    """Writes the markdown and the plots; returns the markdown."""
    import json


    plot_dir.mkdir(parents=True, exist_ok=True)
    check = plot_dir / "service_check.json"  # written by load_tests/check_service_vs_eval.py --out
    if check.is_file():
        results = {**results, "service_check": json.loads(check.read_text())}
    seeds = plot_dir / "search_seeds.json"  # written by python -m trainer.evaluation.compute_matched --out
    if seeds.is_file():
        results = {**results, "search_seeds": json.loads(seeds.read_text())}
    plots = {}
    if results.get("bestofn"):
        plots["bestofn"] = plot_dir / "bestofn.png"
        plot_bestofn(results["bestofn"], plots["bestofn"])
    for label, source in (results.get("steperror") or {}).get("sources", {}).items():
        if source.get("prms"):
            name = "first_error_corrupted.png" if label.startswith("corrupted") else "first_error_samples.png"
            plots[label] = plot_dir / name
            plot_confusions(source, plots[label])
    if (results.get("search") or {}).get("prms"):
        plots["search"] = plot_dir / "search.png"
        plot_search(results["search"], plots["search"])
    if (results.get("policies") or {}).get("by_algorithm"):
        plots["policies"] = plot_dir / "policies.png"
        plot_policies(results["policies"], plots["policies"])
    if (results.get("calibration") or {}).get("prms"):
        from trainer.evaluation import calibration

        plots.update(calibration.plot(results["calibration"], plot_dir))
    rel = {k: v.relative_to(md_path.parent).as_posix() if v.is_relative_to(md_path.parent) else str(v)
           for k, v in plots.items()}
    text = markdown(results, rel, commands or [])
    atomic_write_text(md_path, text)
    return text
