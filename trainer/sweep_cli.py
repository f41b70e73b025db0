"""`repirl sweep`: the typer command (options only; the work is in trainer/sweep.py and trainer/evaluation/)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer


def sweep(
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", "-c", help="The recipe every variant starts "
                                "from (the 'base' row)."),
    vary: list[str] = typer.Option([], help="KEY=V1,V2: one variant per value, the rest of the recipe unchanged "
                                   "(repeat; dotted keys, YAML values), e.g. --vary prm.lr=3e-6,3e-5 --vary "
                                   "iterations=60 --vary prm.max_weight_ratio=4."),
    seeds: str = typer.Option("0,1", help="Comma-separated seeds; every variant trains once per seed."),
    prefix: str = typer.Option("sweep", help="Run names: <prefix>-<variant>-s<seed> under --runs-dir."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where the runs are trained (and found again on a re-run)."),
    untrained: Path = typer.Option(Path("runs/demo/prm"), help="The untrained PRM (a baseline row)."),
    policy: str = typer.Option("runs/demo/policy", help="Policy whose samples are reranked (the recipes' start)."),
    problems: int = typer.Option(40, min=1, help="Held-out problems per split (in distribution, harder)."),
    dev_problems: int = typer.Option(30, min=1, help="Dev problems for the step-error threshold."),
    n: int = typer.Option(16, min=2, help="Samples per problem; the table reports best-of-n."),
    subsets: int = typer.Option(4, min=1, help="Random subsets per problem for each N < n (the curves)."),
    temperature: float = typer.Option(0.8, min=0.0, help="Sampling temperature of the evaluation."),
    max_step_tokens: int = typer.Option(32, min=1, help="Tokens per step in the evaluation's samples."),
    max_steps: int = typer.Option(8, min=1, help="Steps before an evaluation sample is cut (and counted wrong)."),
    engine: str = typer.Option("auto", help="Policy engine of the evaluation: auto | vllm | transformers."),
    out: Path = typer.Option(Path("runs/sweep/sweep.md"), help="Markdown table; the plot, results.json and the "
                             "recipes go to <out dir>/results/ (for sweep.md; <out dir>/<name>-results/ for any "
                             "other name, so sweeps reported in one folder keep their own)."),
    report_only: bool = typer.Option(False, "--report-only", help="Re-render from results.json; train nothing."),
) -> None:
    """Sweep a recipe one factor at a time: train every variant for every seed (skipping runs already trained;
    a killed sweep resumes), score all PRMs by one fast evaluation on the same held-out problems and cached
    samples, and write a table and plot of best-of-n (in distribution, harder) and first-error F1 against the
    baselines (majority, policy likelihood, untrained PRM)."""
    from rich.console import Console
    from rich.markup import escape

    from repirl.artifacts import atomic_write_text
    from repirl.vllm_setup import quiet_logs
    from trainer.config import ConfigError
    from trainer.sweep import (baselines, parse_vary, plan, plot, render_report, results_dir, summarise,
                               train_missing)

    console = Console(stderr=True)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds: not a comma-separated list of integers: {seeds!r}") from None
    try:
        variants = parse_vary(vary)
        runs = plan(config, variants, seed_list, prefix, runs_dir)
    except (ValueError, ConfigError) as e:
        console.print(f"[red]sweep error:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2)
    if not (untrained / "prm.json").is_file():
        raise typer.BadParameter(f"--untrained: {untrained} has no prm.json (make demo builds runs/demo/prm)")
    data_dir = results_dir(out)
    results_json = data_dir / "results.json"
    start_run = Path(policy).parent if Path(policy).name == "policy" else None  # the start's run folder, if one
    log = lambda m: console.print(escape(m), soft_wrap=True)  # noqa: E731
    quiet_logs()
    if report_only:
        if not results_json.is_file():
            raise typer.BadParameter(f"--report-only: {results_json} does not exist; run `repirl sweep` first")
        results = json.loads(results_json.read_text())
    else:
        try:
            train_missing(runs, data_dir / "recipes", log)
        except RuntimeError as e:  # a run that failed: its recipe, exit code and last lines; the runs before it stay
            console.print(f"[red]sweep error:[/red] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(1)
        from trainer.evaluation.pipeline import EvalConfig, run_evaluation

        prms = {"untrained": str(untrained), **{r.name: str(r.run_dir / "prm") for r in runs}}
        # every policy's greedy pass@1 on the same held-out problems of the start policy's task (a variant that
        # changes `task` checks itself on other problems in summary.json), the start included
        cfg = EvalConfig(policy=policy, prms=prms, sections=("bestofn", "steperror", "policies"), problems=problems,
                         runs=[str(p) for p in [start_run, *(r.run_dir for r in runs)] if p is not None],
                         policy_problems=problems, policy_samples=1,
                         dev_problems=dev_problems, n=n, temperatures=(temperature,), n_subsets=subsets,
                         max_step_tokens=max_step_tokens, max_steps=max_steps, policy_engine=engine,
                         cache_dir=str(runs_dir / "eval-cache"),  # the samples `repirl eval` keeps, shared
                         ns=tuple(k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n))
        # through JSON: the report reads what results.json holds (the curves' N keys are strings there)
        results = json.loads(json.dumps(run_evaluation(cfg, results_json, log=log), default=str))
        results["commands"] = ["repirl sweep " + " ".join(shlex.quote(a) for a in sys.argv[2:])]
        atomic_write_text(results_json, json.dumps(results, indent=1, default=str))
    base = baselines(results, n)
    rows = summarise(results, runs, n, start=start_run.name if start_run else None)
    plot(rows, base, n, data_dir / "sweep.png")
    text = render_report(rows, base, results, config=config, seeds=seed_list, problems=problems, n=n,
                         temperature=temperature, dev_problems=dev_problems,
                         data_dir=data_dir.name)
    atomic_write_text(out, text)
    console.print(f"wrote {out} and {data_dir}/")
