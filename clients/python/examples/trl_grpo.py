"""TRL: one GRPO step whose reward is the service's PRM score (the blocking, the async-instance and the plain
`async def` forms side by side; TRL >= 0.27, the instance form >= 1.14).

    REPIRL_BASE_URL=http://localhost:8000 REPIRL_API_KEY=KEY python trl_grpo.py --model runs/demo/policy

--model: a causal-LM folder (the demo policy; any small model works). The dataset carries the plain question in a
`question` column, which the reward function uses (the prompt may hold a template or chat turns).
"""

import argparse
import functools
import json
import tempfile
from pathlib import Path

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from repirl_client.adapters.trl import AsyncPRMReward, PRMReward, repirl_prm

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="runs/demo/policy")
ap.add_argument("--steps", type=int, default=1)
ap.add_argument("--question", action="append", help="a training question (repeatable; default: two demo questions)")
args = ap.parse_args()

questions = args.question or ["Start with 9. Multiply by 4, then subtract 2. What is the result?",
                              "Start with 14. Multiply by 5, then subtract 6. What is the result?"]
template = "Question: {question}\nSolution:\n"  # the demo policy's prompt (its policy.json)
policy_json = Path(args.model) / "policy.json"
if policy_json.exists():
    template = json.loads(policy_json.read_text())["prompt_template"]["template"]

dataset = Dataset.from_dict({"prompt": [template.replace("{question}", q) for q in questions], "question": questions})
dataset = dataset.select([i % len(questions) for i in range(2)])  # one step of 8 completions: 2 prompts x 4
rewards = [PRMReward(aggregation="min", name="prm_min"),  # one float per completion, None if it cannot be scored
           AsyncPRMReward(aggregation="mean-token", name="prm_mean"),  # TRL >= 1.14
           functools.partial(repirl_prm, repirl_settings={"aggregation": "last"})]  # TRL >= 0.27
with tempfile.TemporaryDirectory() as out:
    config = GRPOConfig(output_dir=out, max_steps=args.steps, per_device_train_batch_size=8, num_generations=4,
                        max_completion_length=48, temperature=1.0, report_to=[], use_cpu=True, bf16=False,
                        logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=args.model, reward_funcs=rewards, args=config, train_dataset=dataset)
    trainer.train()
log = trainer.state.log_history[0]
print(json.dumps({k: round(v, 4) for k, v in log.items() if k.startswith(("rewards/", "reward", "prm_", "repirl_prm"))}))
