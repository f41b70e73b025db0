"""A recipe sweep in the trainer's own tooling (issue 24): one factor at a time around a recipe, a few seeds each,
trained by `repirl train` and scored by a fast `repirl eval` (best-of-N in distribution and on the harder split, and
first-error F1 on policy samples) on the same held-out problems and the same cached samples.

The pieces are plain functions so the CLI (trainer/sweep_cli.py) only parses options: `parse_vary` turns
`--vary prm.lr=3e-6,3e-5` into variants, `plan` validates every recipe before anything trains, `train_missing`
trains what is not there yet (a killed sweep resumes), `summarise` reads results.json and the runs' summary.json
into one row per variant, and `render` writes the table and the plot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Callable

import yaml

from repirl.artifacts import atomic_write_text
from trainer.config import ConfigError, TrainConfig, load_config
from trainer.evaluation.bestofn import HARDER, IN_DIST
from trainer.evaluation.pipeline import LIKELIHOOD_BASELINE as LIKELIHOOD
from trainer.summary import RunSummary

BASE = "base"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    key: str  # "base" or "prm.lr=3e-06": what the table shows
    overrides: dict = field(default_factory=dict, hash=False)


@dataclass
class PlannedRun:
    variant: Variant
    seed: int
    cfg: TrainConfig

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir


def _nested(dotted: str, value) -> dict:
    out: dict = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def parse_vary(values: list[str]) -> list[Variant]:
    """`prm.lr=3e-6,3e-5` -> two variants. Values are YAML scalars (`null`, `false`, `60`, `[0.2, 0.8]` are what a
    recipe would hold); a list or mapping value is written in brackets or braces and is not split on its commas
    (`task={max_ops: 4, max_operand: 40}`: one variant, merged into the recipe's task like any override)."""
    variants = [Variant(BASE)]
    for spec in values:
        key, sep, raw = spec.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ValueError(f"--vary {spec!r}: expected KEY=VALUE[,VALUE...], e.g. prm.lr=3e-6,3e-5")
        items = [raw] if raw.strip()[:1] in ("[", "{") else [v for v in raw.split(",") if v.strip()]
        for item in items:
            value = yaml.safe_load(item)
            if isinstance(value, str):  # YAML 1.1 reads 3e-6 (no dot) as a string; a recipe author means a number
                try:
                    value = float(value)
                except ValueError:
                    pass
            variants.append(Variant(f"{key.strip()}={item.strip()}", _nested(key.strip(), value)))
    return variants


def slug(variant: Variant) -> str:
    """A run-name fragment: prm.lr=3e-6 -> prm_lr-3e-6."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", variant.key.replace(".", "_").replace("=", "-")).strip("-")


def plan(config: Path, variants: list[Variant], seeds: list[int], prefix: str, runs_dir: Path) -> list[PlannedRun]:
    """Every run's recipe, validated now: a bad key fails the sweep before the first run trains (the error names
    the recipe file and the key)."""
    runs = []
    for variant in variants:
        for seed in seeds:
            name = f"{prefix}-{slug(variant)}-s{seed}"
            extra = {**variant.overrides, "seed": seed, "name": name, "out_dir": str(runs_dir)}
            try:
                cfg = load_config(config, extra)
            except ConfigError as e:
                raise ConfigError(f"--vary {variant.key}: {e}") from None
            runs.append(PlannedRun(variant, seed, cfg))
    return runs


def is_trained(run: PlannedRun) -> bool:
    return (run.run_dir / "summary.json").is_file() and (run.run_dir / "prm" / "prm.json").is_file()


def train_missing(runs: list[PlannedRun], recipes_dir: Path, log: Callable[[str], None] = print) -> None:
    """Trains each run that has no summary.json yet, one `repirl train` process per run (each frees its engines'
    memory when it exits); a run a kill interrupted continues from its newest checkpoint."""
    recipes_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not is_trained(r)]
    log(f"sweep: {len(runs) - len(todo)} of {len(runs)} runs already trained, {len(todo)} to train")
    for i, run in enumerate(todo, 1):
        recipe = recipes_dir / f"{run.name}.yaml"
        atomic_write_text(recipe, yaml.safe_dump(run.cfg.model_dump(mode="json"), sort_keys=False))
        cmd = [sys.executable, "-m", "trainer.train_cli", "--config", str(recipe), "--no-progress"]
        if (run.run_dir / "config.yaml").is_file():  # started before: resume (from scratch when no checkpoint yet)
            cmd.append("--resume")
        log(f"sweep: [{i}/{len(todo)}] training {run.name} ({run.variant.key}, seed {run.seed})")
        # the repo first on PYTHONPATH: `python -m trainer.train_cli` works from any working directory
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"sweep: training {run.name} failed (recipe {recipe}, exit {done.returncode}):\n{tail}")


# --- reading the evaluation ---------------------------------------------------------------------------------------

POLICY_SAMPLES = "policy samples"  # the step-error source whose F1 the issue asks for (steperror.py's label prefix)


def _setting(results: dict, task_key: str) -> dict:
    for setting in results.get("bestofn", {}).values():
        if setting.get("task_key") == task_key:
            return setting
    raise KeyError(f"results.json has no best-of-N setting for {task_key!r}")


def _steperror_prms(results: dict) -> dict:
    """F1 per PRM on policy samples; {} when the evaluation found no balanced set of them (a policy that is never
    right, e.g. a random one: the table then says n/a)."""
    for label, source in results.get("steperror", {}).get("sources", {}).items():
        if label.startswith(POLICY_SAMPLES):
            return source["prms"]
    return {}


def baselines(results: dict, n: int) -> dict[str, float]:
    """What every variant is compared with: best-of-n by majority vote and by the policy's likelihood (the better of
    the two is the issue's 'best baseline'), the untrained PRM, and the likelihood's first-error F1."""
    out = {}
    for key, task_key in ((IN_DIST, "in-distribution"), (HARDER, "harder")):
        curves = _setting(results, key)["curves"]
        out[f"{task_key} majority"] = curves["majority vote"][str(n)]
        out[f"{task_key} likelihood"] = curves["policy likelihood rerank"][str(n)]
        out[f"{task_key} best baseline"] = max(out[f"{task_key} majority"], out[f"{task_key} likelihood"])
        out[f"{task_key} untrained"] = curves.get("PRM rerank: untrained", {}).get(str(n))
    out["F1 likelihood"] = _steperror_prms(results).get(LIKELIHOOD, {}).get("f1")
    return out


@dataclass
class Row:
    variant: str
    seeds: list[int]
    bo_in: list[float]  # PRM rerank best-of-n, in distribution, one per seed
    bo_hard: list[float]
    f1: list[float | None]  # first-error F1 on policy samples (None: no balanced set)
    # greedy pass@1 after training: on the evaluation's held-out problems (results.json `policies`, the same for
    # every run) when it measured them, else the run's own held-out check (summary.json)
    greedy_after: list[float | None]
    greedy_before: float | None = None  # the start policy's, measured the same way


def summarise(results: dict, runs: list[PlannedRun], n: int, start: str | None = None) -> list[Row]:
    """start: the run folder name of the policy every recipe starts from, as results.json `policies` names it."""
    ins, hard = _setting(results, IN_DIST)["curves"], _setting(results, HARDER)["curves"]
    step = _steperror_prms(results)
    measured = {r["run"]: r["greedy"] for r in (results.get("policies") or {}).get("runs", [])}
    rows: dict[str, Row] = {}
    for run in runs:
        row = rows.setdefault(run.variant.key, Row(run.variant.key, [], [], [], [], []))
        summary = RunSummary.read(run.run_dir)
        row.seeds.append(run.seed)
        row.bo_in.append(ins[f"PRM rerank: {run.name}"][str(n)])
        row.bo_hard.append(hard[f"PRM rerank: {run.name}"][str(n)])
        row.f1.append(step.get(run.name, {}).get("f1"))
        if run.name in measured:
            row.greedy_after.append(measured[run.name])
            row.greedy_before = measured.get(start, row.greedy_before)
        else:
            row.greedy_after.append(summary.eval_accuracy_greedy if summary else None)
            row.greedy_before = summary.eval_accuracy_greedy_before if summary else row.greedy_before
    return list(rows.values())


def greedy_source(results: dict) -> str:
    pol = results.get("policies")
    if pol:
        return (f"greedy pass@1 on {pol['problems']} held-out problems of the start policy's task, the same for "
                "every run (repirl eval's policies section)")
    return "greedy pass@1 from each run's own held-out check (summary.json)"


def _mean(values: list) -> float | None:
    got = [v for v in values if v is not None]
    return mean(got) if got else None


def _margin(values: list, ref: float | None) -> float:
    m = _mean(values)
    return 0.0 if m is None or ref is None else m - ref


def _fmt(values: list) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "n/a"
    spread = f" ({min(got):.3f}-{max(got):.3f})" if len(got) > 1 else ""
    return f"{mean(got):.3f}{spread}"


def summed_margin(r: Row, base: dict[str, float]) -> float:
    """Harder best-of-n over the best baseline + F1 over the likelihood + in-distribution best-of-n over the best
    baseline, means over seeds (a margin with no figure counts 0)."""
    return (_margin(r.bo_hard, base["harder best baseline"]) + _margin(r.f1, base["F1 likelihood"])
            + _margin(r.bo_in, base["in-distribution best baseline"]))


def keeps_the_policy(r: Row) -> bool:
    """The issue's policy target: greedy pass@1 after training at or above the SFT start (mean over seeds)."""
    after = _mean(r.greedy_after)
    return after is None or r.greedy_before is None or after >= r.greedy_before


