"""POST /v1/openrlhf/reward logic: recover (question, response) from OpenRLHF's decoded text, split the response
into steps at the PRM's separator, score every query in one PRM call, and answer in OpenRLHF's shape.

One query that cannot be scored (no steps, over a limit) gets reward 0 and `prm_failed: 1` instead of failing the
batch: OpenRLHF's client retries a failed request five times and then drops the sample's reward."""

from __future__ import annotations

from repirl.answers import answers_match, extract_answer
from repirl.scoring.unit_values import unit_score
from repirl.scoring.aggregate import aggregate
from repirl.trajectory import split_steps
from server.api.limits import check_count, check_trajectory
from server.api.openrlhf.protocol import EXTRA_LOG_KEYS, OpenRLHFRewardRequest, OpenRLHFRewardResponse
from server.deps import AppState, get_runtime
from server.errors import APIError, LimitExceeded

# The user turn of the chat templates OpenRLHF datasets use most (`--data.apply_chat_template`): ChatML (Qwen),
# Llama 3, as (opener, closer). The PRM's own prompt template wants the plain question.
_USER_TURNS = (("<|im_start|>user\n", "<|im_end|>"),
               ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"))
_ASSISTANT_OPENERS = ("<|im_start|>assistant\n", "<|start_header_id|>assistant<|end_header_id|>\n\n")


def last_user_turn(prompt: str, opener: str, closer: str) -> str | None:
    """The text of the last closed `opener ... closer` turn, or None. Linear time: the regex it replaces
    (`opener(.*?)closer` with findall) rescanned the rest of the text from every opener, so 16,000 unclosed openers
    (265 KB) took 13.6 s on the event loop (issue 22.1). Same answer as that findall's last match: a match is the text
    between the first opener of a closer-delimited segment and that segment's closer."""
    segments = prompt.split(closer)
    for segment in reversed(segments[:-1]):  # the part after the last closer is not a closed turn
        start = segment.find(opener)
        if start >= 0:
            return segment[start + len(opener):]
    return None


def question_of(prompt: str, template=None) -> str:
    """The last user turn of a chat-templated prompt; a prompt in the PRM's own plain template (the policy's, for a
    PRM initialised from it) without the template; else the prompt itself."""
    for opener, closer in _USER_TURNS:
        turn = last_user_turn(prompt, opener, closer)
        if turn is not None:
            return turn.strip()
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
    return question_of(prompt or "", template), strip_trailing_tokens(response, special_tokens)


def strip_trailing_tokens(text: str, special_tokens: list[str]) -> str:
    """`text` without trailing special tokens (EOS, end of turn) and whitespace. Moves an end index instead of
    slicing per token: a response of 100,000 `<|im_end|>` would otherwise copy the text 100,000 times."""
    end, stripped = len(text.rstrip()), True
    while stripped and end:
        stripped = False
        for tok in special_tokens:
            if tok and text.endswith(tok, 0, end):
                end, stripped = end - len(tok), True
                while end and text[end - 1].isspace():
                    end -= 1
    return text[:end].strip()


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


def _parse_queries(queries: list[str], prompts: list, special: list[str], separator: str, template,
                   limits) -> tuple[dict[int, tuple[str, list[str]]], list[str]]:
    """Per query: its response text, and (question, steps) where it can be scored; a query over a character or step
    limit is left out (it gets `prm_failed: 1`), checked by length before anything else parses it."""
    items: dict[int, tuple[str, list[str]]] = {}
    responses = []
    for i, (query, prompt) in enumerate(zip(queries, prompts)):
        if len(query) > limits.max_chars * (limits.max_steps + 1):  # longer than any question plus its steps
            responses.append("")
            continue
        question, response = split_query(query, prompt, special, template)
        responses.append(response)
        steps = split_steps(response, separator)
        if not question or not steps:
            continue
        try:
            check_trajectory(limits, f"query[{i}]", question, steps)
        except LimitExceeded:
            continue
        items[i] = (question, steps)
    return items, responses


def _outcomes(responses: list[str], labels: list) -> tuple[list[str | None], list[float]]:
    """Each label's reference answer (None: no label) and each response's outcome against it (0 without one)."""
    answers = [label_answer(label) for label in labels]
    return answers, [float(answers_match(extract_answer(r), a)) if a is not None else 0.0
                     for r, a in zip(responses, answers)]


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

    # parsing user text is CPU work: off the event loop, so /livez and other requests never wait for it (issue 22.1)
    items, responses = await runtime.off_loop(_parse_queries, req.query, prompts, special, runtime.config.step_separator,
                                            runtime.scorer.encoder.template, limits)

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

    labels = req.labels if req.labels is not None else [None] * n
    answers, outcome = await runtime.off_loop(_outcomes, responses, labels)  # parsing and math-verify: off the loop
    raw, unit, steps = zip(*(scored.get(i, (0.0, 0.0, 0)) for i in range(n)))
    labelled = [a is not None for a in answers]
    # per sample, so a sample's answer never depends on what else shares its request
    rewards = [o + prm_weight * p if lab and prm_weight is not None else p for o, p, lab in zip(outcome, raw, labelled)]
    scores = [o if lab else u for o, u, lab in zip(outcome, unit, labelled)]
    logs = {"prm_score": list(raw), "prm_value": list(unit), "prm_steps": [float(k) for k in steps],
            "prm_failed": [0.0 if i in scored else 1.0 for i in range(n)], "outcome": outcome,
            "labelled": [float(lab) for lab in labelled]}
    return OpenRLHFRewardResponse(rewards=rewards, scores=scores, extra_logs=logs)
