"""vLLM's pooling API, request and response shapes as vLLM 0.32 defines them, so clients written for `vllm serve`
(veRL's reward loop, scripts that call Qwen2.5-Math-PRM's `/pooling`) call repirl unchanged:
- requests: vllm/entrypoints/pooling/base/protocol.py (`PoolingBasicRequestMixin` 35-97, `CompletionRequestMixin`
  212-225: `input` as text, texts, token ids or lists of them, `add_special_tokens` True; `ChatRequestOptionsMixin`
  and `ChatRequestMixin` 228-314: `messages`, `add_special_tokens` False; `EncodingRequestMixin`: `encoding_format`,
  `embed_dtype`, `endianness`; `ClassifyRequestMixin`: `use_activation`), pooling/protocol.py 27-58 (`task`),
  classify/protocol.py 26-55;
- responses: pooling/protocol.py 102-114 (`PoolingResponse`), classify/protocol.py 58-73 (`ClassificationResponse`),
  serve/engine/protocol.py 135-140 (`UsageInfo`).
Lenient like vLLM's (`OpenAIBaseModel` allows unknown fields). `activation` is read as `use_activation`: the name
vLLM used before it was renamed, which older veRL reward loops still send. vLLM knobs with nothing to do here
(`user`, `request_id`, `priority`, `cache_salt`, `padding`, `truncation_side`, `mm_processor_kwargs`) are taken and
ignored; knobs repirl does not implement are a 400 naming them (server/api/pooling/serving.py)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from repirl.search.types import COUNT_LIMIT
from server.api.types import Text

# schema bounds (issue 22.2: every number a client sends has one); the PRM's own vocabulary is checked in serving
TokenId = Annotated[int, Field(ge=0, lt=1 << 31)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Text
    content: Text | list[dict[str, Any]] | None = None


class PoolingRequest(BaseModel):
    """One of `input` (vLLM's completion form) or `messages` (its chat form)."""

    model_config = ConfigDict(extra="allow")

    model: Text | None = Field(None, description="PRM name, or the folder it was loaded from (veRL sends the model "
                                                "path); default: the first PRM")
    input: Text | list[Text] | list[TokenId] | list[list[TokenId]] | None = Field(
        None, description="text, texts, token ids or lists of token ids (vLLM's completion form); exactly one of "
                          "`input` and `messages` (else 422)")
    messages: list[ChatMessage] | None = Field(None, description="a conversation, rendered with the PRM tokenizer's "
                                                                 "chat template (vLLM's chat form)")
    add_special_tokens: bool | None = Field(None, description="default: true for `input`, false for `messages`")
    add_generation_prompt: bool = False
    continue_final_message: bool = Field(False, description="not with `add_generation_prompt` (422)")
    chat_template: Text | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    use_activation: bool | None = Field(None, description="null: the PRM's own values; see docs/service.md")
    encoding_format: Literal["float", "base64", "bytes", "bytes_only"] = "float"
    embed_dtype: str = "float32"
    endianness: Literal["native", "big", "little"] = "native"
    task: str | None = None
    dimensions: int | None = Field(None, ge=1, le=COUNT_LIMIT, description="not supported (400)")
    truncate_prompt_tokens: int | None = Field(None, ge=-1, le=COUNT_LIMIT, description="not supported (400)")

    @model_validator(mode="before")
    @classmethod
    def _activation_alias(cls, data):
        if isinstance(data, dict) and "activation" in data and "use_activation" not in data:
            data = {**data, "use_activation": data["activation"]}
        return data


class ClassificationRequest(PoolingRequest):
    pass


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    # repirl's own, beside vLLM's fields: what the engine computed and the cached steps it reused (vLLM's classes
    # keep unknown fields)
    tokens_computed: int = 0
    cached_steps: int = 0


class PoolingResponseData(BaseModel):
    index: int
    object: str = "pooling"
    data: list[list[float]] | list[float] | str


class PoolingResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"pool-{uuid.uuid4().hex}")
    object: str = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[PoolingResponseData]
    usage: UsageInfo


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"classify-{uuid.uuid4().hex}")
    object: str = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ClassificationData]
    usage: UsageInfo
