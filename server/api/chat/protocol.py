"""OpenAI chat-completions schemas (the subset a reasoning search needs) plus repirl's fields, which the official
client sends with `extra_body={"search": {...}, "prm": ..., "return_trace": true}`."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from repirl.search import Budget, SearchParams
from repirl.search.types import COUNT_LIMIT
from server.api.types import Seed, Text


class ContentPart(BaseModel):
    type: Literal["text"] = "text"
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ... are accepted and ignored
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (user, metadata, ...) do not fail a request
    model: Text = Field(description="the policy ('policy' in GET /v1/models) or a PRM name")
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=COUNT_LIMIT, description="caps each reasoning step (the search decides the steps)")
    max_completion_tokens: int | None = Field(None, ge=1, le=COUNT_LIMIT)
    seed: Seed | None = None
    n: int = Field(1, ge=1, le=1, description="one choice: the search's pick (use search.n for the sample budget)")
    stream: bool = Field(False, description="chat.completion.chunk events: the role at once, the chosen trajectory "
                         "step by step when the search ends, then [DONE] (/v1/search streams every search step)")
    stream_options: StreamOptions | None = None
    # repirl extensions
    search: SearchParams = Field(default_factory=lambda: SearchParams(strategy="best-of-n", n=4))
    prm: Text | None = Field(None, description="PRM name; default: the first loaded")
    budget: Budget | None = Field(None, description="spending limits of the search (policy_tokens, prm_tokens, "
                                  "seconds); replaces search.budget; `search.stats.stopped_by` names the one reached")
    return_trace: bool = False


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int  # every token the policy generated for this search (its real cost)
    total_tokens: int


class SearchInfo(BaseModel):
    strategy: str
    select: str
    prm: str
    answer: str | None
    score: float | None
    stats: dict[str, Any]
    trace: dict[str, Any] | None = None  # with return_trace: every step's beams/pruned and the candidates


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    search: SearchInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` line of a streamed chat completion. repirl's extras: `search_step` (with return_trace, one chunk
    per search step, choices empty) and `search` (on the chunk that carries finish_reason)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    search: SearchInfo | None = None
    search_step: dict[str, Any] | None = None
