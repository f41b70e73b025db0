"""`repirl train --config configs/<recipe>.yaml [--resume]` (also runs under `torchrun` / `accelerate launch`)."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    config: Path = typer.Option(..., "--config", "-c", help="recipe YAML (see configs/ and docs/trainer.md)"),
    resume: bool = typer.Option(False, "--resume", help="continue runs/<name> from its newest checkpoint"),
    iterations: int = typer.Option(None, "--iterations", help="override the recipe's iteration count"),
    seed: int = typer.Option(None, "--seed", help="override the recipe's seed"),
    name: str = typer.Option(None, "--name", help="override the run name (runs/<name>)"),
    policy: str = typer.Option(None, "--policy", help="override the initial policy folder"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar (logs, CI)"),
) -> None:
    """Train a PRM (and policy) with rePIRL or a baseline; writes runs/<name>/."""
    from rich.console import Console
    from rich.markup import escape  # a path or message with [brackets] is printed as it is

    from repirl.vllm_setup import quiet_logs
    from trainer.config import ConfigError, load_config

    console = Console(stderr=True)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # the run has its own progress bar
    overrides = {k: v for k, v in {"iterations": iterations, "seed": seed, "name": name, "policy": policy}.items() if v is not None}
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        console.print(f"[red]config error:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2)
    from trainer.device import resolve_device

    try:  # `device: cuda` on a machine without a GPU: one line naming the key, before any model is loaded
        resolve_device(cfg.device)
    except ValueError as e:
        console.print(f"[red]config error:[/red] {escape(f'{config}: {e}')}", soft_wrap=True)
        raise typer.Exit(2)
    quiet_logs()
    from trainer import distributed

    # the loop's last lines say the held-out accuracy before/after and where summary.json is: no JSON dump here
    try:
        run_training(cfg, resume=resume, console=console, progress=not no_progress)
    finally:  # the command owns the process (`repirl train` or `-m trainer.train_cli` under torchrun): leave the
        distributed.teardown()  # group the Trainer joined (run_training's in-process callers may own theirs)


def run_training(cfg, resume: bool = False, console=None, progress: bool = False) -> dict:
    from trainer.loop import ResumeError

    try:
        if cfg.algorithm == "offline":
            from trainer.offline import run_offline

            return run_offline(cfg, resume=resume, console=console)
        from trainer.loop import Trainer

        return Trainer(cfg, resume=resume, console=console).run(progress=progress)
    except ResumeError as e:
        if console is not None:
            console.print(f"[red]resume error:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2)


def main() -> None:  # `python -m trainer.train_cli ...` (what torchrun launches)
    typer.run(train)


if __name__ == "__main__":
    main()
