"""veRL: the custom reward function, called the way veRL's reward managers call it.

In a veRL config:  custom_reward_function.path=<site-packages>/repirl_client/adapters/verl.py
                   custom_reward_function.name=compute_score   (or compute_score_async / compute_score_batch)
with REPIRL_BASE_URL / REPIRL_API_KEY (and optionally REPIRL_PRM_AGGREGATION) in the workers' environment.

    REPIRL_BASE_URL=http://localhost:8000 REPIRL_API_KEY=KEY python verl_compute_score.py
"""

import asyncio
import json

from repirl_client.adapters.verl import compute_score, compute_score_async, compute_score_batch

question = "Start with 9. Multiply by 4, then subtract 2. What is the result?"
extra_info = {"question": question, "split": "train", "index": 0}  # what veRL's GSM8K preprocessing writes

print("sync ", json.dumps(compute_score("arithmetic", "9*4=36\n\n36-2=34\n\nAnswer: 34", "34", extra_info)))
print("async", json.dumps(asyncio.run(compute_score_async("arithmetic", "9*4=37\n\n37-2=35\n\nAnswer: 35", "34",
                                                          extra_info))))
batch = compute_score_batch(["arithmetic"] * 3, ["9*4=36\n\n36-2=34\n\nAnswer: 34", "Answer: 34", ""], ["34"] * 3,
                            [extra_info] * 3)
print("batch", json.dumps(batch))
