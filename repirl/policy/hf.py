"""A transformers policy for tiny models and tests: an explicit sampling loop with a KV cache.

Each prefix is sampled as a batch of n rows sharing one prompt, so there is no padding to get wrong: the prompt runs
once and its KV cache is repeated for the n rows (running n copies of it cost n times the prompt's compute: a beam
of 64 samples on a 1k-token prefix was 64k tokens per step). A row stops at EOS or when its decoded text contains the
separator. Sampling uses a torch.Generator seeded per prefix (reproducible). Work that nobody waits for any more
(repirl/cancel.py: a search whose client left) stops between two decode steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from repirl.artifacts import check_model_folder, load_policy_config
from repirl.cancel import raise_if_stopped
from repirl.policy.base import PolicyError, Prefix, SamplingConfig, StepSample, encoder_for, make_step, prefix_seed


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail outside the smallest set of tokens whose mass reaches top_p (the top token always stays)."""
    if top_p >= 1.0:
        return probs
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(dim=-1)
    drop = (cum - sorted_p) >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, idx, sorted_p)


class TransformersPolicy:
    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from repirl.devices import resolve_device, resolve_dtype

        device = resolve_device(device)  # "auto": the GPU when torch sees one
        dtype = resolve_dtype(dtype, device)  # "auto": bf16 on a GPU, float32 on the CPU
        model_dir = check_model_folder(model_dir)
        self.name = str(model_dir)
        self.config = load_policy_config(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.device = device
        self.encoder = encoder_for(self.tokenizer, self.config)
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {e for e in eos + [self.tokenizer.eos_token_id] if e is not None}
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.context_tokens = self.max_len  # prompt + generated (the service checks questions against it)

    @torch.no_grad()
    def sample_steps(self, prefixes: Sequence[Prefix], params: SamplingConfig) -> list[list[StepSample]]:
        return [self._sample(self.encoder.encode(q, steps).ids, params, prefix_seed(params.seed, i),
                             left=params.n * (len(prefixes) - i))
                for i, (q, steps) in enumerate(prefixes)]

    def _sample(self, prompt: list[int], params: SamplingConfig, seed: int | None, left: int) -> list[StepSample]:
        """`left`: the samples of this call not done yet (counted as dropped when the work is stopped)."""
        sep = self.config.step_separator
        budget = min(params.max_tokens, self.max_len - len(prompt))
        if budget < 1:
            raise PolicyError(f"prompt of {len(prompt)} tokens leaves no room under "
                              f"max_position_embeddings={self.max_len}")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        n = params.n
        cur = torch.tensor([prompt], device=self.device)
        past = None
        out_ids: list[list[int]] = [[] for _ in range(n)]
        out_lp: list[list[float]] = [[] for _ in range(n)]
        done = [False] * n
        eos_hit = [False] * n
        for step in range(budget):
            raise_if_stopped(f"sampling {n} x {budget} tokens", units=left)
            res = self.model(input_ids=cur, past_key_values=past, use_cache=True)
            past = res.past_key_values
            logits = res.logits[:, -1, :].float()
            if step == 0 and n > 1:  # the prompt ran once: its cache and its next-token logits serve every row
                past.batch_repeat_interleave(n)
                logits = logits.expand(n, -1)
            logp = torch.log_softmax(logits, dim=-1)
            if params.temperature == 0:
                nxt = logits.argmax(dim=-1)
            else:
                probs = _top_p_filter(torch.softmax(logits / params.temperature, dim=-1), params.top_p)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            for r in range(n):
                if done[r]:
                    continue
                tok = int(nxt[r])
                if tok in self.eos_ids:
                    done[r] = eos_hit[r] = True
                    continue
                out_ids[r].append(tok)
                out_lp[r].append(float(logp[r, tok]))
                if sep in self.tokenizer.decode(out_ids[r][-8 * len(sep):], skip_special_tokens=True):
                    done[r] = True
            if all(done):
                break
            cur = nxt.unsqueeze(-1)  # finished rows keep decoding (ignored) so the batch stays rectangular
        return [make_step(self.tokenizer.decode(ids, skip_special_tokens=True), ids, lp, sep,
                          hit_eos=eos_hit[r], hit_length=not done[r])
                for r, (ids, lp) in enumerate(zip(out_ids, out_lp))]
