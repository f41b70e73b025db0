"""The training recipe: one pydantic model (extra="forbid") loaded from YAML.

Every error names the file and the offending key (`configs/x.yaml: key 'prm.lr': Input should be a valid number`).
The same schema serves every algorithm so that comparisons share data, seeds and budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from repirl.trajectory import PromptTemplate
from repirl.validation import describe

Algorithm = Literal["repirl", "rloo", "prime", "ttt", "offline"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptConfig(PromptTemplate):
    """repirl.trajectory.PromptTemplate with the recipe's strictness (a misspelt key fails)."""

    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    name: Literal["arithmetic", "gsm8k", "jsonl"] = "arithmetic"
    path: str | None = None  # jsonl: the user's data file (repirl.tasks.jsonl format)
    min_ops: int = 2
    max_ops: int = 3
    max_operand: int = 20
    max_multiplier: int = 5
    train_size: int = 2000  # problems in the training pool (arithmetic: freshly generated from `seed`)
    eval_size: int = 200  # held-out problems (a different seed; never in the training pool)


class RolloutConfig(_Strict):
    n: int = Field(4, ge=2)  # rollouts per question; RLOO needs at least 2
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)
    engine: Literal["auto", "vllm", "transformers"] = "auto"
    max_model_len: int = 512
    # vLLM rollout engine's KV cache in GiB (None: REPIRL_VLLM_KV_CACHE_GIB, else repirl.vllm_setup's default);
    # an explicit size lets the run start beside the service and other engines (see repirl/vllm_setup.py)
    kv_cache_gib: float | None = Field(None, gt=0)
    # how a policy update reaches the vLLM engine: memory = the weights pushed into the running engine
    # (trainer/weight_sync.py); disk = saved to runs/<name>/live_policy and re-read (the earlier way, kept to compare)
    weight_sync: Literal["memory", "disk"] = "memory"
    # one-GPU colocation: 1 or 2 = vLLM sleeps between rollouts (1: weights to host memory, KV cache freed; 2: both
    # freed, the next sync reloads them), so the update has the GPU's memory; 0 = off. No-op on the CPU (vLLM-CPU
    # ignores sleep; its memory is host memory anyway).
    sleep_level: int = Field(0, ge=0, le=2)
    # run vLLM's engine core inside the trainer process (VLLM_ENABLE_V1_MULTIPROCESSING=0, TRL's colocate mode):
    # weight pushes then hand over the tensors themselves (no copy). On the CPU vLLM also binds this process's threads
    # and memory; off by default there. See docs/trainer.md "Scaling up".
    engine_in_process: bool = False


class FilterConfig(_Strict):
    # Keep a question for the policy update only when its rollout accuracy lies in [lo, hi] (PRIME / paper: 0.2-0.8).
    accuracy_window: tuple[float, float] | None = None
    hard_only: bool = False  # train the policy only on questions none of whose rollouts is correct

    @model_validator(mode="after")
    def _window(self):
        if self.accuracy_window is not None:
            lo, hi = self.accuracy_window
            if not 0 <= lo <= hi <= 1:
                raise ValueError("accuracy_window must be [lo, hi] with 0 <= lo <= hi <= 1")
        return self


class PRMTrainConfig(_Strict):
    # logprob: token reward = beta * log pi_phi(a_t | s_t), pi_phi a causal LM initialised from the policy.
    # head: token reward = bound * tanh(w . h_t / bound), the policy's body plus a fresh scalar head.
    parameterization: Literal["logprob", "head"] = "logprob"
    init: str | None = None  # a folder to start from (a PRM or a policy); None: the initial policy
    beta: float = Field(1.0, gt=0)  # logprob scale
    reward_bound: float | None = Field(5.0, gt=0)  # head: tanh bound on each token reward (None: unbounded)
    lr: float = Field(1e-5, gt=0)
    updates_per_iter: int = Field(1, ge=0)
    grad_clip: float = 10.0  # the paper's PRM gradient clip
    stop_gradient_weights: bool = True  # treat the importance weights as constants in the loss
    # truncated importance sampling: no normalised weight above ratio * mean weight, after renormalisation (>= 1:
    # the weights must still sum to 1); None: off
    max_weight_ratio: float | None = Field(None, ge=1)
    expert_references: bool = True  # reference solutions join the experts (plus correct rollouts)
    frozen: bool = False  # ttt: the PRM is never updated
    # (init_l2 / 2) * ||phi - phi_0||^2 added to the PRM loss: ties the PRM to its start (issue 24, cause 4). The
    # paper's objective (J = mean_D R - log z) has none, hence 0; docs/trainer.md says when to set it
    init_l2: float = Field(0.0, ge=0)


