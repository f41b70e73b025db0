"""vLLM in-process policy (`vllm.LLM`, prefix caching on): the sibling beams of a search share their prompt, so
the prefix cache serves the common part of every expansion.

vLLM starts its engine core in a spawned process: scripts that build this policy must do it under
`if __name__ == "__main__":`. `LLM` is not thread-safe; a lock serialises calls (the server runs searches in threads).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

from repirl.artifacts import check_model_folder, load_policy_config
from repirl.policy.base import (Prefix, SamplingConfig, StepSample, encoder_for, fill_greedy, make_step, prefix_seed,
                                request_n)


def _default_engine_kwargs(model_dir: Path) -> dict[str, Any]:
    import json

    import torch

    on_gpu = torch.cuda.is_available()
    max_pos = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings") or 4096
    return {
        "dtype": "auto" if on_gpu else "float32",  # the CPU backend wants float32 for tiny models
        "enforce_eager": not on_gpu,
        "max_model_len": min(int(max_pos), 4096),  # search prompts are short; this bounds the KV cache per sequence
        "enable_prefix_caching": True,
    }


class VLLMPolicy:
    def __init__(self, model_dir: str | Path, **engine_kwargs):
        from repirl.vllm_setup import start_llm

        model_dir = check_model_folder(model_dir)
        self.name = str(model_dir)
        self.config = load_policy_config(model_dir)
        kwargs = _default_engine_kwargs(Path(model_dir)) | engine_kwargs  # kv_cache_gib= among them
        self.llm = start_llm(model_dir, f"policy {model_dir}", **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.encoder = encoder_for(self.tokenizer, self.config)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop vLLM's engine-core process now. Left to interpreter exit it outlived a SIGTERM'd server (seen with
        `python -m server --policy vllm:DIR`): the app's shutdown calls this. Idempotent."""
        engine = getattr(self, "llm", None) and getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is None:
            return
        # let a running generate() finish first, but never hang a shutdown on it
        locked = self._lock.acquire(timeout=30)
        try:
            core.shutdown()
        finally:
            if locked:
                self._lock.release()

    def sample_steps(self, prefixes: Sequence[Prefix], params: SamplingConfig) -> list[list[StepSample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prefixes:
            return []
        sep = self.config.step_separator
        prompts = [TokensPrompt(prompt_token_ids=self.encoder.encode(q, steps).ids) for q, steps in prefixes]
        sampling = [
            SamplingParams(n=request_n(params), temperature=params.temperature, top_p=params.top_p,
                           max_tokens=params.max_tokens, seed=prefix_seed(params.seed, i), stop=[sep],
                           logprobs=0, skip_special_tokens=True)
            for i in range(len(prompts))
        ]
        with self._lock:
            outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        result = []
        for out in outputs:
            samples = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                lps = [float(pos[tok].logprob) for tok, pos in zip(c.token_ids, c.logprobs or [])] if c.logprobs else []
                hit_eos = c.finish_reason == "stop" and c.stop_reason is None
                samples.append(make_step(c.text, list(c.token_ids), lps, sep, hit_eos=hit_eos,
                                         hit_length=c.finish_reason == "length"))
            result.append(fill_greedy(samples, params.n))
        return result
