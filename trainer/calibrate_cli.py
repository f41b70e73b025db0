"""`repirl calibrate`: fit and store the calibration (raw step reward -> p_correct) of an existing PRM folder."""

from __future__ import annotations

from pathlib import Path

import typer


def _default_policy(prm: Path) -> Path | None:
    """The run's policy beside the PRM (runs/<name>/policy), else the PRM's base model when it is a folder."""
    sibling = prm.parent / "policy"
    if (sibling / "config.json").is_file():
        return sibling
    from repirl.artifacts import load_prm_config

    base = load_prm_config(prm).provenance.base_model
    return Path(base) if base and (Path(base) / "config.json").is_file() else None


def calibrate(
    prm: Path = typer.Option(..., help="PRM folder (with prm.json); its prm.json gains `calibration`."),
    policy: Path = typer.Option(None, help="Policy whose samples are labelled (default: the run's policy beside the "
                                "PRM, else prm.json's base model)."),
    problems: int = typer.Option(40, min=1, help="Dev problems (the evaluator's threshold split, not the test set)."),
    samples: int = typer.Option(4, min=1, help="Policy samples per problem."),
    temperature: float = typer.Option(0.8, min=0.0, help="Sampling temperature."),
    source: str = typer.Option("samples", help="samples | corrupted (references with one wrong result) | both."),
    seed: int = typer.Option(0),
) -> None:
    """Fit p_correct = sigmoid(a * raw + b) on checker-labelled steps and write it into prm.json (atomically)."""
    from repirl.artifacts import PRM_JSON, ArtifactError
    from repirl.vllm_setup import quiet_logs
    from trainer.calibration import calibrate_prm_folder
    from trainer.config import CalibrationConfig

    if source not in ("samples", "corrupted", "both"):
        raise typer.BadParameter(f"--source: samples, corrupted or both, got {source!r}")
    if not (prm / PRM_JSON).is_file():
        raise typer.BadParameter(f"--prm: {prm / PRM_JSON} not found")
    quiet_logs()
    try:
        policy = policy or _default_policy(prm)
    except ArtifactError as e:
        raise typer.BadParameter(f"--prm: {e}") from None
    if policy is None or not (policy / "config.json").is_file():
        raise typer.BadParameter(f"--policy: {policy} is not a model folder (no config.json); give --policy DIR")
    cfg = CalibrationConfig(problems=problems, samples=samples, temperature=temperature, source=source, seed=seed)
    if calibrate_prm_folder(prm, policy, cfg, say=typer.echo) is None:
        raise typer.Exit(1)
