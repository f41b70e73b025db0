"""A vLLM PRM scorer: the pooling runner (`LLM(model=DIR, runner="pooling")`, `token_classify`).

`use_activation=False` returns the head's raw logits per token, identical to transformers' (ENVIRONMENT.md); the
format (repirl.scoring.formats) turns them into token values exactly as the transformers engine does, so the two
engines agree. vLLM pooling does not reuse prefix KV (pooling requests skip the prefix cache), so every call runs
the whole trajectory; the service's Redis prefix cache is what saves work across calls.

Supported formats: those whose model is a pooling model (token-reward: `*ForTokenClassification`; qwen-step-tag:
`Qwen2ForProcessRewardModel`). Causal-LM formats (math-shepherd, implicit) use the transformers engine.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import torch

from repirl.artifacts import ArtifactError, PRMConfig, check_model_folder
from repirl.scoring.base import Item, StepScores
from repirl.scoring.formats import FormatSpec
from repirl.trajectory import TrajectoryEncoder, TrajectoryIds

VLLM_FORMATS = ("token-reward", "qwen-step-tag")


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (e.g. mismatched torchvision) counts as absent
        return False
    return True


class VLLMScorer:
    """StepScorer on vLLM's pooling runner. Build it under `if __name__ == "__main__":` (vLLM spawns its engine)."""

    engine = "vllm"

    def __init__(self, prm_dir: str | Path, cfg: PRMConfig, name: str | None = None, *,
                 max_model_len: int | None = None, dtype: str = "float32", enforce_eager: bool = True, **llm_kwargs):
        from transformers import AutoConfig, AutoTokenizer
        from vllm import LLM, PoolingParams

        prm_dir = check_model_folder(prm_dir)
        if cfg.format not in VLLM_FORMATS:
            raise ArtifactError(f"{prm_dir / 'prm.json'}: format {cfg.format!r} is not served by the vLLM engine "
                                f"(supported: {', '.join(VLLM_FORMATS)}); use engine 'hf'")
        self.prm_dir, self.config, self.name, self.revision = prm_dir, cfg, name or prm_dir.name, cfg.revision
        self.tokenizer = AutoTokenizer.from_pretrained(prm_dir)
        self.encoder = TrajectoryEncoder(self.tokenizer, cfg.prompt_template, cfg.step_separator)
        self.spec = FormatSpec.resolve(cfg, self.tokenizer, str(prm_dir / "prm.json"))
        hf_cfg = AutoConfig.from_pretrained(prm_dir)
        self.max_model_len = max_model_len or min(int(getattr(hf_cfg, "max_position_embeddings", 2048)), 8192)
        self.llm = LLM(model=str(prm_dir), runner="pooling", dtype=dtype, enforce_eager=enforce_eager,
                       max_model_len=self.max_model_len, **llm_kwargs)
        # raw logits (the format applies its own softmax). Qwen2ForProcessRewardModel pools by STEP in vLLM: it
        # returns rows only at the step tag, so the tag id (resolved from the tokenizer) is passed on.
        step_tag = self.spec.step_tag_id if cfg.format == "qwen-step-tag" else None
        self._params = PoolingParams(use_activation=False, step_tag_id=step_tag)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop vLLM's engine-core process now. Left to interpreter exit, it outlived a SIGTERM'd server (seen)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def score(self, items: Sequence[Item]) -> list[StepScores]:
        return self.score_encoded([self.encoder.encode(q, list(steps)) for q, steps in items])

    def score_encoded(self, trajs: Sequence[TrajectoryIds]) -> list[StepScores]:
        """`score` on trajectories already encoded by `self.encoder` (the service encodes once, for its cache)."""
        for t in trajs:
            if len(t.ids) > self.max_model_len:
                raise ValueError(f"trajectory of {len(t.ids)} tokens exceeds max_model_len {self.max_model_len}")
        if not trajs:
            return []
        prompts = [{"prompt_token_ids": t.ids} for t in trajs]
        with self._lock:
            outs = self.llm.encode(prompts, pooling_params=self._params, pooling_task="token_classify",
                                   use_tqdm=False)
        results = []
        for t, out in zip(trajs, outs):
            data = torch.as_tensor(out.outputs.data)
            if data.dim() == 1:
                data = data.unsqueeze(-1)
            values = self.spec.values_from_logits(data).tolist()
            if self._params.step_tag_id is not None:  # rows at the tag positions only: place them
                positions = [i for i, tok in enumerate(t.ids) if tok == self._params.step_tag_id]
                if len(positions) != len(values):
                    raise RuntimeError(f"vLLM returned {len(values)} step rows for {len(positions)} step tags")
                full = [0.0] * len(t.ids)
                for pos, v in zip(positions, values):
                    full[pos] = v
                values = full
            results.append(self.spec.step_scores(t, values, tokens_computed=len(t.ids)))
        return results
