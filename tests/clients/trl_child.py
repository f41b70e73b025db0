"""The spawned side of test_adapters.py's AsyncGRPOTrainer test: a fresh interpreter (multiprocessing "spawn", as
TRL's AsyncRolloutWorker starts its child) unpickles the trainer's reward functions and scores one group the way
`_AsyncRolloutLoop._score_group` calls them (trl/experimental/async_grpo/async_rollout_worker.py:1026-1037, 1.16.0)."""

from __future__ import annotations

import asyncio
import pickle
import traceback


def score_group(blob: bytes, row: dict, completions: list, results) -> None:
    try:
        from trl.trainer.utils import is_async_callable

        reward_funcs = pickle.loads(blob)["reward_funcs"]
        n = len(completions)
        reward_kwargs = {key: [row[key]] * n for key in row if key not in {"prompt", "completion", "completion_ids"}}
        kwargs = dict(completions=completions, prompts=[row["prompt"]] * n, completion_ids=[[]] * n, **reward_kwargs)

        async def score():
            return await asyncio.gather(*[f(**kwargs) if is_async_callable(f) else asyncio.to_thread(f, **kwargs)
                                          for f in reward_funcs])

        results.put([list(r) for r in asyncio.run(score())])
    except BaseException:  # noqa: BLE001 - the parent test reports it
        results.put(traceback.format_exc())
