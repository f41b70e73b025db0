"""`repirl eval processbench`: options only; the work is in trainer/evaluation/processbench.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer


def processbench(
    prm: Annotated[str, typer.Option(help="a PRM folder (prm.json or a hub folder) or a service URL "
                                     "(http://host:port: scored by its /v1/score)")],
    data: Annotated[list[Path], typer.Option(help="ProcessBench JSONL (problem, steps, label; repeat: one file per "
                                             "subset unless rows carry 'subset')")] = [],  # noqa: B006
    threshold: Annotated[Optional[float], typer.Option(help="first step below it is the predicted error "
                                                       "(default: chosen on --threshold-split)")] = None,
    threshold_split: Annotated[Optional[str], typer.Option(help="subset the threshold is chosen on (best F1); "
                                                           "default gsm8k when present, else the first")] = None,
    model: Annotated[Optional[str], typer.Option(help="with a URL: which served PRM (default: the service's)")] = None,
    api_key_env: Annotated[str, typer.Option(help="with a URL: environment variable holding the API key")]
    = "REPIRL_API_KEY",
    engine: Annotated[str, typer.Option(help="with a folder: hf | vllm | auto")] = "hf",
    write_demo: Annotated[Optional[Path], typer.Option(help="first write a demo file here (arithmetic task and "
                                                       "GSM8K test with planted errors) and evaluate on it")] = None,
    demo_problems: Annotated[int, typer.Option(min=1, help="problems per demo subset (2 rows each)")] = 40,
    out: Annotated[Optional[Path], typer.Option(help="also write the result as JSON here")] = None,
    seed: int = 0,
) -> None:
    """ProcessBench for any PRM: per-subset accuracy on erroneous and correct solutions and their F1."""
    from rich.console import Console

    from trainer.evaluation import processbench as pb

    files = list(data)
    if write_demo is not None:
        rows = pb.arithmetic_rows(demo_problems, seed) + pb.gsm8k_rows(demo_problems, seed)
        files.append(pb.write_rows(rows, write_demo))
        typer.echo(f"wrote {write_demo}: {len(rows)} solutions (arithmetic, gsm8k)", err=True)
    if not files:
        raise typer.BadParameter("give --data FILE.jsonl (or --write-demo FILE)", param_hint="--data")
    try:
        rows = pb.load_rows(files)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--data") from None
    if prm.startswith(("http://", "https://")):
        score = pb.service_scorer(prm, model=model, api_key=os.environ.get(api_key_env))
    else:
        from repirl.artifacts import ArtifactError

        try:
            score = pb.folder_scorer(prm, engine=engine)
        except ArtifactError as e:
            raise typer.BadParameter(str(e), param_hint="--prm") from None
    scores = score(rows)
    try:
        result = pb.evaluate(rows, scores, threshold=threshold, threshold_split=threshold_split)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--threshold-split") from None
    result.update({"prm": prm, "data": [str(f) for f in files], "solutions": len(rows)})
    Console(soft_wrap=True).print(pb.table(result, f"ProcessBench: {prm}"))
    if out is not None:
        from repirl.artifacts import atomic_write_text

        atomic_write_text(out, json.dumps(result, indent=1))
        typer.echo(f"wrote {out}", err=True)
