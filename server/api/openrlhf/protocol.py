"""OpenRLHF's remote reward protocol, as its client sends it (openrlhf/utils/agent.py, SingleTurnAgentExecutor
`_fetch_rewards_via_http`: aiohttp `session.post(url, json={"query": [...], "prompts": [...], "labels": [...]})`,
no auth header, 180 s timeout, 5 tries one second apart) and as its own `serve_rm` answers it
(`{"rewards": [...], "scores": [...], "extra_logs": {...}}`, one entry per query).

`query` is the decoded prompt + response (`skip_special_tokens=False`), `prompts` the prompt text the policy saw,
`labels` the dataset's `--data.label_key` column, `""` for every sample without one (openrlhf/datasets/
prompts_dataset.py:44). `query: []` comes too: OpenRLHF <= 0.11.0 splits one query over all `--reward.remote_url`
endpoints and sends the others empty lists (openrlhf/utils/agent.py `_fetch_rewards_via_http`); 0.11.2 skips them.
Lenient like OpenRLHF's server: unknown keys are ignored, labels may be any JSON value."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.api.types import Text


# every sample of every answer has all of these: OpenRLHF batches per-sample `extra_logs` by the first sample's keys
# (openrlhf/trainer/ppo_utils/experience.py `make_experience_batch`), so a key missing from a later sample is a KeyError
EXTRA_LOG_KEYS = ("prm_score", "prm_value", "prm_steps", "prm_failed", "outcome", "labelled")


class OpenRLHFRewardRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: list[Text] = Field(description="prompt + response, decoded (special tokens kept); [] answers empty lists")
    prompts: list[Text] | None = Field(None, description="the prompt of each query (OpenRLHF always sends them); "
                                       "one per query, else 422")
    labels: list[Any] | None = Field(None, description="reference answers (dataset label_key), one per query (else "
                                     "422); compared with the response's final answer for `outcome`. null, \"\" "
                                     "or whitespace: no label (OpenRLHF sends \"\" without --data.label_key)")


class OpenRLHFRewardResponse(BaseModel):
    """Per sample, whatever else shares the request: `rewards` = outcome + prm_weight x prm_score for a labelled
    sample when `prm_weight` is given, else prm_score; `scores` = the outcome (0/1) for a labelled sample, else
    prm_value (in [0, 1], so OpenRLHF's dynamic filtering, which keeps prompts whose mean score lies in (0, 1), does
    not drop every unlabelled prompt)."""

    rewards: list[float] = Field(description="what OpenRLHF trains on: the PRM score, or outcome + prm_weight x PRM "
                                 "score for a labelled sample when `prm_weight` is given")
    scores: list[float] = Field(description="OpenRLHF's dynamic-filtering score: the outcome (0/1) for a labelled "
                                "sample, else the PRM's value in [0, 1] (prm_value)")
    extra_logs: dict[str, list[float]] = Field(description="logged by OpenRLHF per sample, the same keys always: "
                                               "prm_score (raw aggregate), prm_value (in [0, 1]: calibrated p_correct, "
                                               "the format's own probability, or sigmoid of the raw reward), "
                                               "prm_steps, prm_failed (1: not scored, reward 0), outcome (0 where "
                                               "labelled is 0), labelled (1: a label was sent)")
