"""Typed responses of the service (pydantic). Models accept fields they do not know (a newer service keeps working
with an older client); tests/clients/test_openapi_drift.py compares these models with the service's /openapi.json so
a changed schema fails CI. Every response model has `request_id` (the response's `x-request-id`)."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

Aggregation = Literal["mean-token", "min", "last", "prod", "sum"]
Strategy = Literal["best-of-n", "adaptive-best-of-n", "beam", "dvts", "particle-filtering", "particle-gibbs"]
Resampling = Literal["systematic", "multinomial"]
Select = Literal["naive", "weighted", "majority"]
Voting = Literal["none", "weighted", "majority"]
AggregateInput = Literal["raw", "probability"]  # what the aggregation reads: raw step rewards or p_correct
EncodingFormat = Literal["float", "base64"]  # /pooling; vLLM's "bytes" forms are not JSON and are refused (400)

__all__ = [
    "AggregateInput", "Aggregation", "Resampling", "Strategy", "Select", "Voting", "RepirlModel", "ScoreResult",
    "ScoreUsage", "ScoreResponse",
    "RerankResult", "RerankSelection", "RerankResponse", "SearchCandidate", "SearchResponse", "TreeCandidate",
    "SearchStepEvent", "SearchResultEvent", "SearchEvent", "ModelCard", "ModelList", "Health", "ChatMessage",
    "ChatResponseMessage", "ChatChoice", "ChatUsage", "SearchInfo", "ChatCompletion", "ChatDelta", "ChatChunkChoice",
    "ChatCompletionChunk", "EncodingFormat", "PoolingUsage", "PoolingResponseData", "PoolingResponse",
    "ClassificationData", "ClassificationResponse",
]


class RepirlModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    _request_id: Optional[str] = PrivateAttr(default=None)

    @property
    def request_id(self) -> Optional[str]:
        """The `x-request-id` of the response this came from (None for nested objects and stream events)."""
        return self._request_id


# ---- /v1/score
class ErrorDetail(RepirlModel):
    type: str  # one per status: "limit_exceeded" (413), "validation_error" (422), "queue_full" (429), ...
    message: str
    param: Optional[str] = None  # the request field at fault (dotted path), when there is one


class ErrorResponse(RepirlModel):
    """The body of every error the service answers (4xx/5xx); `APIStatusError.error` when the body parses."""

    error: ErrorDetail


class ScoreResult(RepirlModel):
    index: int
    step_rewards: List[float]
    p_correct: Optional[List[float]] = None  # calibrated P(error-free through the step); None: PRM uncalibrated
    score: float
    token_rewards: Optional[List[List[float]]] = None
    cached_steps: int


class ScoreUsage(RepirlModel):
    items: int
    tokens: int
    tokens_computed: int
    cached_steps: int


class ScoreResponse(RepirlModel):
    object: Literal["score"] = "score"
    model: str
    revision: str
    aggregation: Aggregation
    aggregate_input: AggregateInput = "raw"
    data: List[ScoreResult]
    usage: ScoreUsage


# ---- /v1/rerank
class RerankResult(RepirlModel):
    index: int
    score: float
    answer: Optional[str]
    step_rewards: List[float]


class RerankSelection(RepirlModel):
    index: int  # the chosen candidate (a weighted vote picks one too)
    answer: Optional[str]
    score: Optional[float]
    votes: Dict[str, float] = Field(default_factory=dict)


class RerankResponse(RepirlModel):
    object: Literal["rerank"] = "rerank"
    model: str
    revision: str
    aggregation: Aggregation
    voting: str
    results: List[RerankResult]
    ranking: List[int]
    selected: RerankSelection


# ---- /v1/search, /v1/best-of-n
class SearchCandidate(RepirlModel):
    id: int
    steps: List[str]
    answer: Optional[str]
    score: Optional[float]
    step_rewards: List[float]
    p_correct: Optional[List[float]] = None
    finished: bool
    truncated: bool
    logprob: float


class SearchResponse(RepirlModel):
    object: Literal["search"] = "search"
    model: str
    revision: str
    policy: str
    strategy: str
    select: str
    aggregation: str
    aggregate_input: AggregateInput = "raw"
    answer: Optional[str]
    text: str
    steps: List[str]
    score: Optional[float]
    candidates: Optional[List[SearchCandidate]] = None
    stats: Dict[str, Any]


class TreeCandidate(RepirlModel):
    """A node of the search tree as a `step` event reports it."""

    id: int = 0
    parent: Optional[int] = None
    steps: List[str]
    step_rewards: List[float] = Field(default_factory=list)
    p_correct: Optional[List[float]] = None
    score: Optional[float] = None
    finished: bool = False
    truncated: bool = False
    answer: Optional[str] = None
    logprob: float = 0.0


class SearchStepEvent(RepirlModel):
    """`event: step`: the candidates of one search step (kept beams, pruned ones, newly completed). Particle
    strategies: `beams` are the n particles, `weights` theirs, `ess` their effective sample size, `ancestors[i]` the
    particle that new particle i copies (None: not resampled), `sweep` the particle-Gibbs sweep."""

    type: Literal["step"] = "step"
    step: int
    beams: List[TreeCandidate] = Field(default_factory=list)
    pruned: List[TreeCandidate] = Field(default_factory=list)
    completed: List[TreeCandidate] = Field(default_factory=list)
    weights: Optional[List[float]] = None
    ess: Optional[float] = None
    ancestors: Optional[List[int]] = None
    sweep: Optional[int] = None


class SearchResultEvent(RepirlModel):
    """`event: result`: the last event of a stream, carrying the search's response."""

    type: Literal["result"] = "result"
    result: SearchResponse


