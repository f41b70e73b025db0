"""PRM parameterisations against transformers' own numbers, and export round trips."""

import math

import pytest
import torch

from repirl.artifacts import load_prm_config
from trainer.models import RewardModel, collate, load_causal_lm, token_logprobs


def _batch():
    seqs = [[10, 11, 12, 13, 14, 15], [20, 21, 22, 23]]
    return collate(seqs, [2, 1], [5, 4], pad_id=256), seqs


def test_token_logprobs_match_transformers_loss(tiny_policy_dir):
    model = load_causal_lm(tiny_policy_dir).eval()
    b, seqs = _batch()
    with torch.no_grad():
        lp = token_logprobs(model, b)
        for i, s in enumerate(seqs):
            ids = torch.tensor([s])
            nll = model(input_ids=ids, labels=ids).loss  # mean over positions 1..len-1
            assert float(-lp[i, 1 : len(s)].mean()) == pytest.approx(float(nll), rel=1e-5)


def test_logprob_prm_reward_is_beta_times_logprob(tiny_policy_dir):
    prm = RewardModel("logprob", tiny_policy_dir, beta=0.5).eval()
    b, _ = _batch()
    with torch.no_grad():
        assert torch.allclose(prm.token_rewards(b), 0.5 * token_logprobs(prm.model, b))


def test_head_prm_is_bounded_and_exports_as_token_classification(tiny_policy_dir, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForTokenClassification

    from repirl.artifacts import PolicyConfig, Provenance

    prm = RewardModel("head", tiny_policy_dir, bound=0.01).eval()
    b, _ = _batch()
    with torch.no_grad():
        r = prm.token_rewards(b)
        raw = prm.model(input_ids=b.ids, attention_mask=b.attn).logits[..., 0]
    assert r.abs().max() <= 0.01
    assert torch.allclose(r, 0.01 * torch.tanh(raw / 0.01))
    out = prm.export(tmp_path / "prm", tiny_tokenizer, PolicyConfig(), Provenance(algorithm="repirl"))
    cfg = load_prm_config(out)
    assert cfg.format == "token-reward" and cfg.provenance.algorithm == "repirl" and cfg.revision
    loaded = AutoModelForTokenClassification.from_pretrained(out).eval()
    with torch.no_grad():
        again = loaded(input_ids=b.ids, attention_mask=b.attn).logits[..., 0]
    assert torch.allclose(again, raw, atol=1e-6)


def test_logprob_prm_exports_as_implicit_with_uniform_reference(tiny_policy_dir, tmp_path, tiny_tokenizer):
    from repirl.artifacts import PolicyConfig, Provenance
    from repirl.scoring.loader import load_scorer

    prm = RewardModel("logprob", tiny_policy_dir, beta=0.5)
    out = prm.export(tmp_path / "prm", tiny_tokenizer, PolicyConfig(), Provenance(algorithm="repirl"))
    cfg = load_prm_config(out)
    assert cfg.format == "implicit" and cfg.reference_model == "reference" and cfg.beta == 0.5
    b, _ = _batch()
    with torch.no_grad():
        ref_lp = token_logprobs(load_causal_lm(out / "reference"), b)
        assert torch.allclose(ref_lp[:, 1:], torch.full_like(ref_lp[:, 1:], -math.log(len(tiny_tokenizer))), atol=1e-5)
    # the project's own scorer serves it: its token rewards are the trained ones + beta * log V
    item = ("Start with 3. Add 4. What is the result?", ["3+4=7", "Answer: 7"])
    scores = load_scorer(out, engine="hf").score([item])[0]
    from repirl.trajectory import TrajectoryEncoder

    t = TrajectoryEncoder(tiny_tokenizer).encode(*item)
    ids = torch.tensor([t.ids])
    from trainer.models import Batch

    batch = Batch(ids, torch.ones_like(ids), torch.ones(ids.shape), torch.ones(ids.shape))
    with torch.no_grad():
        mine = prm.token_rewards(batch)[0, t.prompt_len :] + 0.5 * math.log(len(tiny_tokenizer))
    served = [v for step in scores.token_rewards for v in step]
    assert served == pytest.approx(mine.tolist(), abs=1e-4)
    # step reward = mean of the step's token rewards (prm.json step_reward "mean"), not PRIME's length-tracking sum
    assert cfg.step_reward == "mean"
    assert scores.step_rewards == pytest.approx([sum(s) / len(s) for s in scores.token_rewards], abs=1e-5)
