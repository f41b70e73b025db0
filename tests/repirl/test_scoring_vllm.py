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
