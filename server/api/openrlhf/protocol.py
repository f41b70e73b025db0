"""OpenRLHF's remote reward protocol, as its client sends it (openrlhf/utils/agent.py, SingleTurnAgentExecutor
`_fetch_rewards_via_http`: aiohttp `session.post(url, json={"query": [...], "prompts": [...], "labels": [...]})`,
no auth header, 180 s timeout, 5 tries one second apart) and as its own `serve_rm` answers it
(`{"rewards": [...], "scores": [...], "extra_logs": {...}}`, one entry per query).

`query` is the decoded prompt + response (`skip_special_tokens=False`), `prompts` the prompt text the policy saw,
`labels` the dataset's `--data.label_key` column (None without one). Lenient like OpenRLHF's server: unknown keys are
ignored, labels may be any JSON value."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.api.types import Text


class OpenRLHFRewardRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: list[Text] = Field(min_length=1, description="prompt + response, decoded (special tokens kept)")
    prompts: list[Text] | None = Field(None, description="the prompt of each query (OpenRLHF always sends them); "
                                       "one per query, else 422")
    labels: list[Any] | None = Field(None, description="reference answers (dataset label_key), one per query (else "
                                     "422); compared with the response's final answer for `outcome`")


class OpenRLHFRewardResponse(BaseModel):
    rewards: list[float] = Field(description="what OpenRLHF trains on: the PRM score, or outcome + prm_weight x PRM "
                                 "score when `prm_weight` is given and labels are sent")
    scores: list[float] = Field(description="OpenRLHF's dynamic-filtering score: the outcome (0/1) with labels, "
                                "else the reward")
    extra_logs: dict[str, list[float]] = Field(description="logged by OpenRLHF per sample: prm_score, prm_steps, "
                                               "prm_failed (1: the item could not be scored, reward 0), outcome")
