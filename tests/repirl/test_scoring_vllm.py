"""The vLLM pooling engine against the transformers engine on the same PRMs (agree to 1e-4), for the formats vLLM
serves as pooling models: token-reward (`Qwen2ForTokenClassification`) and qwen-step-tag
(`Qwen2ForProcessRewardModel`, vLLM's own implementation), and for `implicit` on vLLM's generate runner."""

from __future__ import annotations

import pytest

from repirl.scoring.tiny_prms import build_tiny_prm
from repirl.vllm_setup import vllm_available
from tests.conftest import assert_vllm_matches_hf

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]

ITEMS = [
    ("What is 12+7?", ["12+7 = 19", "Answer: 19"]),
    ("What is 12+7?", ["12+7 = 18", "so 18", "Answer: 18"]),
    ("3*4?", ["3*4=12"]),
]


@pytest.mark.parametrize("fmt", ["token-reward", "qwen-step-tag"])
def test_vllm_and_hf_engines_agree(tmp_path_factory, fmt):
    prm = build_tiny_prm(tmp_path_factory.mktemp("vllm_prms") / fmt, fmt)
    _, engine = assert_vllm_matches_hf(prm, ITEMS)
    assert engine.engine == "vllm"


def test_vllm_implicit_format_agrees_with_hf(tmp_path_factory, tiny_policy_dir):
    """`implicit` on vLLM's generate runner (prompt log-probs): PRIME-style with a real reference (two engines), and
    the rePIRL log-prob export whose all-zero reference is exactly uniform (one engine, -log V)."""
    from transformers import AutoTokenizer

    from repirl.artifacts import Provenance, load_policy_config
    from trainer.models import RewardModel

    root = tmp_path_factory.mktemp("vllm_implicit")
    prime_like = build_tiny_prm(root / "prime", "implicit")
    repirl = RewardModel("logprob", tiny_policy_dir, beta=0.5).export(
        root / "repirl", AutoTokenizer.from_pretrained(tiny_policy_dir), load_policy_config(tiny_policy_dir),
        Provenance(algorithm="repirl"))
    for prm, engines in ((prime_like, 2), (repirl, 1)):
        got, engine = assert_vllm_matches_hf(prm, ITEMS)
        assert (engine.ref_llm is None) == (engines == 1)
        assert all(g.token_rewards is not None for g in got)
        assert len({round(r, 3) for g in got for r in g.step_rewards}) > 2  # not a constant scorer
    from repirl.scoring.loader import resolve_engine

    # engine "auto" keeps implicit on transformers: its KV reuse computes shared prefixes once
    assert resolve_engine("implicit", "auto") == "hf"


def _long_items(n_steps: int, tag: str) -> list[tuple[str, list[str]]]:
    """A question and steps long enough to fill several 32-token blocks (the byte-level tiny tokenizer)."""
    q = "Start with 123456789 and keep a running total of every number named below, step by step."
    steps = [f"add {k}{k}{k} to the total and carry on to the next one" for k in range(n_steps)]
    return [(q, steps[:-1] + [steps[-1] + f" ({tag})"])]


def test_vllm_prefix_reuse_agrees_with_hf_and_computes_only_new_blocks(tmp_path_factory):
    """repirl/scoring/vllm_engine.py, "Prefix reuse": the token-reward engine reads vLLM's prefix cache
    (`skip_reading_prefix_cache=False`; vLLM 0.32 defaults it to True for token_classify, vllm/pooling_params.py:
    127-134) and fills the skipped rows from the values it kept. Scores equal the transformers engine's; an item
    that extends a scored one computes its last partial block and new tokens only; four candidates of one call that
    share a prefix compute it once (no item counts more than its length); with the kept values gone the item runs
    again in full (same scores). And plain
    vLLM with prefix caching on (vLLM's own pooling params) reads none of it: num_cached_tokens 0."""
    from repirl.scoring.loader import load_scorer
    from repirl.vllm_setup import engine_core_in_process

    prm = build_tiny_prm(tmp_path_factory.mktemp("vllm_reuse") / "tr", "token-reward")
    hf = load_scorer(prm, engine="hf", kv_cache_tokens=0)
    with engine_core_in_process():  # as in assert_vllm_matches_hf (tests/conftest.py)
        engine = load_scorer(prm, engine="vllm", max_model_len=512)
    try:
        assert engine.reuse_prefixes and engine.blocks is not None and engine.blocks.block_size == 32
        base = _long_items(3, "a")
        first = engine.score(base)[0]
        assert first.tokens_computed == first.tokens_total
        q, steps = base[0]
        longer = [(q, steps + ["then add 7 more"])]
        got = engine.score(longer)[0]
        assert got.step_rewards == pytest.approx(hf.score(longer)[0].step_rewards, abs=1e-4)
        prefix_len = first.tokens_total
        assert got.tokens_computed == got.tokens_total - prefix_len // 32 * 32  # whole blocks of the prefix reused
        cands = [(q, steps + [f"then add {k} more"]) for k in range(4)]  # share `steps`; new to the engine
        engine.forget()
        scored = engine.score(cands)
        for g, w in zip(scored, hf.score(cands)):
            assert g.step_rewards == pytest.approx(w.step_rewards, abs=1e-4)
            for gt, wt in zip(g.token_rewards, w.token_rewards):
                assert gt == pytest.approx(wt, abs=1e-4)
        shared = engine.encoder.encode(q, steps)
        blocks_shared = len(shared.ids) // 32 * 32
        assert sum(s.tokens_computed for s in scored) == (
            len(shared.ids) + sum(s.tokens_total - blocks_shared for s in scored))  # the prefix once, then the rest
        assert all(s.tokens_computed <= s.tokens_total for s in scored)
        engine.blocks.clear()  # vLLM still holds the blocks, the engine no longer has their values: run again
        again = engine.score(cands[:1])[0]
        assert again.step_rewards == pytest.approx(scored[0].step_rewards, abs=1e-6)
        assert again.tokens_computed == again.tokens_total
    finally:
        engine.close()
    with engine_core_in_process():
        plain = load_scorer(prm, engine="vllm", max_model_len=512, reuse_prefixes=False, enable_prefix_caching=True)
    try:
        assert plain.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
        plain.score(base)
        again = plain.score(longer)[0]
        assert again.tokens_computed == again.tokens_total  # vLLM's token_classify does not read its prefix cache
    finally:
        plain.close()
