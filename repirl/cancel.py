"""Cancellation that reaches into an engine call: whoever runs work on someone's behalf (the service's search thread,
its micro-batcher) says when nobody wants the result any more, and the engines stop at their next safe point.

The check travels in a context variable, so no engine signature changes: a search thread runs under
`stop_when(job.cancelled)`, the micro-batcher's engine thread under `stop_when(every waiter is gone)`
(`asyncio.to_thread` copies the context). Safe points: between vLLM engine steps (`generate`: the unfinished requests
are aborted by id, their KV blocks freed) and between transformers forward passes (repirl/scoring/hf_engine.py).
Outside a `stop_when` nothing ever stops (training and evaluation never set one).
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

_STOP: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("repirl_stop", default=None)


class WorkCancelled(RuntimeError):
    """The work was stopped because nobody waits for it. `stage`: "queued" (it never reached the engine) or "engine"
    (stopped inside it); `units`: what was dropped (PRM items, or policy samples)."""

    def __init__(self, message: str, stage: str = "engine", units: int = 0):
        super().__init__(message)
        self.stage, self.units = stage, units


@contextmanager
def stop_when(check: Callable[[], bool]) -> Iterator[None]:
    """Engine calls made inside (in this thread, or a thread started with a copy of this context) stop at their
    next safe point once `check()` is true. `check` is called from engine threads: it must only read state."""
    token = _STOP.set(check)
    try:
        yield
    finally:
        _STOP.reset(token)


def stop_requested() -> bool:
    check = _STOP.get()
    return bool(check is not None and check())


def raise_if_stopped(what: str, units: int = 0) -> None:
    if stop_requested():
        raise WorkCancelled(f"{what}: stopped, nobody waits for the result", "engine", units)


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
