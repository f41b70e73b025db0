"""Drop-in reward functions for the RL trainers people already run (imported lazily: each module needs only
repirl_client itself, never the trainer it plugs into).

- `repirl_client.adapters.trl`: `PRMReward`, `AsyncPRMReward`, `repirl_prm` for `GRPOTrainer(reward_funcs=[...])`
- `repirl_client.adapters.verl_reward_loop`: `RepirlRewardManager` for veRL's reward loop (imports veRL)
- `repirl_client.adapters.verl`: `compute_score`, `compute_score_async`, `compute_score_batch`, `VerlPRMScore`
- `repirl_client.adapters.openrlhf`: `reward_func` (or the service's own /v1/openrlhf/reward route)
- `repirl_client.adapters.search_and_learn`: `RepirlPRM` with `score(questions, outputs)`
"""

from repirl_client.adapters._batching import AsyncBatchScorer, BatchScorer

__all__ = ["BatchScorer", "AsyncBatchScorer"]
