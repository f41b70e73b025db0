"""veRL: the PRM as veRL's reward. Two forms; the first is the documented one.

1. A reward-loop manager (veRL's default reward loop, `use_reward_loop: true`): it sees each sample's prompt, so no
   preprocessing has to copy the question into `extra_info`, and it batches the samples of a step into /v1/score:
       reward.reward_manager.source=importlib
       reward.reward_manager.name=RepirlRewardManager
       reward.reward_manager.module.path=pkg://repirl_client.adapters.verl_reward_loop
   (repirl_client/adapters/verl_reward_loop.py, which imports veRL; this module does not).

2. A custom reward function, `custom_reward_function.path=pkg://repirl_client.adapters.verl` (or the file's path)
   with `custom_reward_function.name=compute_score` (or `compute_score_async`; `compute_score_batch` for the legacy
   `reward_model.reward_manager=batch`). veRL calls it per response with `extra_info`, never the prompt: the question
   must be in `extra_info["question"]` (veRL's GSM8K preprocessing writes it; its MATH preprocessing does not: such a
   sample scores `failure_score` with `prm_failed: 1`, and a warning names form 1).

The service comes from REPIRL_BASE_URL / REPIRL_API_KEY, the PRM and aggregation from REPIRL_PRM_MODEL /
REPIRL_PRM_AGGREGATION, overridden by `reward_kwargs` (`custom_reward_function.reward_kwargs`, which veRL merges into
every call: verl/trainer/ppo/reward.py `get_custom_reward_fn`; for form 1 `reward.reward_kwargs`, or
`reward_model.reward_kwargs` before veRL 0.9): `model`, `aggregation`, `base_url`, `api_key`, ...

Every result is a dict of scalars with the same keys for every sample, `score`, `prm_steps`, `prm_min`,
`prm_failed`: veRL stacks each key over the batch with `np.array` (verl/experimental/reward_loop/reward_loop.py
`compute_rm_score`), and per-step lists of different lengths make NumPy >= 1.24 raise. A response that cannot be
scored (no steps, over a limit, the service failing after retries) scores `failure_score` (0.0), so one bad sample
never stops a training run."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from repirl_client._client import AsyncClient, Client
from repirl_client._exceptions import RepirlError
from repirl_client.adapters._batching import DEFAULT_MAX_ITEMS, AsyncBatchScorer, BatchScorer
from repirl_client.adapters._common import LoopClients, Picklable, client_kwargs, make_client, separator_of, split_steps
from repirl_client.types import ScoreResult

log = logging.getLogger("repirl_client.verl")

RESULT_KEYS = ("score", "prm_steps", "prm_min", "prm_failed")
# settings a `reward_kwargs` mapping may carry (anything else there, e.g. another manager's, is left alone)
SETTINGS = ("model", "aggregation", "base_url", "api_key", "timeout", "max_retries", "step_separator", "question_key",
            "failure_score", "max_items_per_request", "max_concurrency")


def question_of_chat(prompt: Any) -> Optional[str]:
    """The last user message of a chat prompt (veRL's `prompt` / `raw_prompt`: a list of {"role", "content"})."""
    if isinstance(prompt, str):
        return prompt
    try:
        messages = list(prompt)
    except TypeError:
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else None
    return None


class VerlPRMScore(Picklable):
    """`compute_score` / `compute_score_async` / `compute_score_batch` bound to one client and PRM."""

    _TRANSIENT = ("_client", "_scorer", "_async")

    def __init__(self, client: Optional[Client] = None, *, async_client: Optional[AsyncClient] = None,
                 base_url: Optional[str] = None, api_key: Optional[str] = None, model: Optional[str] = None,
                 aggregation: Optional[str] = None, step_separator: Optional[str] = None,
                 question_key: str = "question", failure_score: float = 0.0,
                 max_items_per_request: int = DEFAULT_MAX_ITEMS, max_concurrency: int = 4,
                 timeout: Optional[float] = None, max_retries: Optional[int] = None):
        self._kwargs = client_kwargs(base_url, api_key, timeout, max_retries)
        self._client: Optional[Client] = client
        self._async: Optional[LoopClients] = LoopClients(async_client, self._kwargs)
        self.model, self.aggregation, self.step_separator = model, aggregation, step_separator
        self.question_key, self.failure_score = question_key, float(failure_score)
        self.max_items, self.max_concurrency = max_items_per_request, max_concurrency
        self._scorer: Optional[BatchScorer] = None
        self._warned_no_question = False
        self.requests_sent = 0  # /v1/score requests of the async forms

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._async = LoopClients(None, self._kwargs)

    @property
    def client(self) -> Client:
        if self._client is None:  # lazily: veRL imports the module in processes that never score
            self._client = make_client(None, self._kwargs)
        return self._client

    def question(self, extra_info: Optional[Dict[str, Any]]) -> Optional[str]:
        info = extra_info if isinstance(extra_info, dict) else {}
        question = info.get(self.question_key) or info.get("prompt")
        if question is not None and not isinstance(question, str):
            question = question_of_chat(question)
        if question and question.strip():
            return question
        if not self._warned_no_question:
            self._warned_no_question = True
            log.warning("repirl compute_score: extra_info has no %r (veRL's MATH preprocessing writes none): such "
                        "samples score %s with prm_failed 1. RepirlRewardManager (repirl_client.adapters."
                        "verl_reward_loop) reads the question from the prompt itself.", self.question_key,
                        self.failure_score)
        return None

    def result(self, outcome: Any) -> Dict[str, Any]:
        """The dict veRL gets: scalars only, the keys of RESULT_KEYS always."""
        if isinstance(outcome, ScoreResult) and outcome.step_rewards:
            return {"score": float(outcome.score), "prm_steps": len(outcome.step_rewards),
                    "prm_min": float(min(outcome.step_rewards)), "prm_failed": 0.0}
        if isinstance(outcome, Exception):
            log.warning("repirl compute_score: not scored (%s); score %s", outcome, self.failure_score)
        return {"score": self.failure_score, "prm_steps": 0, "prm_min": 0.0, "prm_failed": 1.0}

    def _sep(self, models) -> str:
        if self.step_separator is None:
            self.step_separator = separator_of(models, self.model)
        return self.step_separator

    def items(self, questions: Sequence[Optional[str]], solutions: Sequence[str],
              sep: str) -> Tuple[List[Tuple[str, List[str]]], List[int]]:
        items, pos = [], []
        for i, (q, s) in enumerate(zip(questions, solutions)):
            steps = split_steps(s or "", sep)
            if q and steps:
                items.append((q, steps))
                pos.append(i)
        return items, pos

    def compute_score(self, data_source: Any, solution_str: str, ground_truth: Any = None,
                      extra_info: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Dict[str, Any]:
        return self.compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info])[0]

    def compute_score_batch(self, data_sources: Sequence[Any], solution_strs: Sequence[str],
                            ground_truths: Sequence[Any] = (), extra_infos: Optional[Sequence[Any]] = None,
                            **kwargs: Any) -> List[Dict[str, Any]]:
        """veRL's legacy BatchRewardManager form: one dict per response, scored in as few requests as the limits
        allow."""
        infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
        questions = [self.question(info) for info in infos]
        try:
            sep = self.step_separator or self._sep(self.client.models())
        except RepirlError as e:
            return [self.result(e) for _ in solution_strs]
        if self._scorer is None:
            self._scorer = BatchScorer(self.client, model=self.model, aggregation=self.aggregation,
                                       max_items=self.max_items, max_concurrency=self.max_concurrency)
        items, pos = self.items(questions, solution_strs, sep)
        outcomes: List[Any] = [None] * len(solution_strs)
        for i, out in zip(pos, self._scorer.score(items)):
            outcomes[i] = out
        return [self.result(o) for o in outcomes]

    async def score_async(self, items: Sequence[Tuple[str, Sequence[str]]]) -> List[Any]:
        """Many (question, steps) on the running loop's client: one outcome (ScoreResult or exception) each."""
        scorer = AsyncBatchScorer(self._async.get(), model=self.model, aggregation=self.aggregation,
                                  max_items=self.max_items, max_concurrency=self.max_concurrency)
        try:
            return await scorer.score(items)
        finally:  # what the service taught (a lower max_items) serves the next call
            self.requests_sent += scorer.requests_sent
            self.max_items = min(self.max_items, scorer.limits.max_items)

    async def separator_async(self) -> str:
        return self.step_separator or self._sep(await self._async.get().models())

    async def compute_score_async(self, data_source: Any, solution_str: str, ground_truth: Any = None,
                                  extra_info: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Dict[str, Any]:
        question = self.question(extra_info)
        try:
            sep = await self.separator_async()
        except RepirlError as e:
            return self.result(e)
        items, _ = self.items([question], [solution_str], sep)
        return self.result((await self.score_async(items))[0] if items else None)


_defaults: Dict[Tuple, VerlPRMScore] = {}


def from_settings(**overrides: Any) -> VerlPRMScore:
    """The process's VerlPRMScore for these settings: REPIRL_PRM_MODEL / REPIRL_PRM_AGGREGATION, then `overrides`
    (veRL's `reward_kwargs`; keys outside SETTINGS are ignored)."""
    settings: Dict[str, Any] = {"model": os.environ.get("REPIRL_PRM_MODEL") or None,
                                "aggregation": os.environ.get("REPIRL_PRM_AGGREGATION") or None}
    settings.update({k: v for k, v in overrides.items() if k in SETTINGS and v is not None})
    key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
    if key not in _defaults:
        _defaults[key] = VerlPRMScore(**settings)
    return _defaults[key]


def compute_score(data_source: Any, solution_str: str, ground_truth: Any = None,
                  extra_info: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Dict[str, Any]:
    """`{"score", "prm_steps", "prm_min", "prm_failed"}` for one response; `kwargs`: veRL's `reward_kwargs`."""
    return from_settings(**kwargs).compute_score(data_source, solution_str, ground_truth, extra_info)


async def compute_score_async(data_source: Any, solution_str: str, ground_truth: Any = None,
                              extra_info: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Dict[str, Any]:
    """The async form (veRL's reward loop awaits coroutine functions on its own event loop)."""
    return await from_settings(**kwargs).compute_score_async(data_source, solution_str, ground_truth, extra_info)


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any] = (),
                        extra_infos: Optional[Sequence[Any]] = None, **kwargs: Any) -> List[Dict[str, Any]]:
    """For the legacy `reward_model.reward_manager=batch`: many responses, few requests."""
    return from_settings(**kwargs).compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos)
