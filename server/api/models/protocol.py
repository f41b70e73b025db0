from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    kind: Literal["prm", "policy"]
    owned_by: str = "repirl"
    root: str  # folder or URL
    revision: str | None = None
    format: str | None = None
    engine: str | None = None
    default_aggregation: str | None = None
    step_separator: str | None = None
    # as vLLM's ModelCard (vllm/entrypoints/serve/engine/protocol.py): the longest input in tokens. A PRM: the longest
    # trajectory (prompt + steps) it scores, its context or the service's `max_tokens` limit, whichever is smaller
    # (longer is a 413); a policy: prompt + generated tokens
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
