"""search-and-learn (huggingface/search-and-learn): a PRM object for its best-of-N, beam search and DVTS.

    from repirl_client.adapters.search_and_learn import RepirlPRM
    prm = RepirlPRM(config, base_url="http://svc:8000")   # instead of sal.models.reward_models.load_prm(config)
    scores = prm.score(questions, outputs)                 # outputs[i]: the completions of question i

Its PRMs answer `score(questions, outputs) -> list[list[list[float]]]`: per question, per completion, one value per
step, a probability in [0, 1] (sal/models/reward_models.py: `logits.softmax(dim=-1)` read at each step tag), and its
searches aggregate them with `min`, `math.prod` or `[-1]` (sal/utils/score.py `aggregate_scores`,
`config.agg_strategy`), which crash on `[]`. So here:

- completions are split at "\\n\\n" (the separator search-and-learn generates with) and scored in as few /v1/score
  requests as the service's limits allow;
- each step's value is in [0, 1]: the PRM's calibrated `p_correct` when its prm.json has a calibration; the raw
  step reward when the PRM's format is a probability already (qwen-step-tag, math-shepherd); else (an uncalibrated
  token-reward or implicit PRM) sigmoid of the raw reward: order-preserving, so min/last rankings are the raw ones,
  but not a probability (`prod` of such values is not a joint probability; `repirl calibrate` fits one);
- a completion with no steps (empty, whitespace) gets `[empty_score]` ([0.0]: ranked below any scored completion),
  never `[]`. A completion the service cannot score raises (after the client's retries): search-and-learn has no
  notion of a missing score."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from repirl_client._client import Client
from repirl_client.adapters._batching import DEFAULT_MAX_ITEMS, BatchScorer
from repirl_client.adapters._common import client_kwargs, make_client, prm_card, split_steps, unit_step_values
from repirl_client.types import ScoreResult


class RepirlPRM:
    def __init__(self, search_config: Any = None, client: Optional[Client] = None, *, base_url: Optional[str] = None,
                 api_key: Optional[str] = None, model: Optional[str] = None, step_separator: str = "\n\n",
                 empty_score: float = 0.0, max_items_per_request: int = DEFAULT_MAX_ITEMS, max_concurrency: int = 4,
                 timeout: Optional[float] = None, max_retries: Optional[int] = None):
        if not 0.0 <= empty_score <= 1.0:
            raise ValueError(f"empty_score must lie in [0, 1], got {empty_score}")
        self.search_config = search_config  # kept like sal's PRM base class does
        self.client = make_client(client, client_kwargs(base_url, api_key, timeout, max_retries))
        self.model, self.step_separator, self.empty_score = model, step_separator, float(empty_score)
        self.scorer = BatchScorer(self.client, model=model, max_items=max_items_per_request,
                                  max_concurrency=max_concurrency)
        self._format: Optional[str] = None
        self.value_kind: Optional[str] = None  # what the values are: "p_correct", "probability" or "sigmoid"

    def score(self, questions: Sequence[str], outputs: Sequence[Sequence[str]]) -> List[List[List[float]]]:
        if len(questions) != len(outputs):
            raise ValueError(f"{len(questions)} questions for {len(outputs)} lists of outputs")
        if self._format is None:
            card = prm_card(self.client.models(), self.model)
            self._format = (card.format if card else None) or ""
        items, where = [], []
        for qi, (question, answers) in enumerate(zip(questions, outputs)):
            for ai, answer in enumerate(answers):
                steps = split_steps(answer, self.step_separator)
                if steps:
                    items.append((question, steps))
                    where.append((qi, ai))
        result: List[List[List[float]]] = [[[self.empty_score] for _ in answers] for answers in outputs]
        for (qi, ai), out in zip(where, self.scorer.score(items)):
            if not isinstance(out, ScoreResult):
                raise out
            result[qi][ai], self.value_kind = unit_step_values(out, self._format)
        return result
