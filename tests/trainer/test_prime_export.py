"""PRIME's exported PRM serves the reward PRIME trained (issue 24 cause 8): token rewards beta * (log pi_phi -
log pi_ref) with pi_ref the frozen initial policy it trained against, step rewards their sum over each step's
tokens, and a trajectory score (prm.json's default aggregation) equal to the BCE's logit,
beta * log(pi_phi(y) / pi_ref(y)) over the whole response: the score PRIME's loss calibrates (sigmoid of it is the
trained P(correct)). Before the fix the export kept the schema's default `mean-token`, which divides that logit by
the response's token count, so best-of-N ranked by a length-scaled score the loss never saw."""

import math

import pytest
import torch

from repirl.artifacts import load_prm_config
from repirl.scoring import aggregate
from repirl.scoring.loader import load_scorer
from trainer.config import parse_config
from trainer.harness import load_tokens
from trainer.train_cli import run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1, by hand (full forward, T=1)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return [0.0] + lp.tolist()


def test_prime_prm_serves_the_trained_implicit_reward_and_the_bce_logit(recipe, tiny_policy_dir):
    from transformers import AutoModelForCausalLM

    cfg = parse_config(recipe(algorithm="prime", prm={"lr": 1e-3}, eval_problems=0, calibration={"problems": 0}))
    run_training(cfg)
    folder = cfg.run_dir / "prm"
    prm_cfg = load_prm_config(folder)
    beta = cfg.prime.beta
    assert prm_cfg.format == "implicit" and prm_cfg.beta == beta

    phi = AutoModelForCausalLM.from_pretrained(folder).eval()
    ref = AutoModelForCausalLM.from_pretrained(folder / prm_cfg.reference_model).eval()
    init = AutoModelForCausalLM.from_pretrained(tiny_policy_dir).eval()
    # the reference is the policy PRIME started from (its pi_ref), and the PRM moved away from it
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), init.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(phi.state_dict().values(), init.state_dict().values()))

    enc = load_tokens(tiny_policy_dir).encoder
    question, steps = "Start with 7. Add 5. Multiply by 2. What is the result?", ["7+5=12", "12*2=24", "Answer: 24"]
    traj = enc.encode(question, steps)
    lp_phi, lp_ref = _logprobs(phi, traj.ids), _logprobs(ref, traj.ids)
    by_hand = [[beta * (lp_phi[t] - lp_ref[t]) for t in range(s, e)] for s, e in traj.step_spans]

    scorer = load_scorer(folder, engine="hf")
    served = scorer.score([(question, steps)])[0]
    assert [v for step in served.token_rewards for v in step] == pytest.approx(
        [v for step in by_hand for v in step], abs=1e-5)
    assert served.step_rewards == pytest.approx([math.fsum(s) for s in by_hand], abs=1e-5)

    # the trajectory score the service and the evaluator rank by: PRIME's BCE logit, not its per-token mean
    logit = beta * math.fsum(lp_phi[t] - lp_ref[t] for s, e in traj.step_spans for t in range(s, e))
    assert prm_cfg.default_aggregation == "sum"
    assert aggregate(served.step_rewards, prm_cfg.default_aggregation, served.token_rewards) == pytest.approx(
        logit, abs=1e-5)
