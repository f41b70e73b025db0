"""`repirl bootstrap`: the typer command (options only; the work is in trainer/bootstrap.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def bootstrap(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder to write policy/, prm/ and bootstrap.json into."),
    steps: int = typer.Option(None, help="SFT optimizer steps (default: the demo recipe's)."),
    batch_size: int = typer.Option(None, help="SFT batch size (problems per step)."),
    lr: float = typer.Option(None, help="Peak SFT learning rate."),
    hidden_size: int = typer.Option(None, help="Policy width (a multiple of 64; head_dim is fixed at 64)."),
    num_layers: int = typer.Option(None, help="Policy depth."),
    max_ops: int = typer.Option(None, help="Most operations per problem (difficulty)."),
    max_operand: int = typer.Option(None, help="Largest start value / +- operand (difficulty)."),
    eval_problems: int = typer.Option(None, help="Held-out problems sampled at the end."),
    seed: int = typer.Option(0, help="Seed for the model init and the training problems."),
    eval_engine: str = typer.Option("auto", help="Engine for the held-out sampling: auto (vLLM when installed), vllm "
                                    "or transformers (no engine start: quicker for a few problems)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if OUT/prm/prm.json exists."),
    accuracy_window: str = typer.Option(None, help="LO,HI: the held-out accuracy the policy must reach (default "
                                        "0.3,0.85); outside it the command fails and writes no PRM."),
) -> None:
    """Build the offline demo models: tokenizer, tiny Qwen2 policy (SFT on the synthetic arithmetic task), an
    untrained token-reward PRM, and the policy's held-out accuracy sampled with vLLM at T=0.8.

    Nothing is downloaded. Takes about 10 minutes on 2 CPU cores with the defaults.
    """
    from dataclasses import replace

    from rich.console import Console
    from rich.markup import escape  # a path or message with [brackets] is printed as it is

    from repirl.vllm_setup import quiet_logs

    quiet_logs()
    from trainer.bootstrap import BootstrapConfig, BootstrapError, run_bootstrap

    console = Console()
    if (out / "prm" / "prm.json").exists() and not force:
        console.print(f"{out}/prm already exists; nothing to do (use --force to rebuild)")
        return
    cfg = BootstrapConfig(out=str(out), seed=seed)
    sft_over = {k: v for k, v in {"steps": steps, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    task_over = {k: v for k, v in {"max_ops": max_ops, "max_operand": max_operand}.items() if v is not None}
    model_over = {k: v for k, v in {"hidden_size": hidden_size, "num_layers": num_layers,
                                     "eval_problems": eval_problems}.items() if v is not None}
    try:
        task_cfg = replace(cfg.task, **task_over)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if eval_engine not in ("auto", "vllm", "transformers"):
        raise typer.BadParameter(f"--eval-engine: auto, vllm or transformers, got {eval_engine!r}")
    cfg = replace(cfg, sft=replace(cfg.sft, seed=seed, **sft_over), task=task_cfg, eval_engine=eval_engine,
                  **model_over)
    if cfg.hidden_size % 64:
        raise typer.BadParameter(f"--hidden-size must be a multiple of 64, got {cfg.hidden_size}")
    if accuracy_window is not None:
        try:
            lo, hi = (float(x) for x in accuracy_window.split(","))
            assert 0 <= lo <= hi <= 1
        except (ValueError, AssertionError):
            raise typer.BadParameter(f"--accuracy-window: LO,HI with 0 <= LO <= HI <= 1, got {accuracy_window!r}")
        cfg = replace(cfg, accuracy_window=(lo, hi))
    try:
        run_bootstrap(cfg, console)
    except BootstrapError as e:
        console.print(f"[red]repirl bootstrap:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(1)
