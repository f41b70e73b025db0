"""Search parameters, results, statistics and events: plain data shared by the evaluator and the server."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from repirl.artifacts import Aggregation
from repirl.calibration import AggregateInput
from repirl.cancel import WorkCancelled
from repirl.policy.base import SEED_LIMIT

Strategy = Literal["best-of-n", "beam", "dvts"]
Selection = Literal["naive", "weighted", "majority"]
STRATEGIES = ("best-of-n", "beam", "dvts")
SELECTIONS = ("naive", "weighted", "majority")


class SearchParams(BaseModel):
    """One search. Validation errors name the field (the server maps them to 422 with `param`)."""

    strategy: Strategy = "best-of-n"
    n: int = Field(8, ge=1, description="best-of-n: samples; beam: beams per step; dvts: total samples per step")
    beam_width: int = Field(4, ge=1, validate_default=True, description="beam/dvts: samples per kept beam (n / beam_width beams are kept); "
                            "must divide n for beam/dvts (else 422)")
    max_steps: int = Field(16, ge=1, description="reasoning steps before unfinished beams are cut")
    select: Selection = Field("naive", description="final choice: best score, PRM-weighted vote, majority vote")
    aggregation: Aggregation | None = Field(None, description="step rewards -> score; None = the PRM's default")
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_step_tokens: int = Field(64, ge=1)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="the engines' range; derived seeds wrap into it")
    lookahead: int = Field(0, ge=0, description="beam/dvts: greedy steps rolled out to score a candidate")
    dedup: bool | None = Field(None, description="drop duplicate candidates; None: on for beam/dvts, off for best-of-n")
    vote_temperature: float = Field(1.0, gt=0.0, description="weighted vote: weight = exp(score / vote_temperature)")
    aggregate_input: AggregateInput = Field(
        "raw", description="what the aggregation reads: `raw` step rewards, or `probability`: each step's calibrated "
        "p_correct (needs a PRM whose prm.json has a calibration; mean-token then averages the steps' probabilities, "
        "and a weighted vote weighs by the score itself)")

    @field_validator("beam_width")
    @classmethod
    def _check_tree(cls, beam_width: int, info: ValidationInfo) -> int:
        """On the field (not the model), so the error names `beam_width` (the fields before it are validated)."""
        strategy, n = info.data.get("strategy"), info.data.get("n")
        if strategy in ("beam", "dvts") and n is not None and (beam_width > n or n % beam_width):
            raise ValueError(f"beam_width must divide n for strategy {strategy!r} (got n={n}, beam_width={beam_width})")
        return beam_width

    @property
    def dedup_on(self) -> bool:
        return self.dedup if self.dedup is not None else self.strategy != "best-of-n"

    def cost(self) -> int:
        """Upper bound of policy samples (n x steps, plus lookahead rollouts): what admission limits count."""
        return self.n * self.max_steps * (1 + self.lookahead)


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

    def to_dict(self) -> dict:
        return {"kind": self.kind, "step": self.step, "beams": [c.to_dict() for c in self.beams],
                "pruned": [c.to_dict() for c in self.pruned], "completed": [c.to_dict() for c in self.completed]}


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
