"""Cancellation that reaches into an engine call: whoever runs work on someone's behalf (the service's search thread,
its micro-batcher) says when nobody wants the result any more, and the engines stop at their next safe point.

The check travels in a context variable, so no engine signature changes: a search thread runs under
`stop_when(job.cancelled)`, the micro-batcher's engine thread under `stop_when(every waiter is gone)`
(`asyncio.to_thread` copies the context). Safe points: between vLLM engine steps (`generate`, and `encode` for the
pooling PRM: the unfinished requests are aborted by id, their KV blocks freed) and between transformers forward passes
(repirl/scoring/hf_engine.py). A micro-batch mixes several requests' items, so the batcher also says which items
nobody waits for (`item_gone`): `encode` aborts those items' vLLM requests between engine steps while the others run
on, and returns None in their place. Outside a `stop_when` nothing ever stops (training and evaluation never set one).
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

_STOP: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("repirl_stop", default=None)
_GONE: contextvars.ContextVar[Callable[[int], bool] | None] = contextvars.ContextVar("repirl_gone", default=None)


class WorkCancelled(RuntimeError):
    """The work was stopped because nobody waits for it. `stage`: "queued" (it never reached the engine) or "engine"
    (stopped inside it); `units`: what was dropped (PRM items, or policy samples)."""

    def __init__(self, message: str, stage: str = "engine", units: int = 0):
        super().__init__(message)
        self.stage, self.units = stage, units


@contextmanager
def stop_when(check: Callable[[], bool], item_gone: Callable[[int], bool] | None = None) -> Iterator[None]:
    """Engine calls made inside (in this thread, or a thread started with a copy of this context) stop at their
    next safe point once `check()` is true. `item_gone(i)`: nobody waits for item i of the engine call any more (an
    engine that can drop single items, `encode`, drops it and returns None for it). Both are called from engine
    threads: they must only read state."""
    token, gone = _STOP.set(check), _GONE.set(item_gone)
    try:
        yield
    finally:
        _STOP.reset(token)
        _GONE.reset(gone)


def stop_requested() -> bool:
    check = _STOP.get()
    return bool(check is not None and check())


def item_gone(i: int) -> bool:
    """Whether nobody waits for item i of the engine call any more (never, outside a `stop_when` given `item_gone`)."""
    gone = _GONE.get()
    return bool(gone is not None and gone(i))


def raise_if_stopped(what: str, units: int = 0) -> None:
    if stop_requested():
        raise WorkCancelled(f"{what}: stopped, nobody waits for the result", "engine", units)


# Preemption: the service's fair queue asks an engine call to hand back early when another API key's work waits
# (an engine call is otherwise not preemptible: a light key's item waited for a whole heavy batch). Only engines with
# results per item at a safe point take it (the transformers PRM between forward passes); the rest run to the end.
_YIELD: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("repirl_yield", default=None)
_GROUPS: contextvars.ContextVar[Sequence[int] | None] = contextvars.ContextVar("repirl_groups", default=None)
_STEP: contextvars.ContextVar[int | None] = contextvars.ContextVar("repirl_step_tokens", default=None)


class Preempted(Exception):
    """An engine call handed back early at a safe point: `results` has one entry per item, None where the item was
    not reached (the caller queues those again)."""

    def __init__(self, results: list):
        super().__init__(f"preempted with {sum(r is not None for r in results)} of {len(results)} items done")
        self.results = results


@contextmanager
def yield_when(check: Callable[[], bool], groups: Sequence[int] | None = None,
               step_tokens: int | None = None) -> Iterator[None]:
    """Like `stop_when`, for preemption: engine calls inside raise `Preempted` at a safe point once `check()` is true
    (and they have something done to hand back). `groups[i]`: whose item i is, in the order they are to be served
    (the service: one group per API key, the one with the fewest tokens in the call first); an engine that takes
    them runs the groups in that order and hands back as soon as one is done while another remains, so a light key's
    item is answered when its own forward ends, not after the heavy key's share of the call. `step_tokens`: the
    most tokens between two safe points (an engine's forwards no larger; at least one item): the work a newly
    arrived key's item waits for before the call can hand back."""
    token, order, step = _YIELD.set(check), _GROUPS.set(groups), _STEP.set(step_tokens)
    try:
        yield
    finally:
        _YIELD.reset(token)
        _GROUPS.reset(order)
        _STEP.reset(step)


def preempt_requested() -> bool:
    check = _YIELD.get()
    return bool(check is not None and check())


def preempt_groups() -> Sequence[int] | None:
    """The groups given to `yield_when` (None: one group, the engine's own order)."""
    return _GROUPS.get()


def preempt_step_tokens() -> int | None:
    """The `step_tokens` given to `yield_when` (None: the engine's own forward size)."""
    return _STEP.get()


def generate(llm, prompts: Sequence, sampling: Sequence) -> list:
    """`llm.generate(prompts, sampling)` (a `vllm.LLM`, vLLM 0.32), stepping the engine ourselves so that a stop
    request aborts the unfinished requests between engine steps instead of running them to the end: `LLM.generate`
    is `enqueue` + a loop over `LLMEngine.step()`, and `LLMEngine.abort_request` takes the ids `enqueue` returns
    (internal ids; a parent id aborts its n samples too). The caller serialises calls (one engine, one caller)."""
    engine = llm.llm_engine
    ids = llm.enqueue(list(prompts), list(sampling), use_tqdm=False)
    samples = sum(getattr(sp, "n", 1) for sp in sampling)
    outputs: list = []
    try:
        while engine.has_unfinished_requests():
            done = sum(len(out.outputs) for out in outputs)
            raise_if_stopped(f"generation of {samples} samples", units=samples - done)
            outputs += [out for out in engine.step() if out.finished]
    except BaseException:
        if len(outputs) < len(ids):  # stopped, or the engine failed: leave nothing of ours running in it
            try:
                engine.abort_request(list(ids), internal=True)
            except Exception:  # a dead engine cannot abort; the original error says more
                pass
        raise
    return sorted(outputs, key=lambda out: int(out.request_id))  # as LLM.generate: outputs carry the external ids


def encode(llm, prompts: Sequence, params, task: str = "token_classify", items: Sequence[int] | None = None) -> list:
    """`llm.encode(prompts, pooling_params=params, pooling_task=task)` (a pooling `vllm.LLM`, vLLM 0.32) that stops
    between engine steps: the whole call (WorkCancelled) once the stop check fires, and single prompts once
    `item_gone(items[i])` says nobody waits for prompt i (its output is then None; `items=None`: no prompt is dropped
    alone, e.g. shared prefixes that serve several items).

    `LLM.encode` adds every prompt with `LLMEngine.add_request` (vllm/entrypoints/common/offline.py:568-587, called
    in prompt order from `_render_and_add_requests`, :539-566) and loops `LLMEngine.step()` until nothing is
    unfinished (vllm/entrypoints/pooling/offline.py:396-479), and `abort_request(internal ids, internal=True)`
    (vllm/v1/engine/llm_engine.py:224-227) removes requests from the output processor and the engine core. So we let
    it render and batch as it does, and wrap those two methods of its engine for the call: `add_request` to learn each
    prompt's request id, `step` to abort between steps. A step returns whenever the engine core reports: for pooling
    requests that is when one finishes (vLLM reports nothing for a partial prefill chunk; the chunks come from
    `max_num_batched_tokens`), so a batch stops at the first report after the check fires. The caller serialises
    calls (one engine, one caller)."""
    check, gone = _STOP.get(), _GONE.get() if items is not None else None
    if check is None and gone is None:
        return llm.encode(list(prompts), pooling_params=params, pooling_task=task, use_tqdm=False)
    engine = llm.llm_engine
    # with more prompts than LLM.encode keeps in the core at once (max_num_seqs * 2, pooling/offline.py:408-410), its
    # loop counts an aborted prompt as still in the core forever and would wait on it: then only the whole call stops
    if gone is not None and len(prompts) > 2 * engine.vllm_config.scheduler_config.max_num_seqs:
        gone = None
    add, step = engine.add_request, engine.step
    ids: list[tuple[str, str]] = []  # (external, internal) request id per prompt, in prompt order
    done: set[str] = set()  # external ids of finished requests
    dropped: set[int] = set()

    def add_request(request_id, *args, **kwargs):
        internal = add(request_id, *args, **kwargs)
        ids.append((request_id, internal))
        return internal

    def checked_step():
        if check is not None and check():
            left = [internal for ext, internal in ids if ext not in done]
            engine.abort_request(left, internal=True)
            raise WorkCancelled(f"PRM encode of {len(prompts)} items: stopped, nobody waits for the result", "engine",
                                len(prompts) - len(done))
        if gone is not None:
            drop = [k for k, (ext, _) in enumerate(ids) if k not in dropped and ext not in done and gone(items[k])]
            if drop:
                engine.abort_request([ids[k][1] for k in drop], internal=True)
                dropped.update(drop)
                if not engine.has_unfinished_requests():  # the core owes us nothing: a real step would wait forever
                    return []
        outs = step()
        done.update(out.request_id for out in outs if out.finished)
        return outs

    engine.add_request, engine.step = add_request, checked_step
    try:
        outs = llm.encode(list(prompts), pooling_params=params, pooling_task=task, use_tqdm=False)
    finally:
        del engine.add_request, engine.step  # the class's methods again
    by_id = {out.request_id: out for out in outs}
    got = [by_id.get(ext) for ext, _ in ids]
    if len(got) != len(prompts) or any(out is None and k not in dropped for k, out in enumerate(got)):
        raise RuntimeError(f"vLLM returned {len(outs)} outputs for {len(prompts)} prompts ({len(dropped)} aborted)")
    return got
