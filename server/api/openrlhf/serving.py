"""POST /v1/openrlhf/reward logic: recover (question, response) from OpenRLHF's decoded text, split the response
into steps at the PRM's separator, score every query in one PRM call, and answer in OpenRLHF's shape.

One query that cannot be scored (no steps, over a limit) gets reward 0 and `prm_failed: 1` instead of failing the
batch: OpenRLHF's client retries a failed request five times and then drops the sample's reward."""

from __future__ import annotations

import asyncio
import re

from repirl.answers import answers_match, extract_answer
from repirl.calibration import unit_score
from repirl.scoring.aggregate import aggregate
from repirl.trajectory import split_steps
from server.api.limits import check_count, check_trajectory
from server.api.openrlhf.protocol import EXTRA_LOG_KEYS, OpenRLHFRewardRequest, OpenRLHFRewardResponse
from server.deps import AppState, get_runtime
from server.errors import APIError, LimitExceeded

# The user turn of the chat templates OpenRLHF datasets use most (`--data.apply_chat_template`): ChatML (Qwen),
# Llama 3. The PRM's own prompt template wants the plain question.
_USER_TURNS = (re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S),
               re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S))
_ASSISTANT_OPENERS = ("<|im_start|>assistant\n", "<|start_header_id|>assistant<|end_header_id|>\n\n")


def question_of(prompt: str, template=None) -> str:
    """The last user turn of a chat-templated prompt; a prompt in the PRM's own plain template (the policy's, for a
    PRM initialised from it) without the template; else the prompt itself."""
    for pattern in _USER_TURNS:
        turns = pattern.findall(prompt)
        if turns:
            return turns[-1].strip()
    if template is not None and template.kind == "plain" and "{question}" in template.template:
        prefix, suffix = template.template.split("{question}", 1)
        body = prompt.strip()
        if prefix.strip() and body.startswith(prefix.strip()) and body.endswith(suffix.strip()):
            inner = body[len(prefix.strip()):len(body) - len(suffix.strip())]
            if inner.strip():
                return inner.strip()
    return prompt.strip()


def split_query(query: str, prompt: str | None, special_tokens: list[str], template=None) -> tuple[str, str]:
    """(question, response) of one OpenRLHF query; trailing special tokens (EOS, end of turn) are dropped."""
    if prompt is not None and prompt and prompt in query:
        response = query[query.index(prompt) + len(prompt):]
    elif prompt is None and any(o in query for o in _ASSISTANT_OPENERS):
        opener = next(o for o in _ASSISTANT_OPENERS if o in query)
        prompt, _, response = query.rpartition(opener)
    else:  # the decoded prompt differs from the prompt text (a tokenizer that does not round-trip): best effort
        response = query[len(prompt):] if prompt else query
    response = response.strip()
    stripped = True
    while stripped and response:
        stripped = False
        for tok in special_tokens:
            if tok and response.endswith(tok):
                response, stripped = response[: -len(tok)].rstrip(), True
    return question_of(prompt or "", template), response


def label_answer(label) -> str | None:
    """The reference answer of an OpenRLHF label, or None for no label. OpenRLHF sends `""` for every sample when
    `--data.label_key` is unset (openrlhf/datasets/prompts_dataset.py:44, `label = "" if label_key is None`): an
    empty or whitespace label is no label, never a wrong answer."""
    if label is None:
        return None
    text = str(label).strip()
    if not text:
        return None
    return extract_answer(text) or text


async def serve_openrlhf_reward(state: AppState, req: OpenRLHFRewardRequest, model: str | None,
                                aggregation: str | None, prm_weight: float | None) -> OpenRLHFRewardResponse:
    limits = state.settings.limits
    n = len(req.query)
    check_count("query", n, limits.max_items, "items")
    for field in ("prompts", "labels"):
        given = getattr(req, field)
        if given is not None and len(given) != n:
            raise APIError(422, f"{field}: {len(given)} entries for {n} queries", field)
    runtime = get_runtime(state, model)
    if n == 0:  # OpenRLHF <= 0.11.0 shards one query over several endpoints: the others get empty lists
        return OpenRLHFRewardResponse(rewards=[], scores=[], extra_logs={key: [] for key in EXTRA_LOG_KEYS})
    how = aggregation or runtime.config.default_aggregation
    tokenizer = runtime.scorer.encoder.tokenizer
    special = sorted(set(getattr(tokenizer, "all_special_tokens", []) or []), key=len, reverse=True)
    prompts = req.prompts if req.prompts is not None else [None] * n

    items: dict[int, tuple[str, list[str]]] = {}
    responses = []
    for i, (query, prompt) in enumerate(zip(req.query, prompts)):
        question, response = split_query(query, prompt, special, runtime.scorer.encoder.template)
        responses.append(response)
        steps = split_steps(response, runtime.config.step_separator)
        if not question or not steps:
            continue
        try:
            check_trajectory(limits, f"query[{i}]", question, steps)
        except LimitExceeded:
            continue
        items[i] = (question, steps)

    scored: dict[int, tuple[float, float, int]] = {}  # query index -> (raw score, value in [0, 1], steps)
    while items:  # an item over the token limit fails alone: drop it, score the rest
        order = list(items)
        try:
            out = await runtime.score([items[i] for i in order], [f"query[{i}]" for i in order])
        except LimitExceeded as e:
            bad = next((i for i in order if e.param == f"query[{i}]"), None)
            if bad is None:
                raise
            del items[bad]
            continue
        for i, s in zip(order, out):
            rewards = s.scores.step_rewards
            scored[i] = (aggregate(rewards, how, s.scores.token_rewards), unit_score(runtime.config, rewards, how),
                         len(rewards))
        break

    answers = [label_answer(label) for label in (req.labels if req.labels is not None else [None] * n)]

    def outcomes() -> list[float]:  # math-verify may parse LaTeX: off the event loop
        return [float(answers_match(extract_answer(r), a)) if a is not None else 0.0
                for r, a in zip(responses, answers)]

    outcome = await asyncio.to_thread(outcomes) if any(a is not None for a in answers) else [0.0] * n
    raw, unit, steps = zip(*(scored.get(i, (0.0, 0.0, 0)) for i in range(n)))
    labelled = [a is not None for a in answers]
    # per sample, so a sample's answer never depends on what else shares its request
    rewards = [o + prm_weight * p if lab and prm_weight is not None else p for o, p, lab in zip(outcome, raw, labelled)]
    scores = [o if lab else u for o, u, lab in zip(outcome, unit, labelled)]
    logs = {"prm_score": list(raw), "prm_value": list(unit), "prm_steps": [float(k) for k in steps],
            "prm_failed": [0.0 if i in scored else 1.0 for i in range(n)], "outcome": outcome,
            "labelled": [float(lab) for lab in labelled]}
    return OpenRLHFRewardResponse(rewards=rewards, scores=scores, extra_logs=logs)