SearchEvent = Union[SearchStepEvent, SearchResultEvent]


# ---- /v1/models, /readyz
class ModelCard(RepirlModel):
    id: str
    object: Literal["model"] = "model"
    kind: Literal["prm", "policy"]
    owned_by: str = "repirl"
    root: str
    revision: Optional[str] = None
    format: Optional[str] = None
    engine: Optional[str] = None
    default_aggregation: Optional[str] = None
    step_separator: Optional[str] = None
    # the longest input in tokens, as vLLM's /v1/models says it: for a PRM the longest trajectory (prompt + steps)
    # it scores (longer is a 413), for a policy prompt + generated tokens; None from servers that do not say
    max_model_len: Optional[int] = None


class ModelList(RepirlModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]

    @property
    def prms(self) -> List[ModelCard]:
        return [m for m in self.data if m.kind == "prm"]

    def get(self, model_id: str) -> ModelCard:
        for m in self.data:
            if m.id == model_id:
                return m
        raise KeyError(f"model {model_id!r} is not served (served: {', '.join(m.id for m in self.data)})")


class Health(RepirlModel):
    """/readyz: `status` is "ready", "unready" or "draining" (shutting down: finishing its requests in flight);
    `engines` maps each PRM/policy to "ok" or what is wrong."""

    status: str
    engines: Dict[str, str] = Field(default_factory=dict)
    cache: Optional[Dict[str, Any]] = None
    error: Optional[Dict[str, Any]] = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"


# ---- /v1/chat/completions (OpenAI-compatible + repirl's `search`)
class ChatMessage(RepirlModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, List[Dict[str, Any]], None] = None


class ChatResponseMessage(RepirlModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(RepirlModel):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatUsage(RepirlModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SearchInfo(RepirlModel):
    strategy: str
    select: str
    prm: str
    answer: Optional[str]
    score: Optional[float]
    stats: Dict[str, Any]
    trace: Optional[Dict[str, Any]] = None


class ChatCompletion(RepirlModel):
    id: str = ""  # always sent; the schema marks them optional (server-side defaults)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = 0
    model: str
    choices: List[ChatChoice]
    usage: ChatUsage
    search: SearchInfo


class ChatDelta(RepirlModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatChunkChoice(RepirlModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: Optional[Literal["stop", "length"]] = None
    logprobs: None = None


class ChatCompletionChunk(RepirlModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: List[ChatChunkChoice]
    usage: Optional[ChatUsage] = None
    search: Optional[SearchInfo] = None
    search_step: Optional[Dict[str, Any]] = None


# ---- vLLM's /pooling and /classify (vllm/entrypoints/pooling/pooling/protocol.py, classify/protocol.py)
class PoolingUsage(RepirlModel):
    """vLLM's `UsageInfo`, plus repirl's `tokens_computed` and `cached_steps` (what the engine ran, what the step
    cache gave)."""

    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: Optional[int] = 0
    tokens_computed: int = 0
    cached_steps: int = 0


class PoolingResponseData(RepirlModel):
    """One input's rows: step-tag PRMs `[1 - p, p]` per step tag, token formats `[value]` per token; with
    `encoding_format="base64"` the rows flattened as float32 (`embed_dtype`) bytes in base64 (`decode()`)."""

    index: int
    object: str = "pooling"
    data: Union[List[List[float]], List[float], str]

    def decode(self, embed_dtype: Literal["float32", "float16"] = "float32",
               endianness: Literal["native", "big", "little"] = "native") -> List[float]:
        """The values, flattened: base64 decoded with the request's `embed_dtype` / `endianness`, float rows as is."""
        if not isinstance(self.data, str):
            return [v for row in self.data for v in (row if isinstance(row, list) else [row])]
        import base64
        import struct

        raw = base64.b64decode(self.data)
        code = {"float32": "f", "float16": "e"}[embed_dtype]
        order = {"native": "=", "big": ">", "little": "<"}[endianness]
        return list(struct.unpack(f"{order}{len(raw) // struct.calcsize(code)}{code}", raw))


class PoolingResponse(RepirlModel):
    id: str = ""  # always sent; the schema marks them optional (server-side defaults)
    object: str = "list"
    created: int = 0
    model: str
    data: List[PoolingResponseData]
    usage: PoolingUsage


class ClassificationData(RepirlModel):
    """`probs`: `[1 - s, s]` for probability formats, `[s]` otherwise, s the PRM's score of the input (its default
    aggregation); veRL's reward loop reads `probs[-1]`."""

    index: int
    label: Optional[str]
    probs: List[float]
    num_classes: int


class ClassificationResponse(RepirlModel):
    id: str = ""
    object: str = "list"
    created: int = 0
    model: str
    data: List[ClassificationData]
    usage: PoolingUsage
