"""OpenRLHF: two ways to use the service as the reward of `openrlhf.cli.train_ppo_ray`.

1. No code: the service speaks OpenRLHF's remote reward protocol itself.
       --reward.remote_url http://svc:8000/v1/openrlhf/reward
   (knobs as query parameters: ?model=NAME&aggregation=min&prm_weight=0.1)
   OpenRLHF's HTTP client sends no API key: on a service with keys, list `/v1/openrlhf/reward` in its
   `public_paths`, or use 2.

2. A reward-function file (OpenRLHF loads `reward_func(queries, prompts, labels)` from a .py given as remote_url):
       --reward.remote_url /path/to/site-packages/repirl_client/adapters/openrlhf.py
   It posts the same protocol to REPIRL_BASE_URL with REPIRL_API_KEY (query parameters from REPIRL_OPENRLHF_QUERY,
   e.g. "aggregation=min&prm_weight=0.1") and returns the service's answer: {"rewards", "scores", "extra_logs"}."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

from repirl_client._client import Client

PATH = "/v1/openrlhf/reward"
_client: Optional[Client] = None


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Optional[Sequence[Any]] = None,
                **kwargs: Any) -> Dict[str, Any]:
    global _client
    if _client is None:
        _client = Client()
    query = os.environ.get("REPIRL_OPENRLHF_QUERY", "")
    body: Dict[str, List[Any]] = {"query": list(queries), "prompts": list(prompts)}
    if labels is not None:
        body["labels"] = list(labels)
    from repirl_client._base import RequestSpec

    response = _client._request(RequestSpec("POST", PATH + (f"?{query}" if query else ""), body))
    return response.json()  # read (and the connection released) by the client already
