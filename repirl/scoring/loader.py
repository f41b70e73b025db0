"""load_scorer: a PRM folder (model + prm.json) -> a StepScorer on the chosen engine."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import sys

from repirl.artifacts import PRMConfig, check_model_folder

Engine = Literal["auto", "vllm", "hf"]


def resolve_engine(fmt: str, engine: Engine = "auto") -> str:
    """auto = vLLM's pooling runner when vLLM is installed and serves the format, transformers otherwise."""
    from repirl.scoring.formats import format_facts
    from repirl.vllm_setup import vllm_available

    if engine not in ("auto", "vllm", "hf"):
        raise ValueError(f"engine must be auto, vllm or hf, got {engine!r}")
    if engine == "auto":
        return "vllm" if format_facts(fmt).on_vllm_by_default and vllm_available() else "hf"
    return engine


def load_scorer(prm_dir: str | Path, engine: Engine = "auto", name: str | None = None,
                config: PRMConfig | None = None, **engine_kwargs):
    """Read prm.json (or, for a hub folder without one, work the config out: repirl/scoring/families.py, saying so on
    stderr), check the folder, build the scorer. Raises ArtifactError naming the path when unusable."""
    if config is None:
        from repirl.scoring.families import resolve_prm_config

        config, reason = resolve_prm_config(prm_dir)
        if reason:
            print(reason, file=sys.stderr)
    cfg = config
    check_model_folder(prm_dir)
    chosen = resolve_engine(cfg.format, engine)
    if chosen == "vllm":
        from repirl.scoring.vllm_engine import VLLMScorer

        return VLLMScorer(prm_dir, cfg, name, **engine_kwargs)
    from repirl.scoring.hf_engine import HFScorer

    return HFScorer(prm_dir, cfg, name, **engine_kwargs)