def best_variant(rows: list[Row], base: dict[str, float]) -> Row:
    """The recipe the sweep recommends: the largest summed margin among the variants that keep the policy at or
    above its start (all variants when none does)."""
    eligible = [r for r in rows if keeps_the_policy(r)] or rows
    return max(eligible, key=lambda r: summed_margin(r, base))


def standard_error(p: float, problems: int) -> float:
    """Of one accuracy figure over `problems` problems (binomial): what a difference between variants must exceed."""
    return (p * (1 - p) / problems) ** 0.5


def _signed(values: list, ref: float | None) -> str:
    m = _mean(values)
    return "n/a" if m is None or ref is None else f"{m - ref:+.3f}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render_table(rows: list[Row], base: dict[str, float], n: int) -> str:
    lines = [f"| variant | seeds | best-of-{n} in-dist (PRM) | best-of-{n} harder (PRM) | first-error F1, policy "
             f"samples | F1 - likelihood | greedy pass@1 after training |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.variant} | {len(r.seeds)} | {_fmt(r.bo_in)} | {_fmt(r.bo_hard)} | {_fmt(r.f1)} | "
                     f"{_signed(r.f1, base['F1 likelihood'])} | {_fmt(r.greedy_after)} |")
    greedy0 = next((r.greedy_before for r in rows if r.greedy_before is not None), None)
    cells = [f"majority {_num(base[f'{t} majority'])}, likelihood {_num(base[f'{t} likelihood'])}, untrained PRM "
             f"{_num(base[f'{t} untrained'])}" for t in ("in-distribution", "harder")]
    lines.append(f"| *baselines* | | {cells[0]} | {cells[1]} | likelihood {_num(base['F1 likelihood'])} | | SFT start "
                 f"{_num(greedy0)} |")
    return "\n".join(lines)


