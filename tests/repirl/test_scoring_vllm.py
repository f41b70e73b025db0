"""The vLLM pooling engine against the transformers engine on the same PRMs (agree to 1e-4), for the formats vLLM
serves as pooling models: token-reward (`Qwen2ForTokenClassification`) and qwen-step-tag
(`Qwen2ForProcessRewardModel`, vLLM's own implementation)."""

from __future__ import annotations

import pytest

from repirl.scoring.loader import load_scorer
from repirl.scoring.tiny_prms import build_tiny_prm
from repirl.scoring.vllm_engine import vllm_available

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
    hf = load_scorer(prm, engine="hf", kv_cache_tokens=0).score(ITEMS)
    engine = load_scorer(prm, engine="vllm", max_model_len=256)
    assert engine.engine == "vllm"
    try:
        got = engine.score(ITEMS)
    finally:
        del engine
    for g, w in zip(got, hf):
        assert g.step_rewards == pytest.approx(w.step_rewards, abs=1e-4)
        if w.token_rewards is not None:
            for gt, wt in zip(g.token_rewards, w.token_rewards):
                assert gt == pytest.approx(wt, abs=1e-4)


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
        hf = load_scorer(prm, engine="hf", kv_cache_tokens=0).score(ITEMS)
        engine = load_scorer(prm, engine="vllm", max_model_len=256)
        assert (engine.ref_llm is None) == (engines == 1)
        try:
            got = engine.score(ITEMS)
        finally:
            engine.close()
            del engine
        for g, w in zip(got, hf):
            assert g.step_rewards == pytest.approx(w.step_rewards, abs=1e-4)
            for gt, wt in zip(g.token_rewards, w.token_rewards):
                assert gt == pytest.approx(wt, abs=1e-4)
        assert len({round(r, 3) for g in got for r in g.step_rewards}) > 2  # not a constant scorer
    from repirl.scoring.loader import resolve_engine

    # engine "auto" keeps implicit on transformers: its KV reuse computes shared prefixes once

    assert resolve_engine("implicit", "auto") == "hf"
