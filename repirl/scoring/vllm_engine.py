"""A vLLM PRM scorer: the pooling runner (`LLM(model=DIR, runner="pooling")`, `token_classify`).

`use_activation=False` returns the head's raw logits per token, identical to transformers' (ENVIRONMENT.md); the
format (repirl.scoring.formats) turns them into token values exactly as the transformers engine does, so the two
engines agree.

Prefix reuse (token formats on the pooling runner, `reuse_prefixes`, default on). vLLM 0.32 enables its prefix cache
for causal pooling models with ALL pooling, but a `token_classify` request does not read it: PoolingParams sets
`skip_reading_prefix_cache=True` for token tasks (vllm/pooling_params.py:127-134), because a request served from
the cache gets rows only for the tokens it computed. This engine sets it to False and keeps the token values of every
full KV block it has seen (`BlockValues`, keyed like vLLM's block hashes: the ids of the block and all before it),
so the rows vLLM skipped (`num_cached_tokens`, whole blocks) are filled in from there; a block it no longer holds
means that item runs again without the cache. Items of one call that share a step prefix (beam expansions, best-of-N
candidates) have it computed once first, so the others read it from vLLM's cache. Reuse is at vLLM's block
granularity: the tokens of a prefix past its last full block are computed again (block_size 32 here, the least
vLLM's CPU attention takes: its kernel block sizes are `MultipleOf(32)`, v1/attention/backends/cpu_attn.py, and
block_size 16 fails the engine start with "No common block size for 16", v1/worker/utils.py
`select_common_block_size`; 16 on GPUs). The floor this puts on a beam search: docs/search.md, "Benchmark". `tokens_computed` is what vLLM computed (length - num_cached_tokens).
A tenant's items (TrajectoryIds.scope) carry it as vLLM's `cache_salt`, so tenants never share cached blocks.
Step-tag PRMs (vLLM's STEP pooler) are not prefix-cached by vLLM (config/model.py `is_prefix_caching_supported`).

Cancellation (repirl/cancel.py): every engine call goes through `cancel.encode` (or `cancel.generate` for
`implicit`), which steps vLLM's engine itself: a call whose every item is gone stops between engine steps
(WorkCancelled), and in a batch that mixes requests the items nobody waits for are aborted while the others run on;
`score_encoded` returns None for those (only the micro-batcher, which asked, sees them).

Supported formats: those whose model is a pooling model (token-reward: `*ForTokenClassification`; qwen-step-tag:
`Qwen2ForProcessRewardModel`), and `implicit` (PRIME's beta * log(pi_phi / pi_ref); the rePIRL log-prob PRM) on the
generate runner: `prompt_logprobs=0` returns log pi(x_t | x_<t) of every trajectory token, from pi_phi's engine and
from pi_ref's (a reference whose weights are all zero, as the rePIRL export writes, is exactly uniform: -log V, no
second engine). Those requests skip vLLM's prefix cache, so `engine: auto` keeps `implicit` on transformers, whose
KV reuse computes shared prefixes once; ask for `vllm` explicitly. math-shepherd uses the transformers engine.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from repirl import cancel
from repirl.artifacts import ArtifactError, PRMConfig, check_model_folder, reference_dir, scoring_revision
from repirl.scoring.base import Item, StepScores
from repirl.scoring.formats import FORMATS, FormatSpec
from repirl.trajectory import TrajectoryEncoder, TrajectoryIds

# what `engine: auto` puts on vLLM (pooling models), and what `engine: vllm` can serve at all (formats.py says)
VLLM_FORMATS = tuple(f.name for f in FORMATS.values() if f.on_vllm_by_default)
VLLM_SERVABLE = tuple(f.name for f in FORMATS.values() if f.on_vllm)


class BlockValues:
    """Token values of full KV blocks, LRU, at most `max_tokens` values. A block's key hashes its scope, its ids and
    the key of the block before it (as vLLM's block hashes do), so `values(ids, n)` finds the first n tokens' values
    of any sequence seen before with the same first n ids, whatever followed them."""

    def __init__(self, block_size: int, max_tokens: int = 1 << 20):
        self.block_size, self.max_blocks = block_size, max(1, max_tokens // block_size)
        self._store: OrderedDict[bytes, array] = OrderedDict()

    def _keys(self, ids: list[int], n_blocks: int, scope: str):
        h = hashlib.blake2b(scope.encode(), digest_size=16).digest()
        b = self.block_size
        for k in range(n_blocks):
            h = hashlib.blake2b(h + array("q", ids[k * b:(k + 1) * b]).tobytes(), digest_size=16).digest()
            yield h

    def values(self, ids: list[int], n: int, scope: str = "") -> list[float] | None:
        """The values of ids[:n] (n a multiple of the block size), or None when a block is not held."""
        out: list[float] = []
        for key in self._keys(ids, n // self.block_size, scope):
            block = self._store.get(key)
            if block is None:
                return None
            self._store.move_to_end(key)
            out.extend(block)
        return out

    def put(self, ids: list[int], values: list[float], scope: str = "") -> None:
        b = self.block_size
        for k, key in enumerate(self._keys(ids, len(ids) // b, scope)):
            if key in self._store:
                self._store.move_to_end(key)
            else:
                self._store[key] = array("f", values[k * b:(k + 1) * b])
        while len(self._store) > self.max_blocks:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()


class VLLMScorer:
    """StepScorer on vLLM's pooling runner. Build it under `if __name__ == "__main__":` (vLLM spawns its engine)."""

    engine = "vllm"

    def __init__(self, prm_dir: str | Path, cfg: PRMConfig, name: str | None = None, *,
                 max_model_len: int | None = None, dtype: str = "float32", enforce_eager: bool = True,
                 reuse_prefixes: bool = True, **llm_kwargs):
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
        step_tag = None if self.spec.facts.has_token_rewards else self.spec.step_tag_id
        # module doc: token formats read vLLM's prefix cache (ALL pooling); STEP pooling cannot
        self.reuse_prefixes = reuse_prefixes and step_tag is None
        if self.reuse_prefixes:
            from vllm.platforms import current_platform

            llm_kwargs.setdefault("enable_prefix_caching", True)
            if current_platform.is_cpu():
                llm_kwargs.setdefault("block_size", 32)  # CPU default 128: little of a search tree's prefixes
        self.llm = start_llm(prm_dir, f"PRM {self.name!r}", runner="pooling", dtype=dtype, enforce_eager=enforce_eager,
                             max_model_len=self.max_model_len, **llm_kwargs)
        # raw logits (the format applies its own softmax). Qwen2ForProcessRewardModel pools by STEP in vLLM: it
        # returns rows only at the step tag, so the tag id (resolved from the tokenizer) is passed on.
        self._params = PoolingParams(use_activation=False, step_tag_id=step_tag)
        self._cached_params = PoolingParams(use_activation=False, skip_reading_prefix_cache=False)
        cache = self.llm.llm_engine.vllm_config.cache_config
        self.blocks = BlockValues(cache.block_size) if self.reuse_prefixes and cache.enable_prefix_caching else None

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

    def score_encoded(self, trajs: Sequence[TrajectoryIds]) -> list[StepScores | None]:
        """`score` on trajectories already encoded by `self.encoder` (the service encodes once, for its cache).
        None for an item the caller dropped mid-call (`cancel.stop_when(..., item_gone)`; module doc)."""
        for t in trajs:
            if len(t.ids) > self.context_tokens:
                raise ValueError(f"trajectory of {len(t.ids)} tokens exceeds max_model_len {self.context_tokens}")
        if not trajs:
            return []
        prompts = [{"prompt_token_ids": t.ids} for t in trajs]
        if self.spec.facts.two_models:
            return self._score_implicit(trajs, prompts)
        if self.blocks is not None:
            with self._lock:
                return self._score_reusing(list(trajs))
        with self._lock:
            outs = cancel.encode(self.llm, prompts, self._params, items=range(len(prompts)))
        results: list[StepScores | None] = []
        for t, out in zip(trajs, outs):
            if out is None:  # aborted: nobody waits for it
                results.append(None)
                continue
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
            # what vLLM computed: a request that read its prefix cache (never, with vLLM's own token_classify
            # defaults) computed the rest only
            results.append(self.spec.step_scores(t, values, tokens_computed=len(t.ids) - (out.num_cached_tokens or 0)))
        return results

    # ---- prefix reuse (module doc) -------------------------------------------------------------------------
    def _encode_cached(self, trajs: list[TrajectoryIds], items: Sequence[int] | None
                       ) -> list[tuple[list[float] | None, int] | None]:
        """(all token values or None when a skipped block is not held, tokens vLLM computed) per item; None for an
        item aborted mid-call (`items`: the caller's item index per trajectory, cancel.encode)."""
        prompts = [{"prompt_token_ids": t.ids, **({"cache_salt": t.scope} if t.scope else {})} for t in trajs]
        outs = cancel.encode(self.llm, prompts, self._cached_params, items=items)
        got: list[tuple[list[float] | None, int] | None] = []
        for t, out in zip(trajs, outs):
            if out is None:
                got.append(None)
                continue
            fresh = torch.as_tensor(out.outputs.data).reshape(-1, 1)
            fresh = self.spec.values_from_logits(fresh).tolist()
            skipped = len(t.ids) - len(fresh)  # whole blocks
            head = (self.blocks.values(t.ids, skipped, t.scope) if skipped % self.blocks.block_size == 0 else None
                    ) if skipped else []
            values = None if head is None else head + fresh
            if values is not None:
                self.blocks.put(t.ids, values, t.scope)
            got.append((values, len(fresh)))
        return got

    def _score_reusing(self, trajs: list[TrajectoryIds]) -> list[StepScores | None]:
        # step prefixes two or more items share (the prompt included) run first, once: the items then read them
        # from vLLM's cache instead of each computing them in the same batch
        counts: dict[tuple, int] = {}
        prefixes: dict[tuple, TrajectoryIds] = {}
        for t in trajs:
            for k in range(len(t.step_spans)):  # proper step prefixes (k = 0: the prompt)
                end = t.prefix_len(k)
                key = (t.scope, *t.ids[:end])
                counts[key] = counts.get(key, 0) + 1
                if end:
                    prefixes.setdefault(key, TrajectoryIds(t.ids[:end], min(t.prompt_len, end), [], t.scope))
        shared = [key for key in prefixes if counts[key] > 1]
        # only the longest shared prefixes (a shorter one is computed with them), and not those whose full blocks
        # were computed before (still in vLLM's cache, as far as we know; the tail past them is computed anyway)
        b = self.blocks.block_size
        longest = [prefixes[key] for key in shared
                   if not any(len(o) > len(key) and o[:len(key)] == key for o in shared)
                   and self.blocks.values(prefixes[key].ids, len(key[1:]) // b * b, key[0]) is None]
        # (a shared prefix serves several items: it is never aborted alone, only with the whole call)
        extra = sum(n for _, n in self._encode_cached(longest, None)) if longest else 0
        got = self._encode_cached(trajs, range(len(trajs)))
        # vLLM still held blocks we had dropped (or blocks an aborted request computed: we never got their values)
        redo = [i for i, g in enumerate(got) if g is not None and g[0] is None]
        if redo:  # those items again, without the cache
            outs = cancel.encode(self.llm, [{"prompt_token_ids": trajs[i].ids} for i in redo], self._params,
                                 items=redo)
            for i, out in zip(redo, outs):
                if out is None:
                    got[i] = None
                    continue
                values = self.spec.values_from_logits(torch.as_tensor(out.outputs.data).reshape(-1, 1)).tolist()
                self.blocks.put(trajs[i].ids, values, trajs[i].scope)
                # counted once: a rerun is rare (the values kept outnumber vLLM's KV cache), and no item may count
                # more than its length (the service's tokens_reused = total - computed)
                got[i] = (values, len(values))
        results = [None if g is None else self.spec.step_scores(t, g[0], tokens_computed=g[1])
                   for t, g in zip(trajs, got)]
        for r in results:  # the shared prefixes' tokens go to the items that read them from the cache
            if r is None:
                continue
            give = min(extra, r.tokens_total - r.tokens_computed)
            r.tokens_computed += give
            extra -= give
        return results

    def forget(self) -> None:
        """Drop every reusable prefix (vLLM's prefix cache and the values kept for it): a cold start (benchmarks)."""
        self.llm.reset_prefix_cache()
        if self.blocks is not None:
            self.blocks.clear()

    def _score_implicit(self, trajs: Sequence[TrajectoryIds], prompts: list[dict]) -> list[StepScores]:
        params = [self._params] * len(prompts)
        with self._lock:  # stops between engine steps when every item is gone (not item by item)
            phi = cancel.generate(self.llm, prompts, params)
            ref = cancel.generate(self.ref_llm, prompts, params) if self.ref_llm is not None else None
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
