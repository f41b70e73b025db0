"""A vLLM PRM scorer: the pooling runner (`LLM(model=DIR, runner="pooling")`, `token_classify`).

`use_activation=False` returns the head's raw logits per token, identical to transformers' (ENVIRONMENT.md); the
format (repirl.scoring.formats) turns them into token values exactly as the transformers engine does, so the two
engines agree. vLLM pooling does not reuse prefix KV (pooling requests skip the prefix cache), so every call runs
the whole trajectory; the service's Redis prefix cache is what saves work across calls.

Supported formats: those whose model is a pooling model (token-reward: `*ForTokenClassification`; qwen-step-tag:
`Qwen2ForProcessRewardModel`), and `implicit` (PRIME's beta * log(pi_phi / pi_ref); the rePIRL log-prob PRM) on the
generate runner: `prompt_logprobs=0` returns log pi(x_t | x_<t) of every trajectory token, from pi_phi's engine and
from pi_ref's (a reference whose weights are all zero, as the rePIRL export writes, is exactly uniform: -log V, no
second engine). Those requests skip vLLM's prefix cache, so `engine: auto` keeps `implicit` on transformers, whose
KV reuse computes shared prefixes once; ask for `vllm` explicitly. math-shepherd uses the transformers engine.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import torch

from repirl.artifacts import ArtifactError, PRMConfig, check_model_folder, reference_dir, scoring_revision
from repirl.scoring.base import Item, StepScores
from repirl.scoring.formats import FORMATS, FormatSpec
from repirl.trajectory import TrajectoryEncoder, TrajectoryIds

# what `engine: auto` puts on vLLM (pooling models), and what `engine: vllm` can serve at all (formats.py says)
VLLM_FORMATS = tuple(f.name for f in FORMATS.values() if f.on_vllm_by_default)
VLLM_SERVABLE = tuple(f.name for f in FORMATS.values() if f.on_vllm)


class VLLMScorer:
    """StepScorer on vLLM's pooling runner. Build it under `if __name__ == "__main__":` (vLLM spawns its engine)."""

    engine = "vllm"

    def __init__(self, prm_dir: str | Path, cfg: PRMConfig, name: str | None = None, *,
                 max_model_len: int | None = None, dtype: str = "float32", enforce_eager: bool = True, **llm_kwargs):
        from transformers import AutoConfig, AutoTokenizer
        from vllm import PoolingParams

        from repirl.vllm_setup import start_llm

        prm_dir = check_model_folder(prm_dir)
        if cfg.format not in VLLM_SERVABLE:
            raise ArtifactError(f"{prm_dir / 'prm.json'}: format {cfg.format!r} is not served by the vLLM engine "
                                f"(supported: {', '.join(VLLM_SERVABLE)}); use engine 'hf'")
        self.prm_dir, self.config, self.name, self.revision = prm_dir, cfg, name or prm_dir.name, scoring_revision(cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(prm_dir)
        self.encoder = TrajectoryEncoder(self.tokenizer, cfg.prompt_template, cfg.step_separator)
        self.spec = FormatSpec.resolve(cfg, self.tokenizer, str(prm_dir / "prm.json"))
        hf_cfg = AutoConfig.from_pretrained(prm_dir)
        self.max_model_len = max_model_len or min(int(getattr(hf_cfg, "max_position_embeddings", 2048)), 8192)
        # the longest trajectory it scores (implicit generates one token after it)
        self.context_tokens = self.max_model_len - (1 if self.spec.facts.two_models else 0)
        self._lock = threading.Lock()
        if self.spec.facts.two_models:
            self._init_implicit(prm_dir, cfg, dtype, enforce_eager, llm_kwargs)
            return
        self.llm = start_llm(prm_dir, f"PRM {self.name!r}", runner="pooling", dtype=dtype, enforce_eager=enforce_eager,
                             max_model_len=self.max_model_len, **llm_kwargs)
        # raw logits (the format applies its own softmax). Qwen2ForProcessRewardModel pools by STEP in vLLM: it
        # returns rows only at the step tag, so the tag id (resolved from the tokenizer) is passed on.
        step_tag = None if self.spec.facts.has_token_rewards else self.spec.step_tag_id
        self._params = PoolingParams(use_activation=False, step_tag_id=step_tag)

    def _init_implicit(self, prm_dir: Path, cfg: PRMConfig, dtype: str, enforce_eager: bool, llm_kwargs) -> None:
        from vllm import SamplingParams

        from repirl.vllm_setup import start_llm

        ref = reference_dir(prm_dir, cfg)
        kw = dict(runner="generate", dtype=dtype, enforce_eager=enforce_eager, max_model_len=self.max_model_len,
                  **llm_kwargs)
        self.llm = start_llm(prm_dir, f"PRM {self.name!r}", **kw)
        self.uniform_ref_logprob = _uniform_logprob(ref)
        self.ref_llm = (None if self.uniform_ref_logprob is not None
                        else start_llm(ref, f"the reference model of PRM {self.name!r}", **kw))
        # one generated token is the least vLLM runs; its logprobs are not used. prompt_logprobs=0: the prompt token's
        # own log-prob only (raw, before any temperature: vLLM's default logprobs_mode)
        self._params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)

    def engine_dead(self) -> bool:
        """True once an engine-core process has died: every later call would fail (the service reports it)."""
        from repirl.vllm_setup import engine_dead

        return any(engine_dead(llm) for llm in (self.llm, getattr(self, "ref_llm", None)) if llm is not None)

    def close(self) -> None:
        """Stop vLLM's engine-core process(es) now. Left to interpreter exit, one outlived a SIGTERM'd server (seen)."""
        for llm in (self.llm, getattr(self, "ref_llm", None)):
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None:
                core.shutdown()

    def score(self, items: Sequence[Item]) -> list[StepScores]:
        return self.score_encoded([self.encoder.encode(q, list(steps)) for q, steps in items])

    def score_encoded(self, trajs: Sequence[TrajectoryIds]) -> list[StepScores]:
        """`score` on trajectories already encoded by `self.encoder` (the service encodes once, for its cache)."""
        for t in trajs:
            if len(t.ids) > self.context_tokens:
                raise ValueError(f"trajectory of {len(t.ids)} tokens exceeds max_model_len {self.context_tokens}")
        if not trajs:
            return []
        prompts = [{"prompt_token_ids": t.ids} for t in trajs]
        if self.spec.facts.two_models:
            return self._score_implicit(trajs, prompts)
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

    def _score_implicit(self, trajs: Sequence[TrajectoryIds], prompts: list[dict]) -> list[StepScores]:
        with self._lock:
            phi = self.llm.generate(prompts, self._params, use_tqdm=False)
            ref = self.ref_llm.generate(prompts, self._params, use_tqdm=False) if self.ref_llm is not None else None
        results = []
        for i, t in enumerate(trajs):
            lp_phi = _prompt_logprobs(phi[i], t.ids)
            lp_ref = _prompt_logprobs(ref[i], t.ids) if ref is not None else [self.uniform_ref_logprob] * len(t.ids)
            # token 0 has no previous position: value 0, as in the transformers engine (never inside a step span)
            values = [0.0] + [self.spec.beta * (a - b) for a, b in zip(lp_phi[1:], lp_ref[1:])]
            results.append(self.spec.step_scores(t, values, tokens_computed=len(t.ids)))
        return results


def _prompt_logprobs(out, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) from a RequestOutput with prompt_logprobs; position 0 (no context) is 0.0."""
    rows = out.prompt_logprobs
    if rows is None or len(rows) != len(ids):
        raise RuntimeError(f"vLLM returned {0 if rows is None else len(rows)} prompt log-probs for {len(ids)} tokens")
    return [0.0] + [float(rows[t][ids[t]].logprob) for t in range(1, len(ids))]


def _uniform_logprob(ref_dir: Path) -> float | None:
    """-log V when the reference model's weights are all zero (its logits are then exactly 0: a uniform
    distribution over its V output rows), else None (the reference needs its own engine)."""
    import math

    from safetensors import safe_open
    from transformers import AutoConfig

    files = sorted(ref_dir.glob("*.safetensors"))
    if not files:
        return None
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if torch.count_nonzero(st.get_tensor(key)):
                    return None
    return -math.log(int(AutoConfig.from_pretrained(ref_dir).vocab_size))
