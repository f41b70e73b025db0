"""`repirl prm init DIR` / `repirl prm show DIR`: write down, or print, how a PRM folder is served.

A hub folder (no prm.json) is served in its family's layout, worked out at each start (repirl/scoring/families.py);
`init` writes that layout as prm.json once (atomically; also saves hashing the weights at every start), with
`--format`/`--family`/`--reference` for what the folder cannot tell. `show` prints what `repirl serve` would use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(name="prm", help="Inspect PRM folders and write their prm.json.", no_args_is_help=True,
                  add_completion=False)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"repirl prm: {message}", err=True)
    raise typer.Exit(code)


@app.command("init")
def init(
    folder: Annotated[Path, typer.Argument(help="the PRM's model folder (config.json, weights, tokenizer)")],
    format: Annotated[Optional[str], typer.Option("--format", help="token-reward | qwen-step-tag | math-shepherd | "
                                                  "implicit (default: from the folder)")] = None,
    family: Annotated[Optional[str], typer.Option(help="qwen-prm | math-shepherd | rlhflow | eurus-implicit | "
                                                  "token-reward (default: from the folder)")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="implicit PRMs: the reference model's folder")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing prm.json")] = False,
) -> None:
    """Write FOLDER/prm.json: the format and input layout its family's model card documents."""
    from repirl.artifacts import PRM_JSON, ArtifactError, atomic_write_text
    from repirl.scoring.families import detect_prm_config

    target = folder / PRM_JSON
    if target.exists() and not force:
        _fail(f"{target} exists; --force replaces it", code=1)
    try:
        found = detect_prm_config(folder, fmt=format, family=family,
                                  reference_model=str(reference) if reference else None)
    except ArtifactError as e:
        _fail(str(e))
    atomic_write_text(target, found.config.model_dump_json(indent=2))
    typer.echo(f"wrote {target}: {found.family} (format {found.config.format}, revision {found.config.revision})")


@app.command("show")
def show(folder: Annotated[Path, typer.Argument(help="the PRM's model folder")]) -> None:
    """Print what `repirl serve --prm FOLDER` serves: where the config comes from, then the config itself."""
    from repirl.artifacts import PRM_JSON, ArtifactError, check_model_folder, scoring_revision
    from repirl.scoring.families import resolve_prm_config

    try:
        check_model_folder(folder)
        cfg, reason = resolve_prm_config(folder)
    except ArtifactError as e:
        _fail(str(e))
    typer.echo(reason or f"{folder}: from {folder / PRM_JSON}")
    body = cfg.model_dump(mode="json", exclude={"provenance"}, exclude_none=True)
    if not body["prompt_template"].get("first_step_prefix"):  # unset: as in the revision, not shown
        body["prompt_template"].pop("first_step_prefix", None)
    body["scoring_revision"] = scoring_revision(cfg)
    import json

    typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
