"""veRL: the custom reward function form, called the way veRL's reward managers call it (the reward-loop manager,
RepirlRewardManager, is the documented form: examples/verl_reward_loop.yaml).

In a veRL config:  reward.custom_reward_function.path=pkg://repirl_client.adapters.verl
                   reward.custom_reward_function.name=compute_score   (or compute_score_async / compute_score_batch)
with REPIRL_BASE_URL / REPIRL_API_KEY (and optionally REPIRL_PRM_AGGREGATION) in the workers' environment.

    REPIRL_BASE_URL=http://localhost:8000 REPIRL_API_KEY=KEY python verl_compute_score.py
"""

import asyncio
import json

import numpy as np

from repirl_client.adapters.verl import compute_score, compute_score_async, compute_score_batch

question = "Start with 9. Multiply by 4, then subtract 2. What is the result?"
gsm8k_info = {"question": question, "split": "train", "index": 0}  # veRL's GSM8K preprocessing writes the question
math_info = {"split": "train", "index": 0}  # its MATH preprocessing does not: prm_failed 1, no exception

print("sync ", json.dumps(compute_score("gsm8k", "9*4=36\n\n36-2=34\n\nAnswer: 34", "34", gsm8k_info)))
print("async", json.dumps(asyncio.run(compute_score_async("gsm8k", "9*4=37\n\n37-2=35\n\nAnswer: 35", "34",
                                                          gsm8k_info, aggregation="min"))))  # reward_kwargs
batch = compute_score_batch(["gsm8k"] * 3 + ["math"], ["9*4=36\n\n36-2=34\n\nAnswer: 34", "Answer: 34", "",
                                                        "9*4=36\n\n36-2=34"], ["34"] * 4, [gsm8k_info] * 3 + [math_info])
print("batch", json.dumps(batch))
print("stacked as veRL does:", {k: np.array([r[k] for r in batch]).tolist() for k in batch[0]})