class PolicyTrainConfig(_Strict):
    lr: float = Field(1e-5, gt=0)
    # linear warm-up over this many optimizer steps (mini-batch steps, all epochs), then lr (trainer/schedule.py).
    # 0 (no warm-up) is the default so that configs written before it existed keep meaning what they meant
    warmup_steps: int = Field(0, ge=0)
    ppo_epochs: int = Field(1, ge=1)
    # questions per PPO mini-batch (n rollouts each; one optimizer step per mini-batch). The paper: batch 128,
    # mini-batch 32 (4 steps). Unset in a recipe: about DEFAULT_MINI_BATCHES steps per batch (the Trainer fills it
    # in, knowing the number of processes, and config.yaml records it; one step per batch kept the ratio at 1, so the
    # clip never acted: issue 24, cause 6). None when policy_step is called directly: the whole batch in one step.
    mini_batch_size: int | None = Field(None, ge=1)
    clip: float = Field(0.2, gt=0)
    entropy_coef: float = 0.001
    prm_coef: float = 0.05  # lambda: reward = outcome + lambda * PRM score (mean token reward)
    dense: bool = False  # per-step PRM rewards in the returns instead of one trajectory score
    grad_clip: float = 1.0
    update: bool = True  # offline mode never updates the policy


class PrimeConfig(_Strict):
    beta: float = Field(0.05, gt=0)  # implicit PRM: r = beta * log(pi_phi / pi_ref)
    # PRM optimizer steps: one per mini-batch of this many questions (PRIME's reward_model.mini_batch_size, which its
    # recipe sets to the actor's ppo_mini_batch_size); None: one step per iteration (what runs before the key did)
    mini_batch_size: int | None = Field(None, ge=1)
    # "before": PRIME's default (double forward: update, then score the batch with the updated PRM); "after": the
    # rewards of the forward pass before each step (PRIME's single forward; what runs before the key did)
    update: Literal["after", "before"] = "after"


class OfflineConfig(_Strict):
    # jsonl: a repirl.tasks.jsonl file with candidates; gsm8k: ../shared/data/gsm8k/model_solutions.jsonl
    source: Literal["jsonl", "gsm8k"] = "gsm8k"
    path: str | None = None
    limit: int | None = None
    holdout_fraction: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(1, ge=1)
    batch_questions: int = Field(8, ge=1)
    max_tokens: int = 384  # longer trajectories are cut (token rewards of the first max_tokens only)


class CalibrationConfig(_Strict):
    # after export: fit p_correct = sigmoid(a * raw + b) on checker-labelled dev steps (trainer/calibration.py)
    problems: int = Field(40, ge=0)  # dev problems (0: no calibration)
    samples: int = Field(4, ge=1)  # policy samples per problem
    temperature: float = Field(0.8, ge=0)  # the service's default search temperature
    source: Literal["samples", "corrupted", "both"] = "samples"  # corrupted: references with one wrong result
    max_step_tokens: int = Field(32, ge=1)
    max_steps: int = Field(8, ge=1)
    seed: int = 0


