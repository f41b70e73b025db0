"""POST /pooling and POST /classify: vLLM's pooling API on repirl's PRM runtimes (cache, micro-batcher, KV reuse).

vLLM scores whole token sequences; repirl scores steps. A sequence becomes a trajectory by cutting it into steps
where the PRM's format says a step ends, so each step is a cache key (the hash of the ids through its end, shared
with /v1/score wherever ids and step ends agree) and a prefix the transformers engine's KV cache resumes from:
- step-tag formats (qwen-step-tag, math-shepherd): a step ends at each step tag token; tokens after the last tag get
  no output in vLLM (its STEP pooler keeps the tag rows only) and are not scored here;
- token formats (token-reward, implicit): a step ends after each occurrence of the separator's token ids, the rest
  is the last step; every token gets a row, as vLLM's ALL pooler gives.

Outputs (docs/service.md, "vLLM's pooling API"):
- /pooling, step-tag formats: one row `[1 - p, p]` per step tag, p the PRM's P(good step) (vLLM's softmax over the
  Qwen PRM's two labels, good last: Qwen's model card reads `[..., 1]`);
- /pooling, token formats: one row `[v]` per token, v the PRM's token value (use_activation true: sigmoid(v));
- /classify and task "classify": one `probs` per input from the PRM's score of the sequence under its default
  aggregation (what /v1/score's `score` is): `[1 - s, s]` for probability formats, `[s]` (sigmoid with
  use_activation true) for the others. veRL's reward loop reads `data[-1].probs[-1]`: s.
"""

from __future__ import annotations

import base64
import math
import sys

import numpy as np

from repirl.scoring.aggregate import aggregate
from repirl.scoring.formats import format_facts
from repirl.token_bounds import fewest_tokens
from repirl.trajectory import TrajectoryIds
from server.api.limits import check_count
from server.api.pooling.protocol import (ClassificationData, ClassificationRequest, ClassificationResponse,
                                         PoolingRequest, PoolingResponse, PoolingResponseData, UsageInfo)
from server.deps import AppState, get_runtime
from server.errors import APIError, LimitExceeded
from server.runtime import ItemScore, PRMRuntime

_DTYPES = {"float32": np.float32, "float16": np.float16}


def find_runtime(state: AppState, model: str | None) -> PRMRuntime:
    """By name, or by the folder it was loaded from (veRL's reward loop sends its config's model path)."""
    if model is not None and model not in state.runtimes:
        for rt in state.runtimes.values():
            if str(rt.scorer.prm_dir).rstrip("/") == model.rstrip("/"):
                return rt
    return get_runtime(state, model)


def _untrusted_template(state: AppState, req: PoolingRequest) -> None:
    """vLLM's check (vllm/entrypoints/pooling/base/io_processor.py `_validate_chat_template`), as a 400 naming the
    field: rendering a template runs it, and a template's loops are not bounded by anything the service sets."""
    sent = req.chat_template is not None or (req.chat_template_kwargs or {}).get("chat_template") is not None
    if sent and not state.settings.trust_request_chat_template:
        raise APIError(400, "a chat template sent with the request is refused: the service renders only its PRMs' "
                            "own templates unless it runs with --trust-request-chat-template (vLLM's flag; "
                            "trust_request_chat_template in the settings)",
                       "chat_template" if req.chat_template is not None else "chat_template_kwargs")


def _unsupported(req: PoolingRequest) -> None:
    # vLLM's two request forms (a union there); one model here, so the check names the field
    if (req.input is None) == (req.messages is None):
        raise APIError(422, "give exactly one of `input` (text or token ids) and `messages`", "input")
    if req.continue_final_message and req.add_generation_prompt:
        raise APIError(422, "`continue_final_message` and `add_generation_prompt` cannot both be true",
                       "add_generation_prompt")
    for name in ("dimensions", "truncate_prompt_tokens"):
        if getattr(req, name) is not None:
            raise APIError(400, f"{name} is not supported by repirl's pooling API", name)


TOKENS = "tokens (the PRM's max_model_len)"


def _text_ids(runtime: PRMRuntime, text: str, special: bool, param: str) -> list[int]:
    """`text`'s ids; a text that cannot fit whatever its tokens (repirl.token_bounds) is a 413 before tokenizing."""
    tok = runtime.scorer.encoder.tokenizer
    fewest = fewest_tokens(tok, text)
    if fewest > runtime.max_tokens:
        raise LimitExceeded(param, fewest, runtime.max_tokens, TOKENS, at_least=True)
    return tok.encode(text, add_special_tokens=special)


