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


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
