"""search-and-learn (huggingface/search-and-learn): a PRM object for its best-of-N, beam search and DVTS.

    from repirl_client.adapters.search_and_learn import RepirlPRM
    prm = RepirlPRM(config, base_url="http://svc:8000")   # instead of sal.models.reward_models.load_prm(config)
    scores = prm.score(questions, outputs)                 # outputs[i]: the completions of question i

Its PRMs answer `score(questions, outputs) -> list[list[list[float]]]`: per question, per completion, the step
rewards (completions split at "\\n\\n", the separator search-and-learn generates with); its searches aggregate them
(`config.agg_strategy`: last | min | prod). Every completion of the call is scored in as few /v1/score requests as
the service's limits allow. search-and-learn has no notion of a missing score, so a completion the service cannot
score raises (after the client's retries); an empty completion has no steps and gets `[]`."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from repirl_client._client import Client
from repirl_client.adapters._batching import DEFAULT_MAX_ITEMS, BatchScorer
from repirl_client.adapters._common import client_kwargs, make_client, split_steps
from repirl_client.types import ScoreResult


class RepirlPRM:
    def __init__(self, search_config: Any = None, client: Optional[Client] = None, *, base_url: Optional[str] = None,
                 api_key: Optional[str] = None, model: Optional[str] = None, step_separator: str = "\n\n",
                 max_items_per_request: int = DEFAULT_MAX_ITEMS, max_concurrency: int = 4,
                 timeout: Optional[float] = None, max_retries: Optional[int] = None):
        self.search_config = search_config  # kept like sal's PRM base class does
        self.client = make_client(client, client_kwargs(base_url, api_key, timeout, max_retries))
        self.step_separator = step_separator
        self.scorer = BatchScorer(self.client, model=model, max_items=max_items_per_request,
                                  max_concurrency=max_concurrency)

    def score(self, questions: Sequence[str], outputs: Sequence[Sequence[str]]) -> List[List[List[float]]]:
        if len(questions) != len(outputs):
            raise ValueError(f"{len(questions)} questions for {len(outputs)} lists of outputs")
        items, where = [], []
        for qi, (question, answers) in enumerate(zip(questions, outputs)):
            for ai, answer in enumerate(answers):
                steps = split_steps(answer, self.step_separator)
                if steps:
                    items.append((question, steps))
                    where.append((qi, ai))
        result: List[List[List[float]]] = [[[] for _ in answers] for answers in outputs]
        for (qi, ai), out in zip(where, self.scorer.score(items)):
            if not isinstance(out, ScoreResult):
                raise out
            result[qi][ai] = list(out.step_rewards)
        return result
