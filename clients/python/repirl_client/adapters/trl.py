"""TRL: PRM rewards for `GRPOTrainer(reward_funcs=[...])`, `AsyncGRPOTrainer` and any trainer calling reward
functions TRL's way.

    from repirl_client.adapters.trl import PRMReward
    trainer = GRPOTrainer(model=..., reward_funcs=[PRMReward(base_url="http://svc:8000", aggregation="min")], ...)

TRL calls `f(prompts=..., completions=..., completion_ids=..., **dataset_columns_and_trainer_kwargs)` and wants one
float per completion, `None` where a function has no reward (it becomes NaN and is ignored in the sum). Here:

- the question is the dataset column `question_column` ("question") when the dataset has it, else the prompt
  (conversational prompts: the last user message);
- the completion (text, or the assistant messages of a conversational one; with `include_reasoning=True` their
  `reasoning_content` too, a thinking model's steps) is split at the PRM's step separator (from GET /v1/models) into
  steps; one /v1/score request carries many completions (repirl_client/adapters/_batching.py), identical ones are
  scored once;
- a completion that cannot be scored (no steps, over a service limit, a failed request after the client's retries)
  gets `None`, and the batch goes on; `log_metric("<name>/failed", share)` reports how many, and
  `log_extra("<name>/steps", ...)` / `log_extra("<name>/step_rewards", ...)` put each completion's step count and
  step rewards (a JSON list) in TRL's completions table (TRL >= 1.0 passes both callbacks; older ones do not, and
  nothing is logged).

Which to use (the minimum TRL is 0.27.0, the first that awaits async reward functions; tested with 1.16.0):

- `PRMReward`: blocking; TRL runs it in its own thread.
- `AsyncPRMReward`: an instance with `async def __call__`; TRL >= 1.14 detects it (`trl.trainer.utils.
  is_async_callable`). TRL 0.27-1.13 test `inspect.iscoroutinefunction(reward_func)`, which is False for an instance:
  they would call it without awaiting. For those, use:
- `repirl_prm`: a plain module-level `async def` (settings from REPIRL_BASE_URL, REPIRL_API_KEY, REPIRL_PRM_MODEL,
  REPIRL_PRM_AGGREGATION; or `functools.partial(repirl_prm, repirl_settings={"aggregation": "min"})`).

All three pickle (AsyncGRPOTrainer sends `reward_funcs` to a spawned process): their settings travel, clients and
connection pools are made on first use in each process. A `client=` object given to the constructor is replaced by
one with its base URL, key, timeout and retries there."""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from repirl_client._client import AsyncClient, Client
from repirl_client._exceptions import RepirlError
from repirl_client.adapters._batching import DEFAULT_MAX_ITEMS, AsyncBatchScorer, BatchScorer, Outcome
from repirl_client.adapters._common import (LoopClients, Picklable, client_kwargs, kwargs_of, make_client,
                                            separator_of, split_steps)
from repirl_client.types import ScoreResult

log = logging.getLogger("repirl_client.trl")
_REASONING_KEYS = ("reasoning_content", "reasoning")  # TRL's parse_response schemas / vLLM's newer field name


