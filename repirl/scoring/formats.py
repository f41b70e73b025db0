"""PRM formats: how per-token model outputs become step rewards. Shared by every engine (transformers, vLLM).

Each format reduces the model's output at every position to one number per token (`token values`), then reads
step rewards off the step spans of the trajectory contract (`repirl.trajectory.TrajectoryEncoder`):

- token-reward (ours, rePIRL): value = the scalar head's output (bounded as trained when prm.json sets `token_bound`:
  token_bound * tanh(head / token_bound)); step reward = mean of the step's token values; token rewards are kept
  (the mean-token aggregation needs them).
- qwen-step-tag (Qwen2.5-Math-PRM, `Qwen2ForProcessRewardModel`): value = softmax over the 2 labels, P(label 1);
  step reward = the value at the step tag closing the step.
- math-shepherd (a causal LM): value = softmax over the logits of the "+" and "-" tokens, P("+"); step reward = the
  value at the step tag closing the step.
- implicit (PRIME): value of token t = beta * (log pi_phi(x_t | x_<t) - log pi_ref(x_t | x_<t)); step reward = sum
  of the step's token values (PRIME's process reward of a step); token rewards are kept.

prm.json's `step_reward` (mean | sum | min) overrides how the token formats reduce a step's token values.

Token ids (step tag, "+", "-") are resolved from the tokenizer, never hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from repirl.artifacts import ArtifactError, PRMConfig
from repirl.scoring.base import StepScores
from repirl.trajectory import TrajectoryIds



@dataclass(frozen=True)
class FormatFacts:
    """What holds for every PRM of a format: the one place code asks about a format (never by comparing names)."""

    name: str
    is_probability: bool  # step rewards are probabilities in [0, 1] (a weighted vote weighs by the score itself)
    has_token_rewards: bool  # one value per token, reduced per step (`step_reward`); else read at the step tag
    default_step_reward: str | None  # token formats: how a step's token values reduce when prm.json says nothing
    two_models: bool = False  # a policy and a reference (implicit: beta * log(pi_phi / pi_ref))
    on_vllm_by_default: bool = False  # `engine: auto` serves it on vLLM's pooling runner (when vLLM is installed)
    on_vllm: bool = False  # `engine: vllm` can serve it at all


FORMATS: dict[str, FormatFacts] = {f.name: f for f in (
    FormatFacts("token-reward", is_probability=False, has_token_rewards=True, default_step_reward="mean",
                on_vllm_by_default=True, on_vllm=True),
    FormatFacts("qwen-step-tag", is_probability=True, has_token_rewards=False, default_step_reward=None,
                on_vllm_by_default=True, on_vllm=True),
    FormatFacts("math-shepherd", is_probability=True, has_token_rewards=False, default_step_reward=None),
    FormatFacts("implicit", is_probability=False, has_token_rewards=True, default_step_reward="sum", two_models=True,
                on_vllm=True),  # vLLM's generate runner, when `engine: vllm` is asked for
)}


def format_facts(fmt_or_config) -> FormatFacts:
    """The facts of a format name, or of a PRMConfig / scorer's config (anything with `.format`)."""
    # a str has a `.format` method too: a name is used as is
    name = fmt_or_config if isinstance(fmt_or_config, str) else getattr(fmt_or_config, "format", None)
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown PRM format {name!r} (known: {', '.join(FORMATS)})") from None


def scores_are_probabilities(scorer) -> bool:
    """Whether a scorer's (raw) scores are probabilities; False for anything without a known format."""
    fmt = getattr(getattr(scorer, "config", None), "format", None)
    return fmt in FORMATS and FORMATS[fmt].is_probability


def single_token_id(tokenizer, text: str | None, field: str, where: str) -> int:
    """The one token id spelling `text`; an ArtifactError naming the prm.json field otherwise."""
    if not text:
        raise ArtifactError(f"{where}: field '{field}' is required for this format")
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ArtifactError(f"{where}: field '{field}' = {text!r} must be exactly one token, the tokenizer gives {ids}")
    return ids[0]