def token_ids(runtime: PRMRuntime, req: PoolingRequest, max_items: int) -> list[list[int]]:
    """Each input's token ids, as vLLM forms them (text tokenized with `add_special_tokens`, default true; a chat
    rendered by the tokenizer's template and tokenized without adding special tokens, by default). The count of
    inputs is checked before any is tokenized, and each text's length before it is."""
    tok = runtime.scorer.encoder.tokenizer
    if req.messages is not None:
        template = req.chat_template or getattr(tok, "chat_template", None)
        if template is None:
            raise APIError(400, f"PRM {runtime.name!r}'s tokenizer has no chat template: send `chat_template` or "
                                "`input`", "messages")
        msgs = [m.model_dump(exclude_none=True) for m in req.messages]
        try:
            text = tok.apply_chat_template(msgs, chat_template=template, tokenize=False,
                                           add_generation_prompt=req.add_generation_prompt,
                                           continue_final_message=req.continue_final_message,
                                           **(req.chat_template_kwargs or {}))
        except Exception as e:  # a template error is the request's (jinja raises many types; text parts are any JSON)
            raise APIError(400, f"the chat template cannot render these messages: {type(e).__name__}", "messages") from None
        return [_text_ids(runtime, text, bool(req.add_special_tokens), "messages")]
    raw = req.input
    special = True if req.add_special_tokens is None else req.add_special_tokens
    if isinstance(raw, str):
        return [_text_ids(runtime, raw, special, "input")]
    if raw and all(isinstance(x, int) for x in raw):
        seqs = [list(raw)]
    else:
        check_count("input", len(raw), max_items, "inputs")
        if raw and all(isinstance(x, str) for x in raw):
            return [_text_ids(runtime, x, special, "input" if len(raw) == 1 else f"input[{i}]")
                    for i, x in enumerate(raw)]
        seqs = [list(x) for x in raw]
    vocab = len(tok)
    for i, ids in enumerate(seqs):
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the PRM's vocabulary [0, {vocab})",
                           "input" if len(seqs) == 1 else f"input[{i}]")
    return seqs


def to_trajectory(runtime: PRMRuntime, ids: list[int]) -> TrajectoryIds:
    """The sequence cut into steps where the PRM's format ends them (module doc); no prompt of its own (prompt_len 0:
    cache keys hash the ids through each step's end whatever the cut before it)."""
    spec = runtime.scorer.spec
    if spec.step_tag_id is not None:
        ends = [i + 1 for i, t in enumerate(ids) if t == spec.step_tag_id]
        ids = ids[: ends[-1]] if ends else []
    else:
        sep = runtime.scorer.encoder.tokenizer.encode(runtime.config.step_separator, add_special_tokens=False)
        n = len(sep)
        ends = [i + n for i in range(len(ids) - n + 1) if n and ids[i: i + n] == sep]
        if ids and (not ends or ends[-1] != len(ids)):
            ends.append(len(ids))
    spans, start = [], 0
    for end in ends:
        spans.append((start, end))
        start = end
    return TrajectoryIds(ids=list(ids), prompt_len=0, step_spans=spans)


def _prepare(runtime: PRMRuntime, req: PoolingRequest, max_items: int):
    """The request's token ids, each one's name in errors, and its trajectory (steps cut at tags or separators)."""
    seqs = token_ids(runtime, req, max_items)
    params = (["messages"] if req.messages is not None
              else ["input" if len(seqs) == 1 else f"input[{i}]" for i in range(len(seqs))])
    for ids, param in zip(seqs, params):  # the whole input, tags or not, is what vLLM would take
        check_count(param, len(ids), runtime.max_tokens, TOKENS)
    return seqs, params, [to_trajectory(runtime, ids) for ids in seqs]


async def _score(state: AppState, req: PoolingRequest) -> tuple[PRMRuntime, list[list[int]], list[ItemScore]]:
    _unsupported(req)
    _untrusted_template(state, req)
    runtime = find_runtime(state, req.model)
    # chat templates and tokenization are CPU work on user text: off the event loop (issue 22.1)
    seqs, params, trajs = await runtime.off_loop(_prepare, runtime, req, state.settings.limits.max_items)
    todo = [i for i, t in enumerate(trajs) if t.step_spans]  # no step (a step-tag PRM, no tag): no rows
    scored = await runtime.score_trajectories([trajs[i] for i in todo], [params[i] for i in todo]) if todo else []
    out: list[ItemScore | None] = [None] * len(trajs)
    for i, s in zip(todo, scored):
        out[i] = s
    return runtime, seqs, out  # type: ignore[return-value]


