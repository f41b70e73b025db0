"""Search parameters, results, statistics and events: plain data shared by the evaluator and the server."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from repirl.artifacts import Aggregation
from repirl.calibration import AggregateInput
from repirl.cancel import WorkCancelled
from repirl.policy.base import SEED_LIMIT

Strategy = Literal["best-of-n", "adaptive-best-of-n", "beam", "dvts", "particle-filtering", "particle-gibbs"]
Selection = Literal["naive", "weighted", "majority"]
Resampling = Literal["systematic", "multinomial"]
STRATEGIES = ("best-of-n", "adaptive-best-of-n", "beam", "dvts", "particle-filtering", "particle-gibbs")
PARTICLE_STRATEGIES = ("particle-filtering", "particle-gibbs")
# Schema bounds on every number a client sends, far above any deployment's limits (server settings answer those with
# a 413 and the deployment's figure). Without them a count of 4,300 nines passed validation and the limit's message
# could not print it (a 500, issue 22.2); 1e308 temperatures overflowed to inf.
COUNT_LIMIT = 1 << 20
TEMPERATURE_LIMIT = 1e6
SELECTIONS = ("naive", "weighted", "majority")
BUDGET_FIELDS = ("policy_tokens", "prm_tokens", "seconds")


class Budget(BaseModel):
    """Spending limits of one search, checked between steps: the search stops before a step once one is reached, so
    it overshoots by at most the step in flight (one policy call, its PRM call, its lookahead rollouts). Bounded so a
    hostile value is a 422 naming the field, not an overflow."""

    model_config = ConfigDict(extra="forbid")
    policy_tokens: int | None = Field(None, ge=1, le=10**9, description="tokens the policy may generate")
    prm_tokens: int | None = Field(None, ge=1, le=10**10, description="tokens the PRM may compute (cache and KV "
                                   "reuse are free: `stats.prm_tokens_computed`)")
    seconds: float | None = Field(None, gt=0.0, le=86_400.0, description="wall-clock seconds of the search")


class SearchParams(BaseModel):
    """One search. Validation errors name the field (the server maps them to 422 with `param`)."""

    strategy: Strategy = "best-of-n"
    n: int = Field(8, ge=1, le=COUNT_LIMIT, description="best-of-n: samples; beam: beams per step; dvts: total samples "
                   "per step; particle-filtering / -gibbs: particles (per sweep)")
    beam_width: int = Field(4, ge=1, le=COUNT_LIMIT, validate_default=True, description="beam/dvts: samples per kept "
                            "beam (n / beam_width beams are kept); must divide n for beam/dvts (else 422)")
    max_steps: int = Field(16, ge=1, le=COUNT_LIMIT, description="reasoning steps before unfinished beams are cut")
    select: Selection = Field("naive", description="final choice: best score, PRM-weighted vote, majority vote "
                              "(particle strategies default to weighted)")
    aggregation: Aggregation | None = Field(None, description="step rewards -> score; None = the PRM's default")
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_step_tokens: int = Field(64, ge=1, le=COUNT_LIMIT)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="the engines' range; derived seeds wrap into it")
    lookahead: int = Field(0, ge=0, le=1024, description="beam/dvts: greedy steps rolled out to score a candidate")
    dedup: bool | None = Field(None, description="drop duplicate candidates; None: on for beam/dvts, off for best-of-n")
    vote_temperature: float = Field(1.0, gt=0.0, le=TEMPERATURE_LIMIT, description="weighted vote: weight = exp(score / vote_temperature)")
    aggregate_input: AggregateInput = Field(
        "raw", description="what the aggregation reads: `raw` step rewards, or `probability`: each step's calibrated "
        "p_correct (needs a PRM whose prm.json has a calibration; mean-token then averages the steps' probabilities, "
        "and a weighted vote weighs by the score itself)")

    # particle filtering / Gibbs (docs/search.md maps each name to its_hub's and the paper's)
    particle_temperature: float = Field(1.0, gt=0.0, le=100.0, description="particle weights = softmax(log-weight "
                                        "/ particle_temperature); the log-weight is the score (logit of it for "
                                        "probability PRMs)")
    resampling: Resampling = Field("systematic", description="how particles are resampled")
    ess_threshold: float = Field(0.5, ge=0.0, le=1.0, description="resample when the effective sample size < "
                                 "ess_threshold x n (1.0: every step unless the weights are uniform, its_hub's rule)")
    sweeps: int = Field(4, ge=1, le=64, description="particle-gibbs: filtering sweeps (its_hub num_iterations)")
    reference_particles: int = Field(1, ge=1, le=COUNT_LIMIT, validate_default=True, description="particle-gibbs: particles "
                                     "retained from one sweep into the next (its_hub num_ref_particles); must be < n")
    # adaptive best-of-n
    round_size: int | None = Field(None, ge=1, le=COUNT_LIMIT, description="adaptive-best-of-n: samples per round (default n / 4)")
    settle: float = Field(1.0, gt=0.0, le=1.0, description="adaptive-best-of-n: stop once the leading answer's vote "
                          "beats the runner-up's by more than settle x the most the unsampled rest could add (1.0: "
                          "the remaining samples cannot change a majority pick)")
    budget: Budget | None = Field(None, description="spending limits: the search stops early once one is reached; "
                                  "`stats.stopped_by` names it")

    @field_validator("beam_width")
    @classmethod
    def _check_tree(cls, beam_width: int, info: ValidationInfo) -> int:
        """On the field (not the model), so the error names `beam_width` (the fields before it are validated)."""
        strategy, n = info.data.get("strategy"), info.data.get("n")
        if strategy in ("beam", "dvts") and n is not None and (beam_width > n or n % beam_width):
            raise ValueError(f"beam_width must divide n for strategy {strategy!r} (got n={n}, beam_width={beam_width})")
        return beam_width

    @field_validator("select")
    @classmethod
    def _check_select(cls, select: str, info: ValidationInfo) -> str:
        if info.data.get("strategy") == "adaptive-best-of-n" and select == "naive":
            raise ValueError("adaptive-best-of-n stops on a settled vote: select must be majority or weighted")
        return select

    @field_validator("reference_particles")
    @classmethod
    def _check_reference(cls, k: int, info: ValidationInfo) -> int:
        n = info.data.get("n")
        if info.data.get("strategy") == "particle-gibbs" and n is not None and k >= n:
            raise ValueError(f"reference_particles must be < n for particle-gibbs (got n={n}, reference_particles={k})")
        return k

    @model_validator(mode="after")
    def _vote_defaults(self):
        """Particle strategies vote by default: after resampling the particles are a sample of the PRM-weighted
        posterior, so a weighted vote over them is the paper's estimator (its_hub takes the argmax: select=naive).
        Adaptive best-of-n is self-consistency by default (majority: no PRM needed, and its stopping rule is exact)."""
        if "select" not in self.model_fields_set and self.strategy in (*PARTICLE_STRATEGIES, "adaptive-best-of-n"):
            self.select = "majority" if self.strategy == "adaptive-best-of-n" else "weighted"
        return self

    @property
    def dedup_on(self) -> bool:
        if self.strategy in PARTICLE_STRATEGIES:  # copies of a particle are the point of resampling
            return False
        return self.dedup if self.dedup is not None else self.strategy not in ("best-of-n", "adaptive-best-of-n")

    def cost(self) -> int:
        """Upper bound of policy samples (n x steps x sweeps, plus lookahead rollouts): what admission limits count."""
        sweeps = self.sweeps if self.strategy == "particle-gibbs" else 1
        return self.n * self.max_steps * (1 + self.lookahead) * sweeps


@dataclass
class Candidate:
    """A (partial) trajectory in the search tree."""

    steps: list[str]
    finished: bool = False
    step_rewards: list[float] = field(default_factory=list)
    score: float | None = None  # aggregated PRM score (None until scored)
    logprob: float = 0.0  # policy log-probability of all its generated tokens
    answer: str | None = None
    truncated: bool = False  # cut by max_steps or by a step that hit max_step_tokens
    id: int = 0
    parent: int | None = None
    p_correct: list[float] | None = None  # per step, from the PRM's calibration (None: the PRM has none)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchStats:
    policy_calls: int = 0
    policy_tokens: int = 0  # tokens the policy generated (lookahead included)
    prm_calls: int = 0
    prm_tokens_total: int = 0  # tokens in every trajectory handed to the PRM
    prm_tokens_computed: int = 0  # tokens the PRM actually ran (the rest came from KV reuse or the cache)
    cache_hits: int = 0  # reported by the scorer (meta["cache_hits"])
    tree_tokens: int = 0  # unique tokens in the search tree (prompt + every distinct step prefix): the lower bound
    steps: int = 0
    candidates: int = 0
    duplicates_dropped: int = 0
    wall_time_s: float = 0.0
    resamplings: int = 0  # particle strategies: steps at which the particles were resampled
    stopped_by: str | None = None  # a budget field, "vote_settled" (adaptive-best-of-n), or None: ran to its end

    @property
    def prm_tokens_reused(self) -> int:
        return self.prm_tokens_total - self.prm_tokens_computed

    def to_dict(self) -> dict:
        return asdict(self) | {"prm_tokens_reused": self.prm_tokens_reused}


@dataclass
class SearchEvent:
    """One search step, for callbacks and SSE: the candidates scored, the beams kept, the ones pruned."""

    kind: Literal["step", "final"]
    step: int
    beams: list[Candidate] = field(default_factory=list)
    pruned: list[Candidate] = field(default_factory=list)
    completed: list[Candidate] = field(default_factory=list)
    # particle strategies: `beams` are the n particles (a resampled copy repeats its candidate), `weights` theirs
    # (normalised, before resampling), `ess` their effective sample size, `ancestors[i]` the index in `beams` that
    # new particle i copies (None: no resampling at this step), `sweep` (particle-gibbs, from 1)
    weights: list[float] | None = None
    ess: float | None = None
    ancestors: list[int] | None = None
    sweep: int | None = None

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "step": self.step, "beams": [c.to_dict() for c in self.beams],
               "pruned": [c.to_dict() for c in self.pruned], "completed": [c.to_dict() for c in self.completed]}
        if self.weights is None:  # not a particle strategy: beam search's events stay as they were
            return out
        return out | {"weights": self.weights, "ess": self.ess, "ancestors": self.ancestors, "sweep": self.sweep}


@dataclass
class SearchResult:
    question: str
    best: Candidate | None  # the chosen trajectory (for votes: the best-scored one with the winning answer)
    answer: str | None
    candidates: list[Candidate]  # every completed trajectory, best first
    params: SearchParams
    stats: SearchStats

    @property
    def text(self) -> str:
        return "\n\n".join(self.best.steps) if self.best else ""

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "text": self.text,
                "best": self.best.to_dict() if self.best else None,
                "candidates": [c.to_dict() for c in self.candidates],
                "params": self.params.model_dump(), "stats": self.stats.to_dict()}


class SearchCancelled(WorkCancelled):
    """Raised between steps when the caller's cancel check fires (e.g. the HTTP client went away)."""
