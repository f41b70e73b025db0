"""`repirl eval`: the typer command (options only; the work is in trainer/evaluation/)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from repirl.policy.spec import PolicySpec


def _parse_prms(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = Path(v).parent.name or v, v
        # a repirl PRM (prm.json) or a hub PRM folder as downloaded (its layout: repirl/scoring/families.py)
        if not (Path(path) / "prm.json").is_file() and not (Path(path) / "config.json").is_file():
            raise typer.BadParameter(f"--prm {v}: {path} has neither prm.json nor config.json")
        out[name] = path
    return out


PRM_LABELS = {"repirl": "rePIRL", "repirl-head": "rePIRL head PRM", "prime": "PRIME"}  # by describe_run's algorithm


def discover(runs_dir: Path) -> tuple[dict[str, str], list[str], str | None]:
    """PRMs (named by the run's algorithm), policy runs and an offline GSM8K PRM found under runs_dir."""
    from trainer.evaluation.policies import describe_run

    prms, runs, gsm8k = {}, [], None
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        if not ((run / "config.yaml").is_file() or (run / "bootstrap.json").is_file()):
            continue  # not a run of ours (a bare model folder, a copy): its algorithm would be a guess
        info = describe_run(run)
        if (run / "prm" / "prm.json").is_file():
            if info.algorithm == "offline":
                gsm8k = gsm8k or str(run / "prm")
            elif info.algorithm in PRM_LABELS:
                prms[f"{PRM_LABELS[info.algorithm]} ({run.name})"] = str(run / "prm")
            elif info.algorithm.startswith("sft"):
                prms[f"untrained ({run.name})"] = str(run / "prm")
        if (run / "policy" / "config.json").is_file() and info.algorithm != "offline":
            runs.append(str(run))
    return prms, runs, gsm8k


def eval_command(
    ctx: typer.Context,
    policy: str = typer.Option("runs/demo/policy", help="Policy whose samples are reranked and searched: a folder, "
                               "vllm:DIR / hf:DIR, or an OpenAI-compatible URL."),
    prm: list[str] = typer.Option([], help="PRM as NAME=DIR or DIR (repeat). Default: discovered under --runs-dir."),
    run: list[Path] = typer.Option([], help="Run folders for the policy table (default: discovered)."),
    gsm8k_prm: Path = typer.Option(None, help="PRM trained offline on GSM8K (default: an `offline` run's prm)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where runs are discovered."),
    sections: str = typer.Option(",".join(("bestofn", "steperror", "gsm8k", "policies", "search")),
                                 help="Comma-separated: bestofn, steperror, gsm8k, policies, search."),
    problems: int = typer.Option(100, min=1, help="Held-out problems per best-of-N setting."),
    dev_problems: int = typer.Option(60, min=1, help="Dev problems for the step-error threshold."),
    n: int = typer.Option(32, min=1, help="Samples per problem (curves go up to N=n)."),
    temperatures: str = typer.Option("0.8,1.0", help="Comma-separated sampling temperatures."),
    subsets: int = typer.Option(8, min=1, help="Random subsets per problem for each N < n."),
    policy_problems: int = typer.Option(100, min=1),
    search_problems: int = typer.Option(40, min=1),
    search_n: int = typer.Option(16, min=1),
    search_task: str = typer.Option("in-distribution", help="Problems for the search comparison: in-distribution "
                                    "| harder | both."),
    search_all_prms: bool = typer.Option(False, "--search-all-prms", help="Run the search comparison with every "
                                         "PRM (default: the first rePIRL one)."),
    beam_width: int = typer.Option(4, min=1),
    gsm8k_limit: int = typer.Option(400, min=1, help="GSM8K questions evaluated (after those the PRM saw)."),
    max_step_tokens: int = typer.Option(32, min=1, help="Tokens per step (the policy stops a step there)."),
    max_steps: int = typer.Option(8, min=1, help="Steps before a sample is cut (and counted wrong)."),
    engine: str = typer.Option("auto", help="Policy engine: auto | vllm | transformers."),
    prm_engine: str = typer.Option("hf", help="Scorer engine: hf | vllm | auto (they agree; see tests)."),
    seed: int = typer.Option(0),
    cache_dir: Path = typer.Option(Path("runs/eval-cache"), help="Sampled rollouts kept here (keyed by the policy's "
                                   "content hash and the sampling knobs) and reused; '' disables."),
    out: Path = typer.Option(Path("docs/results.md"), help="Markdown report; plots and results.json go to "
                                                           "<out dir>/results/."),
    report_only: bool = typer.Option(False, "--report-only", help="Re-render the report from results.json."),
    vllm_kv_cache_gib: float = typer.Option(None, min=0.01, help="KV cache per vLLM engine in GiB (default: "
                                            "REPIRL_VLLM_KV_CACHE_GIB, else 0.5 on a CPU; see repirl/vllm_setup.py)."),
) -> None:
    """Evaluate PRMs and policies (best-of-N curves, step-error F1, GSM8K best-of-4, policy accuracy, search cost)
    and write docs/results.md with PNG plots. Uses the service's own search code and scorers.
    `repirl eval processbench --help`: ProcessBench for any PRM folder or service."""
    if ctx.invoked_subcommand is not None:  # `repirl eval processbench ...`: only the sub-command runs
        return
    import json
    import os

    from repirl.vllm_setup import KV_SETTING, quiet_logs

    if vllm_kv_cache_gib is not None:  # every engine the evaluator starts reads it (repirl.vllm_setup)
        os.environ[KV_SETTING] = str(vllm_kv_cache_gib)
    quiet_logs()
    from trainer.evaluation.pipeline import SECTIONS, EvalConfig, run_evaluation
    from trainer.evaluation.report import render

    data_dir = out.parent / "results"
    results_json = data_dir / "results.json"
    command = "repirl eval " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    if report_only:
        if not results_json.is_file():
            raise typer.BadParameter(f"--report-only: {results_json} does not exist; run `repirl eval` first")
        results = json.loads(results_json.read_text())
        render(results, out, data_dir, results.get("commands", []))
        typer.echo(f"wrote {out}")
        return
    chosen = tuple(s.strip() for s in sections.split(",") if s.strip())
    bad = [s for s in chosen if s not in SECTIONS]
    if bad:
        raise typer.BadParameter(f"--sections: unknown {', '.join(bad)} (choose from {', '.join(SECTIONS)})")
    try:
        temps = tuple(float(t) for t in temperatures.split(","))
    except ValueError:
        raise typer.BadParameter(f"--temperatures: not a comma-separated list of numbers: {temperatures!r}") from None
    if search_task not in ("in-distribution", "harder", "both"):
        raise typer.BadParameter(f"--search-task: in-distribution, harder or both, got {search_task!r}")
    found_prms, found_runs, found_gsm8k = discover(runs_dir)
    prms = _parse_prms(prm) if prm else found_prms
    if not prms and {"bestofn", "steperror", "search"} & set(chosen):
        raise typer.BadParameter(f"--prm: none given and none found under {runs_dir}")
    folder = PolicySpec.parse(policy).folder  # None for a URL (repirl/policy/spec.py: the one parser of specs)
    if folder is not None and not (folder / "config.json").is_file():
        raise typer.BadParameter(f"--policy: {folder} is not a model folder (no config.json)")
    cfg = EvalConfig(policy=str(policy), prms=prms, runs=[str(r) for r in run] or found_runs,
                     gsm8k_prm=str(gsm8k_prm) if gsm8k_prm else found_gsm8k, sections=chosen, problems=problems,
                     dev_problems=dev_problems, n=n, temperatures=temps, n_subsets=subsets, seed=seed,
                     policy_engine=engine, prm_engine=prm_engine, policy_problems=policy_problems,
                     search_problems=search_problems, search_n=search_n, search_task=search_task,
                     search_all_prms=search_all_prms, beam_width=beam_width,
                     gsm8k_limit=gsm8k_limit, max_step_tokens=max_step_tokens, max_steps=max_steps,
                     cache_dir=str(cache_dir) if str(cache_dir) not in ("", ".") else None,
                     ns=tuple(k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n))
    results = run_evaluation(cfg, results_json, log=lambda m: typer.echo(m))
    # a partial re-run (some sections) keeps the commands behind the sections it did not touch
    earlier = results.get("commands", []) if set(chosen) != set(SECTIONS) else []
    results["commands"] = [c for c in earlier if c != command] + [command]
    results_json.write_text(json.dumps(results, indent=1, default=str))
    render(results, out, data_dir, results["commands"])
    typer.echo(f"wrote {out} and {data_dir}/")


# `repirl eval` keeps its options (the group's callback) and gains `repirl eval processbench`
eval_app = typer.Typer(name="eval", add_completion=False)
eval_app.callback(invoke_without_command=True)(eval_command)


def _register() -> None:
    from trainer.processbench_cli import processbench

    eval_app.command("processbench")(processbench)


_register()