@dataclass(frozen=True)
class FormatSpec:
    """What a scorer needs to know about a format once the tokenizer has resolved its ids."""

    format: str
    step_tag_id: int | None = None
    positive_id: int | None = None
    negative_id: int | None = None
    beta: float = 1.0
    step_reward: str = "mean"  # token formats: mean | sum | min of the step's token values, or cumulative
    read_offset: int = 0  # tag formats: read the value this many tokens after the step tag (-1: "before-tag")
    bound: float | None = None  # token-reward: value = bound * tanh(head / bound) (prm.json `token_bound`)

    @property
    def facts(self) -> FormatFacts:
        return FORMATS[self.format]

    @property
    def needs_previous_logits(self) -> bool:
        """The value of token t depends on the logits at t-1 (implicit): a resumed forward starts one token early."""
        return self.facts.two_models

    @classmethod
    def resolve(cls, cfg: PRMConfig, tokenizer, where: str) -> "FormatSpec":
        facts = format_facts(cfg)
        if cfg.token_bound is not None and cfg.format != "token-reward":
            raise ArtifactError(f"{where}: field 'token_bound' applies to format 'token-reward' only, not "
                                f"{cfg.format!r}")
        if facts.two_models:
            if cfg.beta is None or cfg.beta <= 0:
                raise ArtifactError(f"{where}: field 'beta' must be a positive number for format {cfg.format!r}")
            if not cfg.reference_model:
                raise ArtifactError(f"{where}: field 'reference_model' is required for format {cfg.format!r}")
            return cls(cfg.format, beta=float(cfg.beta), step_reward=cfg.step_reward or facts.default_step_reward)
        if facts.has_token_rewards:
            return cls(cfg.format, step_reward=cfg.step_reward or facts.default_step_reward, bound=cfg.token_bound)
        if cfg.step_reward is not None:
            raise ArtifactError(f"{where}: field 'step_reward' applies to the token formats (token-reward, implicit); "
                                f"format {cfg.format!r} reads one value per step at its step tag")
        tag = single_token_id(tokenizer, cfg.step_tag, "step_tag", where)
        if tag not in tokenizer.encode("x" + cfg.step_separator, add_special_tokens=False):
            raise ArtifactError(f"{where}: field 'step_separator' {cfg.step_separator!r} must contain the step tag "
                                f"{cfg.step_tag!r} (step rewards are read at the tag that closes each step)")
        offset = -1 if cfg.read_at == "before-tag" else 0
        if cfg.format == "qwen-step-tag":
            return cls("qwen-step-tag", step_tag_id=tag, read_offset=offset)
        pos = single_token_id(tokenizer, cfg.positive_token, "positive_token", where)
        neg = single_token_id(tokenizer, cfg.negative_token, "negative_token", where)
        return cls("math-shepherd", step_tag_id=tag, positive_id=pos, negative_id=neg, read_offset=offset)

    # ---- model outputs -> token values -------------------------------------------------------------------------
    def values_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., T, C] head/LM logits -> [..., T] token values (all formats but implicit)."""
        logits = logits.float()
        if self.format == "token-reward":
            raw = logits[..., 0]
            return raw if self.bound is None else self.bound * torch.tanh(raw / self.bound)
        if self.format == "qwen-step-tag":
            return torch.softmax(logits[..., :2], dim=-1)[..., 1]
        if self.format == "math-shepherd":
            pair = logits[..., [self.positive_id, self.negative_id]]
            return torch.softmax(pair, dim=-1)[..., 0]
        raise ValueError(f"format {self.format!r} has no single-model logits reduction")

    def implicit_values(self, logits_phi: torch.Tensor, logits_ref: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """Values of tokens `next_ids` [..., T] from the logits at the positions just before them [..., T, V]."""
        lp = torch.log_softmax(logits_phi.float(), -1).gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)
        lr = torch.log_softmax(logits_ref.float(), -1).gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)
        return self.beta * (lp - lr)

    # ---- token values -> step scores ----------------------------------------------------------------------------
    def step_scores(self, traj: TrajectoryIds, values: list[float], tokens_computed: int) -> StepScores:
        """`values` has one entry per token of `traj.ids`."""
        step_rewards: list[float] = []
        per_token = self.facts.has_token_rewards
        token_rewards: list[list[float]] | None = [] if per_token else None
        running = 0.0
        for k, (start, end) in enumerate(traj.step_spans):
            span = values[start:end]
            if per_token and self.step_reward == "cumulative":
                running += sum(span)
                step_rewards.append(running)
            elif per_token:
                step_rewards.append(_reduce_step(span, self.step_reward))
            else:
                tag_positions = [i for i in range(start, end) if traj.ids[i] == self.step_tag_id]
                if not tag_positions:
                    raise ValueError(f"step {k} has no step tag token (id {self.step_tag_id})")
                step_rewards.append(values[tag_positions[-1] + self.read_offset])
            if token_rewards is not None:
                token_rewards.append(list(span))
        return StepScores(step_rewards=step_rewards, token_rewards=token_rewards,
                          tokens_computed=tokens_computed, tokens_total=len(traj.ids))


def _reduce_step(span: list[float], how: str) -> float:
    if not span:
        return 0.0
    if how == "sum":
        return sum(span)
    if how == "min":
        return min(span)
    return sum(span) / len(span)


class Qwen2ForProcessRewardModel(nn.Module):
    """Qwen2.5-Math-PRM's architecture for transformers (it ships as remote code, not in transformers 5.19):
    a Qwen2 body and `score = Linear(h, h) -> ReLU -> Linear(h, num_labels)`. The weight names (`model.*`,
    `score.0.*`, `score.2.*`) are the ones vLLM's `Qwen2ForProcessRewardModel` loads."""

    def __init__(self, config):
        super().__init__()
        from transformers import Qwen2Model

        self.config = config
        self.model = Qwen2Model(config)
        h = config.hidden_size
        self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, config.num_labels))

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, **_):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         use_cache=use_cache)
        return _LogitsOutput(self.score(out.last_hidden_state), out.past_key_values)

    @classmethod
    def from_pretrained(cls, folder, config=None):
        from safetensors.torch import load_file
        from transformers import AutoConfig

        config = config or AutoConfig.from_pretrained(folder)
        model = cls(config)
        state = {}
        for path in sorted(__import__("pathlib").Path(folder).glob("*.safetensors")):
            state.update(load_file(str(path)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if "rotary" not in m]
        if missing:
            raise ArtifactError(f"{folder}: weights missing for {missing[:3]}")
        return model.eval()

    def save_pretrained(self, folder):
        from safetensors.torch import save_file

        self.config.architectures = ["Qwen2ForProcessRewardModel"]
        self.config.save_pretrained(folder)
        state = {k: v.contiguous() for k, v in self.state_dict().items() if "rotary" not in k}
        save_file(state, str(__import__("pathlib").Path(folder) / "model.safetensors"), metadata={"format": "pt"})


@dataclass
class _LogitsOutput:
    logits: torch.Tensor
    past_key_values: object
