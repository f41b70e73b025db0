"""Issue 24 cause 5: the head-form PRM is trained on bound * tanh(head / bound) per token; the exported folder must
serve exactly that (it served the raw head: the same per-token order, but a step's mean weighed tokens the training
had saturated as if they were not). The served rewards (repirl's own scorer, and trainer/compare.py's loader) must
equal the train-time ones on a fixed trajectory."""

import pytest
import torch

from repirl.artifacts import PolicyConfig, Provenance, load_prm_config
from repirl.trajectory import TrajectoryEncoder
from trainer.models import Batch, RewardModel

ITEM = ("Start with 3. Add 4. What is the result?", ["3+4=7", "Answer: 7"])


def test_served_head_prm_rewards_are_the_trained_ones(tiny_policy_dir, tmp_path, tiny_tokenizer):
    from repirl.scoring.loader import load_scorer
    from trainer.compare import _load_prm_scorer

    torch.manual_seed(0)
    prm = RewardModel("head", tiny_policy_dir, bound=0.05)  # small: the bound saturates the fresh head's outputs
    with torch.no_grad():  # a larger head, so the bound acts
        prm.model.score.weight.mul_(20.0)
    t = TrajectoryEncoder(tiny_tokenizer).encode(*ITEM)
    ids = torch.tensor([t.ids])
    batch = Batch(ids, torch.ones_like(ids), torch.ones(ids.shape), torch.ones(ids.shape))
    trained = prm.score(batch)[0, t.prompt_len :]  # what the PRM loss and the policy's reward used
    with torch.no_grad():
        raw = prm.model(input_ids=ids).logits[0, t.prompt_len :, 0]
    assert (trained - raw).abs().max() > 0.01  # the bound changes the values this test compares

    out = prm.export(tmp_path / "prm", tiny_tokenizer, PolicyConfig(), Provenance(algorithm="repirl"))
    assert load_prm_config(out).token_bound == 0.05
    scores = load_scorer(out, engine="hf").score([ITEM])[0]
    served = [v for step in scores.token_rewards for v in step]
    assert served == pytest.approx(trained.tolist(), abs=1e-5)
    for (start, end), step in zip(t.step_spans, scores.step_rewards):  # each step: the mean of its trained rewards
        assert step == pytest.approx(float(prm.score(batch)[0, start:end].mean()), abs=1e-5)
    with torch.no_grad():  # and trainer/compare.py loads it the same way
        compared = _load_prm_scorer(out)(batch)[0, t.prompt_len :]
    assert compared.tolist() == pytest.approx(trained.tolist(), abs=1e-5)


def test_token_bound_is_refused_on_other_formats(tiny_tokenizer):
    from repirl.artifacts import ArtifactError, PRMConfig
    from repirl.scoring.formats import FormatSpec

    cfg = PRMConfig(format="implicit", beta=1.0, reference_model="reference", token_bound=5.0)
    with pytest.raises(ArtifactError, match="token_bound"):
        FormatSpec.resolve(cfg, tiny_tokenizer, "prm.json")
