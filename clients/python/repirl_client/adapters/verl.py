"""veRL: a custom reward function backed by the service.

    # ppo_trainer.yaml (or the command line)
    custom_reward_function:
      path: /path/to/site-packages/repirl_client/adapters/verl.py   # or a file of yours that imports from here
      name: compute_score            # compute_score_async for veRL's async reward loop; compute_score_batch for
                                     # reward_model.reward_manager=batch
    # the service: REPIRL_BASE_URL, REPIRL_API_KEY (and REPIRL_PRM_MODEL, REPIRL_PRM_AGGREGATION) in the environment

veRL calls `compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)` per response (sync
ones concurrently from a thread pool; async ones on its event loop) and takes `result["score"]` as the reward and
every other key as a logged column. The question comes from `extra_info[question_key]` ("question", which veRL's
GSM8K/MATH preprocessing writes), else `extra_info["prompt"]`; the response is split at the PRM's separator.

A response the service cannot score (no steps, over a limit, the service failing after retries) scores
`failure_score` (0.0) with `step_scores: []`, so one bad sample never stops a training run; the keys stay the same
for every sample (veRL stacks them into columns). A missing question is a configuration error and raises."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from repirl_client._client import AsyncClient, Client
from repirl_client._exceptions import RepirlError
from repirl_client.adapters._batching import DEFAULT_MAX_ITEMS, AsyncBatchScorer, BatchScorer
from repirl_client.adapters._common import LoopClients, client_kwargs, make_client, separator_of, split_steps
from repirl_client.types import ScoreResult

log = logging.getLogger("repirl_client.verl")


class VerlPRMScore:
    """`compute_score` / `compute_score_async` / `compute_score_batch` bound to one client and PRM."""

    def __init__(self, client: Optional[Client] = None, *, async_client: Optional[AsyncClient] = None,
                 base_url: Optional[str] = None, api_key: Optional[str] = None, model: Optional[str] = None,
                 aggregation: Optional[str] = None, step_separator: Optional[str] = None,
                 question_key: str = "question", failure_score: float = 0.0,
                 max_items_per_request: int = DEFAULT_MAX_ITEMS, max_concurrency: int = 4,
                 timeout: Optional[float] = None, max_retries: Optional[int] = None):
        kwargs = client_kwargs(base_url, api_key, timeout, max_retries)
        self._client_arg, self._kwargs = client, kwargs
        self._client: Optional[Client] = client
        self._async = LoopClients(async_client, kwargs)
        self.model, self.aggregation, self.step_separator = model, aggregation, step_separator
        self.question_key, self.failure_score = question_key, failure_score
        self.max_items, self.max_concurrency = max_items_per_request, max_concurrency
        self._scorer: Optional[BatchScorer] = None

    @property
    def client(self) -> Client:
        if self._client is None:  # lazily: veRL imports the module in processes that never score
            self._client = make_client(None, self._kwargs)
        return self._client

    def _question(self, extra_info: Optional[Dict[str, Any]]) -> str:
        info = extra_info or {}
        question = info.get(self.question_key) or info.get("prompt")
        if isinstance(question, list):  # a chat prompt: the last user message
            question = next((m.get("content") for m in reversed(question) if m.get("role") == "user"), None)
        if not question:
            raise ValueError(f"repirl compute_score: extra_info has no {self.question_key!r} (the PRM scores steps "
                             f"of a question; write it into extra_info in your data preprocessing)")
        return str(question)

    def _result(self, outcome: Any) -> Dict[str, Any]:
        if isinstance(outcome, ScoreResult):
            return {"score": outcome.score, "step_scores": outcome.step_rewards}
        if outcome is not None:
            log.warning("repirl compute_score: not scored (%s); score %s", outcome, self.failure_score)
        return {"score": self.failure_score, "step_scores": []}

    def _sep(self, models) -> str:
        if self.step_separator is None:
            self.step_separator = separator_of(models, self.model)
        return self.step_separator

    def compute_score(self, data_source: Any, solution_str: str, ground_truth: Any = None,
                      extra_info: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Dict[str, Any]:
        return self.compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info])[0]

    def compute_score_batch(self, data_sources: Sequence[Any], solution_strs: Sequence[str],
                            ground_truths: Sequence[Any] = (), extra_infos: Optional[Sequence[Any]] = None,
                            **kwargs: Any) -> List[Dict[str, Any]]:
        """veRL's BatchRewardManager form: one dict per response, scored in as few requests as the limits allow."""
        infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
        questions = [self._question(info) for info in infos]
        try:
            sep = self.step_separator or self._sep(self.client.models())
        except RepirlError as e:
            return [self._result(e) for _ in solution_strs]
        if self._scorer is None:
            self._scorer = BatchScorer(self.client, model=self.model, aggregation=self.aggregation,
                                       max_items=self.max_items, max_concurrency=self.max_concurrency)
        items, pos = [], []
        for i, (q, s) in enumerate(zip(questions, solution_strs)):
            steps = split_steps(s or "", sep)
            if steps:
                items.append((q, steps))
                pos.append(i)
        outcomes: List[Any] = [None] * len(solution_strs)
        for i, out in zip(pos, self._scorer.score(items)):
            outcomes[i] = out
        return [self._result(o) for o in outcomes]

    async def compute_score_async(self, data_source: Any, solution_str: str, ground_truth: Any = None,
                                  extra_info: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Dict[str, Any]:
        question = self._question(extra_info)
        client = self._async.get()
        try:
            sep = self.step_separator or self._sep(await client.models())
        except RepirlError as e:
            return self._result(e)
        steps = split_steps(solution_str or "", sep)
        if not steps:
            return self._result(None)
        scorer = AsyncBatchScorer(client, model=self.model, aggregation=self.aggregation, max_items=1)
        return self._result((await scorer.score([(question, steps)]))[0])


_default: Optional[VerlPRMScore] = None


def _from_env() -> VerlPRMScore:
    global _default
    if _default is None:
        _default = VerlPRMScore(model=os.environ.get("REPIRL_PRM_MODEL") or None,
                                aggregation=os.environ.get("REPIRL_PRM_AGGREGATION") or None)
    return _default


def compute_score(data_source: Any, solution_str: str, ground_truth: Any = None,
                  extra_info: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Dict[str, Any]:
    """`{"score": PRM score, "step_scores": [per-step rewards]}` for one response (service from the environment)."""
    return _from_env().compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)


async def compute_score_async(data_source: Any, solution_str: str, ground_truth: Any = None,
                              extra_info: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Dict[str, Any]:
    """The async form (veRL's reward loop awaits coroutine functions on its own event loop)."""
    return await _from_env().compute_score_async(data_source, solution_str, ground_truth, extra_info, **kwargs)


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any] = (),
                        extra_infos: Optional[Sequence[Any]] = None, **kwargs: Any) -> List[Dict[str, Any]]:
    """For `reward_model.reward_manager=batch`: many responses, few requests."""
    return _from_env().compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, **kwargs)
