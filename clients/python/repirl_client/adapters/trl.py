"""TRL: PRM rewards for `GRPOTrainer(reward_funcs=[...])` (and any trainer calling reward functions TRL's way).

    from repirl_client.adapters.trl import PRMReward
    trainer = GRPOTrainer(model=..., reward_funcs=[PRMReward(base_url="http://svc:8000", aggregation="min")], ...)

TRL calls `f(prompts=..., completions=..., completion_ids=..., **dataset_columns_and_trainer_kwargs)` and wants one
float per completion, `None` where a function has no reward (it becomes NaN and is ignored in the sum). Here:

- the question is the dataset column `question_column` ("question") when the dataset has it, else the prompt
  (conversational prompts: the last user message);
- the completion (text, or the assistant messages of a conversational one) is split at the PRM's step separator
  (from GET /v1/models) into steps; one /v1/score request carries many completions (repirl_client/adapters/
  _batching.py), identical ones are scored once;
- a completion that cannot be scored (no steps, over a service limit, a failed request after the client's retries)
  gets `None`, and the batch goes on; `log_metric("repirl_prm/failed", share)` reports how many.

`AsyncPRMReward` is the asyncio version (TRL runs async reward functions on its own event loop, in parallel with
other reward functions)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from repirl_client._client import AsyncClient, Client
from repirl_client._exceptions import RepirlError
from repirl_client.adapters._batching import DEFAULT_MAX_ITEMS, AsyncBatchScorer, BatchScorer, Outcome
from repirl_client.adapters._common import LoopClients, client_kwargs, make_client, separator_of, split_steps
from repirl_client.types import ScoreResult

log = logging.getLogger("repirl_client.trl")


def _text(x: Any, role: Optional[str]) -> str:
    """Plain text of a prompt/completion: a string, or the content of chat messages (of `role` when given)."""
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
            parts.append(content or "")
    return parts[-1] if role == "user" and parts else "".join(parts)


class _PRMRewardBase:
    def __init__(self, *, model: Optional[str], aggregation: Optional[str], step_separator: Optional[str],
                 question_column: Optional[str], question_fn: Optional[Callable[[Any], str]],
                 name: str):
        self.model, self.aggregation = model, aggregation
        self.step_separator = step_separator
        self.question_column, self.question_fn = question_column, question_fn
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
        items, positions = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            question = self._question(i, prompt, kwargs)
            steps = split_steps(_text(completion, None if isinstance(completion, str) else "assistant"),
                                self.step_separator or "\n\n")
            if question and steps:
                items.append((question, steps))
                positions.append(i)
        return items, positions

    def _rewards(self, n: int, positions: List[int], outcomes: Sequence[Outcome], kwargs) -> List[Optional[float]]:
        rewards: List[Optional[float]] = [None] * n
        errors = []
        for i, out in zip(positions, outcomes):
            if isinstance(out, ScoreResult):
                rewards[i] = out.score
            else:
                errors.append(out)
        failed = sum(r is None for r in rewards)
        if errors:
            log.warning("repirl PRM: %d of %d completions not scored (first error: %s)", len(errors), n, errors[0])
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and n:
            log_metric(f"{self.__name__}/failed", failed / n)
        return rewards


class PRMReward(_PRMRewardBase):
    """A blocking TRL reward function backed by the service.

    client / base_url / api_key / timeout / max_retries: a `Client`, or how to build one (env: REPIRL_BASE_URL,
    REPIRL_API_KEY). model: the PRM (default: the service's first). aggregation: step rewards -> one float
    ("mean-token", "min", "last", "prod", "sum"; default: the PRM's). step_separator: default the PRM's.
    max_items_per_request: the first guess of the service's `limits.max_items` (learnt from a 413 when lower).
    max_concurrency: requests in flight per call."""

    def __init__(self, client: Optional[Client] = None, *, base_url: Optional[str] = None,
                 api_key: Optional[str] = None, model: Optional[str] = None, aggregation: Optional[str] = None,
                 step_separator: Optional[str] = None, question_column: Optional[str] = "question",
                 question_fn: Optional[Callable[[Any], str]] = None, max_items_per_request: int = DEFAULT_MAX_ITEMS,
                 max_concurrency: int = 4, timeout: Optional[float] = None, max_retries: Optional[int] = None,
                 name: str = "repirl_prm"):
        super().__init__(model=model, aggregation=aggregation, step_separator=step_separator,
                         question_column=question_column, question_fn=question_fn, name=name)
        self._owns = client is None
        self.client = make_client(client, client_kwargs(base_url, api_key, timeout, max_retries))
        self.scorer = BatchScorer(self.client, model=model, aggregation=aggregation,
                                  max_items=max_items_per_request, max_concurrency=max_concurrency)

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
        if self._owns:
            self.client.close()


class AsyncPRMReward(_PRMRewardBase):
    """The asyncio twin of `PRMReward` (same arguments; `client` must be an `AsyncClient` used on one loop, or
    omitted: then one client is made per event loop that calls it)."""

    def __init__(self, client: Optional[AsyncClient] = None, *, base_url: Optional[str] = None,
                 api_key: Optional[str] = None, model: Optional[str] = None, aggregation: Optional[str] = None,
                 step_separator: Optional[str] = None, question_column: Optional[str] = "question",
                 question_fn: Optional[Callable[[Any], str]] = None, max_items_per_request: int = DEFAULT_MAX_ITEMS,
                 max_concurrency: int = 4, timeout: Optional[float] = None, max_retries: Optional[int] = None,
                 name: str = "repirl_prm"):
        super().__init__(model=model, aggregation=aggregation, step_separator=step_separator,
                         question_column=question_column, question_fn=question_fn, name=name)
        self._clients = LoopClients(client, client_kwargs(base_url, api_key, timeout, max_retries))
        self._max_items, self._max_concurrency = max_items_per_request, max_concurrency
        self._scorers: Dict[int, AsyncBatchScorer] = {}

    def _scorer(self) -> AsyncBatchScorer:
        client = self._clients.get()
        scorer = self._scorers.get(id(client))
        if scorer is None or scorer.client is not client:
            learnt = min((s.limits.max_items for s in self._scorers.values()), default=self._max_items)
            scorer = self._scorers[id(client)] = AsyncBatchScorer(
                client, model=self.model, aggregation=self.aggregation, max_items=learnt,
                max_concurrency=self._max_concurrency)
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