def _usage(seqs: list[list[int]], scored: list[ItemScore | None]) -> UsageInfo:
    n = sum(map(len, seqs))
    return UsageInfo(prompt_tokens=n, total_tokens=n,
                     tokens_computed=sum(s.scores.tokens_computed for s in scored if s is not None),
                     cached_steps=sum(s.cached_steps for s in scored if s is not None))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _probability_format(runtime: PRMRuntime) -> bool:
    return format_facts(runtime.config).is_probability


def _check_activation(runtime: PRMRuntime, use_activation: bool | None, probs_only: bool) -> None:
    if probs_only and _probability_format(runtime) and use_activation is False:
        raise APIError(400, f"PRM {runtime.name!r} ({runtime.config.format}) gives step probabilities, not logits: "
                            "use_activation false is not served on /pooling (its /classify pair is probabilities)",
                       "use_activation")


def rows(runtime: PRMRuntime, scored: ItemScore | None, use_activation: bool | None) -> list[list[float]]:
    """token_classify rows (module doc)."""
    if scored is None:
        return []
    sc = scored.scores
    if _probability_format(runtime):
        return [[1.0 - p, p] for p in sc.step_rewards]
    values = [v for span in sc.token_rewards or [] for v in span]
    return [[_sigmoid(v) if use_activation else v] for v in values]


def probs(runtime: PRMRuntime, scored: ItemScore | None, use_activation: bool | None, param: str) -> list[float]:
    """classify probabilities (module doc)."""
    if scored is None:
        raise APIError(400, f"no step to score: PRM {runtime.name!r} reads step rewards at its step tag "
                            f"{runtime.config.step_tag!r}, which this input does not contain"
                       if runtime.scorer.spec.step_tag_id is not None else "no token to score: the input is empty", param)
    sc = scored.scores
    s = aggregate(sc.step_rewards, runtime.config.default_aggregation, sc.token_rewards)
    if _probability_format(runtime):
        return [1.0 - s, s]
    return [_sigmoid(s) if use_activation else s]


def _encode(data: list[list[float]] | list[float], dtype: str, endianness: str) -> str:
    """vLLM's base64: the values flattened, as `embed_dtype`, in `endianness` (vllm/utils/serial_utils.py
    `tensor2binary`)."""
    arr = np.asarray(data, dtype=_DTYPES[dtype]).reshape(-1)
    if endianness != "native" and endianness != sys.byteorder:
        arr = arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


async def serve_pooling(state: AppState, req: PoolingRequest) -> PoolingResponse:
    if req.encoding_format not in ("float", "base64"):
        raise APIError(400, f"encoding_format {req.encoding_format!r} is not supported (float, base64)",
                       "encoding_format")
    if req.embed_dtype not in _DTYPES:
        raise APIError(400, f"embed_dtype {req.embed_dtype!r} is not supported ({', '.join(_DTYPES)})", "embed_dtype")
    if req.task not in (None, "token_classify", "classify"):
        raise APIError(400, f"task {req.task!r} is not served by a PRM (token_classify, classify)", "task")
    runtime = find_runtime(state, req.model)
    classify = req.task == "classify"
    _check_activation(runtime, req.use_activation, probs_only=not classify)
    runtime, seqs, scored = await _score(state, req)
    data = []
    for i, s in enumerate(scored):
        values = (probs(runtime, s, req.use_activation, "input" if len(seqs) == 1 else f"input[{i}]") if classify
                  else rows(runtime, s, req.use_activation))
        data.append(PoolingResponseData(index=i, data=values if req.encoding_format == "float"
                                        else _encode(values, req.embed_dtype, req.endianness)))
    return PoolingResponse(model=req.model or runtime.name, data=data, usage=_usage(seqs, scored))


async def serve_classify(state: AppState, req: ClassificationRequest) -> ClassificationResponse:
    if req.task not in (None, "classify"):
        raise APIError(400, f"task {req.task!r}: /classify serves task classify", "task")
    runtime, seqs, scored = await _score(state, req)
    data = []
    for i, s in enumerate(scored):
        p = probs(runtime, s, req.use_activation, "input" if len(seqs) == 1 else f"input[{i}]")
        data.append(ClassificationData(index=i, label=None, probs=p, num_classes=len(p)))
    return ClassificationResponse(model=req.model or runtime.name, data=data, usage=_usage(seqs, scored))
