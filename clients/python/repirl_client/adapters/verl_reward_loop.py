"""veRL's reward loop (its default, `use_reward_loop: true`) with the PRM as the reward: `RepirlRewardManager`, a
subclass of veRL's reward-loop manager base, loaded through its importlib source setting:

    reward:                                   # veRL >= 0.9 (before: reward_model.reward_loop_source=importlib,
      reward_manager:                         #   reward_model.reward_loop_module_path=..., reward_model.
        source: importlib                     #   reward_loop_class_name=RepirlRewardManager)
        name: RepirlRewardManager
        module:
          path: pkg://repirl_client.adapters.verl_reward_loop
      reward_kwargs: {model: prm, aggregation: min}     # optional; on the command line: +reward.reward_kwargs.model=prm

veRL's RewardLoopWorker builds it as `cls(config=, tokenizer=, compute_score=, reward_router_address=,
reward_model_tokenizer=)` (verl/trainer/ppo/reward.py `load_reward_manager`; positionally in veRL 0.7/0.8), then calls
`run_single(data)` with one sample per call, all samples of a chunk as concurrent tasks on one event loop
(verl/experimental/reward_loop/reward_loop.py `compute_score_batch`). Each call decodes its response, finds the
question (extra_info["question"], else the prompt's last user message, else the decoded prompt: veRL's MATH
preprocessing writes no question) and joins a micro-batch: the calls that arrive within `batch_wait_ms` (5) go to
/v1/score together. It returns `{"reward_score": float, "reward_extra_info": {score, prm_steps, prm_min,
prm_failed}}`, scalars only (veRL stacks every extra-info key with np.array). The PRM score is the whole reward; the
ground truth is not used.

This module imports veRL (it is loaded by veRL only); repirl_client.adapters.verl holds everything else."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Dict, List, Optional, Tuple

from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from repirl_client.adapters.verl import SETTINGS, from_settings, question_of_chat


def _get(cfg: Any, *path: str) -> Any:
    for key in path:
        if cfg is None:
            return None
        cfg = cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)
    return cfg


def reward_kwargs_of(config: Any) -> Dict[str, Any]:
    """The settings in veRL's config: `custom_reward_function.reward_kwargs` (both places), overridden by the
    manager's own `reward_model.reward_kwargs` (before 0.9) and `reward.reward_kwargs` (0.9: verl/experimental/
    reward_loop/reward_loop.py `migrate_legacy_reward_impl` moves the former there)."""
    merged: Dict[str, Any] = {}
    for path in (("custom_reward_function", "reward_kwargs"), ("reward", "custom_reward_function", "reward_kwargs"),
                 ("reward_model", "reward_kwargs"), ("reward", "reward_kwargs")):
        found = _get(config, *path)
        if found:
            merged.update({k: found[k] for k in found.keys()})
    return merged


class RepirlRewardManager(RewardManagerBase):
    """The PRM served by repirl as veRL's reward, one micro-batched /v1/score request per burst of samples."""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None,
                 reward_model_tokenizer=None, **kwargs: Any):
        if "compute_score" in inspect.signature(RewardManagerBase.__init__).parameters:  # veRL >= 0.9
            super().__init__(config, tokenizer, compute_score)
        else:
            super().__init__(config, tokenizer)
        settings = {**reward_kwargs_of(config), **kwargs}
        self.batch_wait_s = float(settings.get("batch_wait_ms", 5)) / 1000.0
        self.scorer = from_settings(**{k: v for k, v in settings.items() if k in SETTINGS})
        self._pending: List[Tuple[Tuple[Optional[str], str], asyncio.Future]] = []
        self._flush_handle: Optional[asyncio.TimerHandle] = None

    def _question(self, item: Any) -> Optional[str]:
        info = item.non_tensor_batch.get("extra_info", None)
        info = info if isinstance(info, dict) else {}
        question = info.get(self.scorer.question_key)
        if isinstance(question, str) and question.strip():
            return question
        raw = item.non_tensor_batch.get("raw_prompt", None)
        if raw is not None:
            question = question_of_chat(raw)
            if question and question.strip():
                return question
        prompt_ids = item.batch["prompts"]
        prompt_mask = item.batch["attention_mask"][: prompt_ids.shape[-1]].bool()  # prompts are left-padded
        text = self.tokenizer.decode(prompt_ids[prompt_mask], skip_special_tokens=True).strip()
        return text or None

    async def run_single(self, data) -> dict:
        item = data[len(data) - 1]  # several sequences: the last one is scored, as veRL's naive manager does
        response_ids = item.batch["responses"]
        valid = int(item.batch["attention_mask"][-response_ids.shape[-1]:].sum())
        response = self.tokenizer.decode(response_ids[:valid], skip_special_tokens=True)
        # no await before joining the batch: the samples veRL starts together (one task each) all join it
        result = self.scorer.result(await self._submit(self._question(item), response))
        return {"reward_score": result["score"], "reward_extra_info": result}

    async def _submit(self, question: Optional[str], response: str) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(((question, response), future))
        if self._flush_handle is None:
            self._flush_handle = loop.call_later(self.batch_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending, self._flush_handle = self._pending, [], None
        asyncio.ensure_future(self._send(batch))

    async def _send(self, batch: List[Tuple[Tuple[Optional[str], str], asyncio.Future]]) -> None:
        outcomes: List[Any] = [None] * len(batch)  # None: no question or no steps, failure_score
        try:
            sep = await self.scorer.separator_async()
            items, where = self.scorer.items([q for (q, _), _ in batch], [r for (_, r), _ in batch], sep)
            for i, out in zip(where, await self.scorer.score_async(items) if items else []):
                outcomes[i] = out
        except Exception as e:  # noqa: BLE001 - the service unreachable: every waiting sample fails, none hangs
            outcomes = [e] * len(batch)
        for (_, future), outcome in zip(batch, outcomes):
            if not future.done():
                future.set_result(outcome)
