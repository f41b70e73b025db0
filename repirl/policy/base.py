"""The StepPolicy interface: sample the next reasoning step for many (question, steps so far) prefixes at once.

Every engine builds its prompts through `repirl.trajectory.TrajectoryEncoder` (prompt ids + each step + SEP, each
piece tokenized on its own), so a prefix has the same token ids in the policy, the PRM and every cache key. A step
ends at the step separator, at EOS, or when it states the final answer ("Answer: 12", "#### 12", "\\boxed{12}").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

from repirl.answers import extract_answer
from repirl.artifacts import PolicyConfig
from repirl.trajectory import TrajectoryEncoder

Prefix = tuple[str, Sequence[str]]  # (question, steps so far)
FinishReason = Literal["sep", "eos", "answer", "length"]


# Seeds every engine takes: vLLM's request serializer overflowed on 2^64 and then hung the next request, and a vLLM
# server's OpenAI API accepts int64 only. Requests validate to [0, SEED_LIMIT); derived seeds wrap into it.
SEED_LIMIT = 1 << 63


class PolicyError(RuntimeError):
    """A policy engine failed (remote server unreachable, bad response, prompt too long); the message says which.

    `str(e)` is the whole story, for the service's log (a remote server's URL, its answer); `public` is what a client
    may read (the service's 503 body): no addresses, no upstream bodies."""

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = public if public is not None else message


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 1  # samples per prefix
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 64  # per step
    seed: int | None = None  # prefix i of a call is sampled with seed + i (so a batch never repeats one stream)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class StepSample:
    text: str  # the step, without the separator, stripped
    token_ids: list[int]  # what the engine generated (separator tokens included when it stopped there; no EOS)
    logprobs: list[float]  # the model's log-probability of each generated token (raw logits, before T / top-p)
    finished: bool  # the trajectory is complete after this step (EOS, or the step states the final answer)
    finish_reason: FinishReason
    meta: dict = field(default_factory=dict)

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))


class StepPolicy(Protocol):
    """sample_steps(prefixes, params) -> for each prefix, `params.n` samples of its next step."""

    name: str
    config: PolicyConfig
    encoder: TrajectoryEncoder

    def sample_steps(self, prefixes: Sequence[Prefix], params: SamplingConfig) -> list[list[StepSample]]: ...


def make_step(raw_text: str, token_ids: list[int], logprobs: list[float], sep: str, hit_eos: bool,
              hit_length: bool) -> StepSample:
    """Normalise one raw generation into a StepSample (the one rule all engines share).

    The separator (and anything an engine let through after it) is cut off. A step that states an answer finishes
    the trajectory whatever came after it; a step cut by max_tokens is kept but marked "length" (not finished), so
    the search can still extend or drop it.
    """
    stopped_at_sep = sep in raw_text
    text = raw_text.split(sep, 1)[0].strip()
    if extract_answer(text) is not None:
        reason: FinishReason = "answer"
    elif stopped_at_sep:
        reason = "sep"
    elif hit_eos:
        reason = "eos"
    elif hit_length:
        reason = "length"
    else:
        reason = "sep"  # the engine stopped on the separator and already removed it (vLLM's `stop`)
    return StepSample(text=text, token_ids=list(token_ids), logprobs=list(logprobs),
                      finished=reason in ("answer", "eos"), finish_reason=reason)


def request_n(params: SamplingConfig) -> int:
    """Samples to ask an engine for: greedy sampling is deterministic, and vLLM refuses n > 1 with temperature 0."""
    return 1 if params.temperature == 0 else params.n


def fill_greedy(samples: list[StepSample], n: int) -> list[StepSample]:
    """n copies of the one greedy sample (separate objects: callers may annotate them)."""
    if len(samples) >= n:
        return samples
    s = samples[0]
    return samples + [StepSample(s.text, list(s.token_ids), list(s.logprobs), s.finished, s.finish_reason, dict(s.meta))
                      for _ in range(n - len(samples))]


def prefix_seed(seed: int | None, i: int) -> int | None:
    return None if seed is None else (seed + i) % SEED_LIMIT


def encoder_for(tokenizer, config: PolicyConfig) -> TrajectoryEncoder:
    return TrajectoryEncoder(tokenizer, config.prompt_template, config.step_separator)
