"""Cancellation inside a vLLM PRM call (repirl/cancel.py `encode`): a call stops between engine steps once nobody
waits for it, and a single item nobody waits for is aborted while the others run on. The engine runs 32 tokens per
step (chunked prefill), so each call below takes dozens of steps; results after a stop are checked against the
transformers engine, so an aborted request leaves nothing wrong behind (its blocks in vLLM's prefix cache included).
"""

from __future__ import annotations

import uuid

import pytest

from repirl.cancel import WorkCancelled, stop_when
from repirl.scoring.tiny_prms import build_tiny_prm
from repirl.vllm_setup import vllm_available

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]

N = 8  # items per call, ~200 tokens each: ~50 engine steps of 32 tokens


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from repirl.scoring.loader import load_scorer

    prm = build_tiny_prm(tmp_path_factory.mktemp("vllm_cancel") / "tr", "token-reward")
    hf = load_scorer(prm, engine="hf", kv_cache_tokens=0)
    vllm = load_scorer(prm, engine="vllm", max_model_len=256, max_num_batched_tokens=32, enable_chunked_prefill=True)
    yield vllm, hf
    vllm.close()


def _items(n: int = N) -> list[tuple[str, list[str]]]:
    """Items new to the engine (nothing of them in its prefix cache) sharing no step prefix (so no shared-prefix
    call runs first)."""
    salt = uuid.uuid4().hex
    return [(f"{salt} {i}: what is 1+2+3+4+5?", ["1+2+3+4+5 = 15, " * 5, "so it is 15. " * 4]) for i in range(n)]


def _assert_agree(got, want) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.step_rewards == pytest.approx(w.step_rewards, abs=1e-4)


class Steps:
    """A stop check that counts the engine steps it was asked before (encode asks once per step)."""

    def __init__(self, stop_after: int | None = None):
        self.asked, self.stop_after = 0, stop_after

    def __call__(self) -> bool:
        self.asked += 1
        return self.stop_after is not None and self.asked > self.stop_after


def test_a_call_stops_after_the_first_engine_step_once_nobody_waits(engines):
    vllm, hf = engines
    items = _items()
    steps = Steps(stop_after=1)  # false before the first step, true after it
    with stop_when(steps), pytest.raises(WorkCancelled) as stopped:
        vllm.score(items)
    assert stopped.value.stage == "engine"
    # the items still unfinished after that first step were aborted, not run to the end
    assert 0 < stopped.value.units < N, stopped.value.units
    assert steps.asked == 2
    engine = vllm.llm.llm_engine
    assert not engine.has_unfinished_requests()  # nothing of the call is left in vLLM
    assert "step" not in vars(engine) and "add_request" not in vars(engine)  # vLLM's own methods again
    # the engine is free and right: the same items (their aborted prefixes partly in vLLM's cache) score as on hf
    _assert_agree(vllm.score(items), hf.score(items))


@pytest.mark.parametrize("path", ["prefix-reuse", "plain"])
def test_items_nobody_waits_for_are_aborted_while_the_others_complete(engines, monkeypatch, path):
    vllm, hf = engines
    if path == "plain":
        monkeypatch.setattr(vllm, "blocks", None)  # score_encoded's path without prefix reuse
    items = _items()
    steps = Steps()
    gone = {1, 5}
    with stop_when(steps, lambda i: i in gone and steps.asked > 1):  # they go away after the first step
        got = vllm.score(items)
    assert steps.asked > 2  # the call went on after dropping them
    assert [i for i, g in enumerate(got) if g is None] == sorted(gone)
    kept = [i for i in range(N) if i not in gone]
    _assert_agree([got[i] for i in kept], hf.score([items[i] for i in kept]))
    assert all(got[i].tokens_computed <= got[i].tokens_total for i in kept)
    assert not vllm.llm.llm_engine.has_unfinished_requests()
    _assert_agree(vllm.score(items), hf.score(items))  # the aborted ones score right later


def test_without_a_stop_check_nothing_changes(engines):
    vllm, hf = engines
    items = _items(3)
    _assert_agree(vllm.score(items), hf.score(items))
    with stop_when(lambda: False, lambda i: False):
        got = vllm.score(items)
    _assert_agree(got, hf.score(items))