def plot(rows: list[Row], base: dict[str, float], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("bo_in", f"best-of-{n}, in distribution", "in-distribution best baseline"),
              ("bo_hard", f"best-of-{n}, harder split", "harder best baseline"),
              ("f1", "first-error F1, policy samples", "F1 likelihood")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(rows) + 2), sharey=True)
    ys = range(len(rows))
    for ax, (attr, title, ref) in zip(axes, panels):
        for y, r in zip(ys, rows):
            values = [v for v in getattr(r, attr) if v is not None]
            if values:
                ax.scatter(values, [y] * len(values), color="tab:blue", alpha=0.5, s=18)
                ax.scatter([mean(values)], [y], color="tab:blue", marker="|", s=300)
        if base[ref] is not None:
            ax.axvline(base[ref], color="tab:red", linestyle="--",
                       label="best baseline" if attr != "f1" else "likelihood")
            ax.legend(loc="best", fontsize=8)  # not over a seed's dot
        ax.set_title(title)
        ax.margins(x=0.1)  # a seed at the extreme stays inside the frame
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(list(ys), [r.variant for r in rows])
    axes[0].invert_yaxis()
    fig.suptitle("rePIRL recipe sweep: dots = seeds, bar = mean")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def results_dir(out: Path) -> Path:
    """Where a sweep's plot, results.json and recipes go: `results/` beside a report named sweep.md (every sweep
    before this rule), `<stem>-results/` beside any other name, so two sweeps reported in one folder never write
    over each other's results (a second sweep used to replace the first one's results.json and plot)."""
    return out.parent / ("results" if out.name == "sweep.md" else f"{out.stem}-results")


def render_report(rows: list[Row], base: dict[str, float], results: dict, *, config: Path, seeds: list[int],
                  problems: int, n: int, temperature: float, dev_problems: int, data_dir: str = "results") -> str:
    """The sweep's markdown: what was run, the table, the plot (in data_dir, relative to the report), the
    recommendation with the noise beside it, and the command (from results.json)."""
    best = best_variant(rows, base)
    seconds = results.get("section_seconds", {})
    return "\n".join([
        "# rePIRL recipe sweep (written by `repirl sweep`)", "",
        f"Recipe `{config}`, one factor at a time; seeds {', '.join(map(str, seeds))}; held-out problems: "
        f"{problems} per split, {n} samples each at T={temperature} (the same samples for every PRM); F1 on the "
        f"policy's own samples, thresholds from {dev_problems} dev problems. Evaluation time "
        f"{sum(seconds.values()):.0f} s on this machine (per section: "
        f"{', '.join(f'{k} {v} s' for k, v in seconds.items())}), training not counted; "
        f"{greedy_source(results)}. Means over seeds with the range in brackets.", "",
        render_table(rows, base, n), "",
        f"![sweep]({data_dir}/sweep.png)", "",
        f"Best variant: **{best.variant}**, summed margin {summed_margin(best, base):+.3f} over the baselines "
        f"(harder best-of-{n} + F1 - likelihood + in-distribution best-of-{n}; base "
        f"{summed_margin(rows[0], base):+.3f}), among the variants whose policy ends at or above its SFT start "
        f"(greedy){'' if keeps_the_policy(best) else ' (none does: all were eligible)'}. For scale: one best-of-{n} "
        f"figure here has a standard error of about {standard_error(mean(rows[0].bo_in), problems):.3f} in "
        f"distribution and {standard_error(max(mean(rows[0].bo_hard), 1 / problems), problems):.3f} on the harder "
        "split, per seed.",
        "", "```bash", *results.get("commands", []), "```", ""])