def _text(x: Any, role: Optional[str], reasoning_sep: Optional[str] = None) -> str:
    """Plain text of a prompt/completion: a string, or the content of chat messages (of `role` when given); with
    `reasoning_sep`, each message's reasoning first, joined to its content by the separator."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        x = [x]
    parts = []
    for m in x or []:
        if role is None or m.get("role") == role:
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            content = content or ""
            if reasoning_sep is not None:
                thought = next((m[k] for k in _REASONING_KEYS if isinstance(m.get(k), str) and m[k].strip()), None)
                if thought:
                    content = thought + reasoning_sep + content
            parts.append(content)
    return parts[-1] if role == "user" and parts else "".join(parts)


class _PRMRewardBase(Picklable):
    def __init__(self, *, model: Optional[str], aggregation: Optional[str], step_separator: Optional[str],
                 question_column: Optional[str], question_fn: Optional[Callable[[Any], str]], include_reasoning: bool,
                 max_items_per_request: int, max_concurrency: int, name: str):
        self.model, self.aggregation = model, aggregation
        self.step_separator = step_separator
        self.question_column, self.question_fn = question_column, question_fn
        self.include_reasoning = include_reasoning
        self.max_items_per_request, self.max_concurrency = max_items_per_request, max_concurrency
        self.__name__ = name  # TRL names the reward in its logs after this

    def _question(self, i: int, prompt: Any, kwargs: Dict[str, Any]) -> str:
        if self.question_fn is not None:
            return self.question_fn(prompt)
        column = kwargs.get(self.question_column) if self.question_column else None
        if isinstance(column, (list, tuple)) and i < len(column) and column[i]:
            return str(column[i])
        return _text(prompt, None if isinstance(prompt, str) else "user").strip()

    def _items(self, prompts, completions, kwargs) -> Tuple[List[Tuple[str, List[str]]], List[int]]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        sep = self.step_separator or "\n\n"
        items, positions = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            question = self._question(i, prompt, kwargs)
            text = _text(completion, None if isinstance(completion, str) else "assistant",
                         sep if self.include_reasoning else None)
            steps = split_steps(text, sep)
            if question and steps:
                items.append((question, steps))
                positions.append(i)
        return items, positions

    def _rewards(self, n: int, positions: List[int], outcomes: Sequence[Outcome], kwargs) -> List[Optional[float]]:
        rewards: List[Optional[float]] = [None] * n
        steps: List[Optional[int]] = [None] * n
        step_rewards: List[Optional[str]] = [None] * n
        errors = []
        for i, out in zip(positions, outcomes):
            if isinstance(out, ScoreResult):
                rewards[i], steps[i], step_rewards[i] = out.score, len(out.step_rewards), json.dumps(out.step_rewards)
            else:
                errors.append(out)
        failed = sum(r is None for r in rewards)
        if errors:
            log.warning("repirl PRM: %d of %d completions not scored (first error: %s)", len(errors), n, errors[0])
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if callable(log_metric) and n:
            log_metric(f"{self.__name__}/failed", failed / n)
        if callable(log_extra) and n:
            log_extra(f"{self.__name__}/steps", steps)
            log_extra(f"{self.__name__}/step_rewards", step_rewards)
        return rewards


class PRMReward(_PRMRewardBase):
    """A blocking TRL reward function backed by the service.

    client / base_url / api_key / timeout / max_retries: a `Client`, or how to build one (env: REPIRL_BASE_URL,
    REPIRL_API_KEY). model: the PRM (default: the service's first). aggregation: step rewards -> one float
    ("mean-token", "min", "last", "prod", "sum"; default: the PRM's). step_separator: default the PRM's.
    include_reasoning: also score the completion's `reasoning_content` (thinking models; default False: the answer
    text only). max_items_per_request: the first guess of the service's `limits.max_items` (learnt from a 413 when
    lower). max_concurrency: requests in flight per call. name: the reward's name in TRL's logs."""

    _TRANSIENT = ("_client", "_scorer", "_lock")

    def __init__(self, client: Optional[Client] = None, *, base_url: Optional[str] = None,
                 api_key: Optional[str] = None, model: Optional[str] = None, aggregation: Optional[str] = None,
                 step_separator: Optional[str] = None, question_column: Optional[str] = "question",
                 question_fn: Optional[Callable[[Any], str]] = None, include_reasoning: bool = False,
                 max_items_per_request: int = DEFAULT_MAX_ITEMS, max_concurrency: int = 4,
                 timeout: Optional[float] = None, max_retries: Optional[int] = None, name: str = "repirl_prm"):
        super().__init__(model=model, aggregation=aggregation, step_separator=step_separator,
                         question_column=question_column, question_fn=question_fn,
                         include_reasoning=include_reasoning, max_items_per_request=max_items_per_request,
                         max_concurrency=max_concurrency, name=name)
        self._owns = client is None
        self._kwargs = kwargs_of(client) if client is not None else client_kwargs(base_url, api_key, timeout,
                                                                                 max_retries)
        self._client: Optional[Client] = client
        self._scorer: Optional[BatchScorer] = None
        self._lock = threading.Lock()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # unpickled: this process makes (and owns) its own client
        self._lock, self._owns = threading.Lock(), True

    @property
    def scorer(self) -> BatchScorer:
        if self._scorer is None:
            with self._lock:
                if self._scorer is None:
                    self._client = make_client(self._client, self._kwargs)
                    self._scorer = BatchScorer(self._client, model=self.model, aggregation=self.aggregation,
                                               max_items=self.max_items_per_request,
                                               max_concurrency=self.max_concurrency)
        return self._scorer

    @property
    def client(self) -> Client:
        return self.scorer.client

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                 **kwargs: Any) -> List[Optional[float]]:
        if self.step_separator is None:
            try:
                self.step_separator = separator_of(self.client.models(), self.model)
            except RepirlError as e:  # the service is unreachable: no rewards this time, the training goes on
                return self._rewards(len(completions), list(range(len(completions))), [e] * len(completions), kwargs)
        items, positions = self._items(prompts, completions, kwargs)
        return self._rewards(len(completions), positions, self.scorer.score(items), kwargs)

    def close(self) -> None:
        if self._owns and self._client is not None:
            self._client.close()


class AsyncPRMReward(_PRMRewardBase):
    """The asyncio twin of `PRMReward` (same arguments; `client` must be an `AsyncClient` used on one loop, or
    omitted: then one client is made per event loop that calls it). Needs TRL >= 1.14 (see the module's doc)."""

    _TRANSIENT = ("_clients", "_scorers")

    def __init__(self, client: Optional[AsyncClient] = None, *, base_url: Optional[str] = None,
                 api_key: Optional[str] = None, model: Optional[str] = None, aggregation: Optional[str] = None,
                 step_separator: Optional[str] = None, question_column: Optional[str] = "question",
                 question_fn: Optional[Callable[[Any], str]] = None, include_reasoning: bool = False,
                 max_items_per_request: int = DEFAULT_MAX_ITEMS, max_concurrency: int = 4,
                 timeout: Optional[float] = None, max_retries: Optional[int] = None, name: str = "repirl_prm"):
        super().__init__(model=model, aggregation=aggregation, step_separator=step_separator,
                         question_column=question_column, question_fn=question_fn,
                         include_reasoning=include_reasoning, max_items_per_request=max_items_per_request,
                         max_concurrency=max_concurrency, name=name)
        self._kwargs = kwargs_of(client) if client is not None else client_kwargs(base_url, api_key, timeout,
                                                                                 max_retries)
        self._clients = LoopClients(client, self._kwargs)
        self._scorers: Dict[int, AsyncBatchScorer] = {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # unpickled: clients of this process
        self._clients, self._scorers = LoopClients(None, self._kwargs), {}

    def _scorer(self) -> AsyncBatchScorer:
        client = self._clients.get()
        scorer = self._scorers.get(id(client))
        if scorer is None or scorer.client is not client:
            learnt = min((s.limits.max_items for s in self._scorers.values()), default=self.max_items_per_request)
            scorer = self._scorers[id(client)] = AsyncBatchScorer(
                client, model=self.model, aggregation=self.aggregation, max_items=learnt,
                max_concurrency=self.max_concurrency)
        return scorer

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                       **kwargs: Any) -> List[Optional[float]]:
        scorer = self._scorer()
        if self.step_separator is None:
            try:
                self.step_separator = separator_of(await scorer.client.models(), self.model)
            except RepirlError as e:
                return self._rewards(len(completions), list(range(len(completions))), [e] * len(completions), kwargs)
        items, positions = self._items(prompts, completions, kwargs)
        return self._rewards(len(completions), positions, await scorer.score(items), kwargs)

    async def aclose(self) -> None:
        await self._clients.aclose()


_FUNCTION_REWARDS: Dict[Tuple, AsyncPRMReward] = {}  # per process: settings -> the reward that keeps their clients


async def repirl_prm(prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, *,
                     repirl_settings: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> List[Optional[float]]:
    """A plain `async def` reward function (TRL 0.27-1.13 detect async rewards with `inspect.iscoroutinefunction`).
    The service from REPIRL_BASE_URL / REPIRL_API_KEY, the PRM and aggregation from REPIRL_PRM_MODEL /
    REPIRL_PRM_AGGREGATION; `repirl_settings` (any `AsyncPRMReward` keyword but `client`, e.g. through
    `functools.partial(repirl_prm, repirl_settings={"aggregation": "min"})`) overrides them. TRL logs it as
    `repirl_prm` (its `__name__`, also for a partial of it)."""
    settings: Dict[str, Any] = {"model": os.environ.get("REPIRL_PRM_MODEL") or None,
                                "aggregation": os.environ.get("REPIRL_PRM_AGGREGATION") or None}
    settings.update(repirl_settings or {})
    key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
    reward = _FUNCTION_REWARDS.get(key)
    if reward is None:
        reward = _FUNCTION_REWARDS[key] = AsyncPRMReward(**settings)
    return await reward(prompts, completions, completion_ids, **kwargs)
