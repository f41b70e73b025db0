"""OpenRLHF: the service answers OpenRLHF's remote reward protocol at /v1/openrlhf/reward, so

    python -m openrlhf.cli.train_ppo_ray ... --reward.remote_url http://SERVICE:8000/v1/openrlhf/reward

(`--remote_rm_url` before OpenRLHF 0.10.2) works unchanged. This script sends what OpenRLHF's SingleTurnAgentExecutor
sends, one sample per request (aiohttp, JSON body, no auth header: list the path in the service's `public_paths`, or
use `--reward.remote_url .../repirl_client/adapters/openrlhf.py`, which posts through the SDK with REPIRL_API_KEY):
with `--data.label_key` (labels "34") and without (OpenRLHF sends "" as every label).

    REPIRL_BASE_URL=http://localhost:8000 python openrlhf_remote_reward.py
"""

import asyncio
import json
import os

import aiohttp

url = os.environ.get("REPIRL_BASE_URL", "http://127.0.0.1:8000").rstrip("/") + "/v1/openrlhf/reward"
prompt = "<|im_start|>user\nStart with 9. Multiply by 4, then subtract 2. What is the result?<|im_end|>\n" \
         "<|im_start|>assistant\n"
right, wrong = "9*4=36\n\n36-2=34\n\nAnswer: 34<|im_end|>", "9*4=37\n\n37-2=35\n\nAnswer: 35<|im_end|>"


async def main() -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        for query, label in (("", "34"), ("", ""), ("?prm_weight=0.1&aggregation=min", "34")):
            for response in (right, wrong):
                payload = {"query": [prompt + response], "prompts": [prompt], "labels": [label]}
                async with session.post(url + query, json=payload) as r:
                    r.raise_for_status()
                    print(f"label {label!r:5} {query or '(defaults)':32} {json.dumps(await r.json())}")


asyncio.run(main())