class TrainConfig(_Strict):
    name: str = Field(min_length=1)
    algorithm: Algorithm = "repirl"
    seed: int = 0
    out_dir: str = "runs"
    policy: str = "tiny"  # a causal-LM folder, or "tiny": a random tiny Qwen2 built in code (tests)
    # how a question becomes the prompt (kind plain: `template` with {question}; kind chat: the folder's own chat
    # template, with an optional system message). None: the folder's policy.json, else the plain default. Written
    # into the run's policy.json / prm.json, so the evaluator and the service prompt the same way.
    prompt_template: PromptConfig | None = None
    tiny_layers: int = 2
    iterations: int = Field(10, ge=0)
    questions_per_iter: int = Field(8, ge=1)
    checkpoint_every: int = Field(5, ge=1)
    eval_every: int = Field(0, ge=0)  # held-out accuracy every k iterations (0: only at the end)
    eval_problems: int = Field(64, ge=0)
    threads: int | None = None  # torch threads (None: torch's default)
    # log kl_init (k3 KL of the policy to its initial weights) every iteration: a metric only, which costs one more
    # no-grad forward of the frozen reference over the whole batch (a fifth of a GPU iteration's update time)
    kl_to_init: bool = False
    # --- hardware (issue 13; trainer/device.py, docs/trainer.md "Scale-out") ---
    # where the models, batches and the frozen reference live: auto = cuda when torch sees a GPU, else cpu
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # compute precision of the forward/backward. bfloat16: fp32 master weights and fp32 AdamW state; one process runs
    # the forward under bf16 autocast, several shard with FSDP2 MixedPrecisionPolicy(param_dtype=bf16,
    # reduce_dtype=fp32). Log-softmax, log-probs and every loss are float32 either way.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # recompute each decoder layer's activations in backward instead of storing them (HF gradient checkpointing)
    gradient_checkpointing: bool = False
    # sequences (rollouts) per forward/backward pass in the PRM and policy updates and the no-grad scoring passes;
    # gradients accumulate over micro-batches, one optimizer step per mini-batch (None: the whole mini-batch at once)
    micro_batch_size: int | None = Field(None, ge=1)
    # log-probs are taken from the final hidden states in chunks of this many token positions (lm_head + float32
    # log_softmax + gather per chunk), so [batch, tokens, vocab] logits never exist in full (None: one chunk)
    logprob_chunk_tokens: int | None = Field(None, ge=1)
    # several processes (FSDP2), gradient accumulation: reduce-scatter the gradients once per mini-batch (true: each
    # rank keeps an unsharded float32 gradient of the whole model while it accumulates, 4 bytes per parameter) or
    # after every micro-batch (false: no such copy, one reduce-scatter per micro-batch; for models whose full fp32
    # gradient does not fit beside the shards, e.g. 7B on 80 GB GPUs)
    fsdp_accumulate_unsharded: bool = True
    task: TaskConfig = Field(default_factory=TaskConfig)
    rollouts: RolloutConfig = Field(default_factory=RolloutConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    prm: PRMTrainConfig = Field(default_factory=PRMTrainConfig)
    optim: PolicyTrainConfig = Field(default_factory=PolicyTrainConfig)
    prime: PrimeConfig = Field(default_factory=PrimeConfig)
    offline: OfflineConfig = Field(default_factory=OfflineConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)

    @model_validator(mode="after")
    def _consistent(self):
        if self.task.name == "jsonl" and not self.task.path:
            raise ValueError("task.path is required when task.name is 'jsonl'")
        mb = self.optim.mini_batch_size
        if mb is not None and self.questions_per_iter % mb:
            raise ValueError(f"optim.mini_batch_size ({mb}) must divide questions_per_iter ({self.questions_per_iter})")
        if self.algorithm == "offline" and self.offline.source == "jsonl" and not self.offline.path:
            raise ValueError("offline.path is required when offline.source is 'jsonl'")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


DEFAULT_MINI_BATCHES = 4  # the paper's 128 / 32


def default_mini_batch_size(questions_per_iter: int, world: int = 1) -> int:
    """Questions per PPO mini-batch when the recipe sets none: the largest size that still gives DEFAULT_MINI_BATCHES
    steps or more (16 -> 4, 10 -> 2, 6 -> 1, 3 -> 1), else the one giving the most steps. Always a divisor of
    questions_per_iter (equal mini-batches) and a multiple of the number of processes (an equal share per rank):
    4 questions on 2 processes -> 2 (two steps)."""
    sizes = [s for s in range(world, questions_per_iter + 1, world) if questions_per_iter % s == 0]
    if not sizes:  # the Trainer refuses such a batch anyway (an unequal question shard per rank)
        return questions_per_iter
    enough = [s for s in sizes if questions_per_iter // s >= DEFAULT_MINI_BATCHES]
    return max(enough) if enough else min(sizes)


class ConfigError(ValueError):
    """A bad recipe; the message names the file and the key."""


def parse_config(raw: dict, source: str = "<config>") -> TrainConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe(e, noun='key')}") from None


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if overrides and isinstance(raw, dict):
        raw = _merge(raw, overrides)
    return parse_config(raw, str(path))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
