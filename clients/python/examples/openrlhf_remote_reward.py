"""OpenRLHF: the service answers OpenRLHF's remote reward protocol at /v1/openrlhf/reward, so

    python -m openrlhf.cli.train_ppo_ray ... --reward.remote_url http://SERVICE:8000/v1/openrlhf/reward

works unchanged. This script sends what OpenRLHF's SingleTurnAgentExecutor sends (aiohttp, JSON body, no auth
header: list the path in the service's `public_paths`, or use `--reward.remote_url .../repirl_client/adapters/
openrlhf.py`, which posts through the SDK with REPIRL_API_KEY).

    REPIRL_BASE_URL=http://localhost:8000 python openrlhf_remote_reward.py
"""

import asyncio
import json
import os

import aiohttp

url = os.environ.get("REPIRL_BASE_URL", "http://127.0.0.1:8000").rstrip("/") + "/v1/openrlhf/reward"
prompt = "<|im_start|>user\nStart with 9. Multiply by 4, then subtract 2. What is the result?<|im_end|>\n" \
         "<|im_start|>assistant\n"
payload = {"query": [prompt + "9*4=36\n\n36-2=34\n\nAnswer: 34<|im_end|>", prompt + "9*4=37\n\n37-2=35\n\nAnswer: 35"],
           "prompts": [prompt, prompt], "labels": ["34", "34"]}


async def main() -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        for query in ("", "?prm_weight=0.1&aggregation=min"):
            async with session.post(url + query, json=payload) as response:
                response.raise_for_status()
                print(query or "(defaults)", json.dumps(await response.json()))


asyncio.run(main())
