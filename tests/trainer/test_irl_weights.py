"""Issue 24, cause 3: the PRM update's importance weights and its loss use one trajectory energy (the sum of token
rewards, the paper's derivation), the truncation cap holds after renormalisation, and every iteration reports the
ESS (before and after truncation) and the largest weight."""

import pytest
import torch

from trainer.algorithms import batch_of, irl_prm_step
from trainer.config import PRMTrainConfig, parse_config
from trainer.models import RewardModel
from trainer.rollouts import Rollout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Recorder:
    """An optimizer that keeps the gradient it was asked to apply and changes nothing."""

    def __init__(self, params):
        self.params, self.grads = list(params), None

    def step(self):
        self.grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def _rollouts():
    g = torch.Generator().manual_seed(0)
    out = []
    for grp in range(2):  # 2 questions x (1 expert + 2 failed), lengths 9-14 tokens
        for k in range(3):
            ids = torch.randint(0, 250, (10 + 2 * k + grp,), generator=g).tolist()
            out.append(Rollout(None, grp, ["x"], ids, 3, len(ids) - 1, correct=k == 0))
    return out


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_prm_gradient_is_the_derivations(tiny_policy_dir, stop_gradient):
    torch.manual_seed(0)
    prm = RewardModel("logprob", tiny_policy_dir).train()
    rs = _rollouts()
    experts, negatives = [r for r in rs if r.correct], [r for r in rs if not r.correct]
    lp = torch.tensor([-30.0, -38.0, -33.0, -29.0])  # log pi_theta of the failed rollouts' step tokens
    cfg = PRMTrainConfig(grad_clip=1e9, stop_gradient_weights=stop_gradient)
    opt = _Recorder(prm.parameters())
    irl_prm_step(prm, opt, experts, negatives, lp, cfg, 256, updates=1)

    # by hand: per question, scale * (sum_i w_i R_i - mean_experts R), R = sum of step-token rewards,
    # w = softmax(R - log pi_theta) (from the scoring pass), scale = 1 / the question's mean token count
    items = experts + negatives
    b = batch_of(items, 256)
    energy = (prm.token_rewards(b) * b.step_mask).sum(-1)
    loss = 0.0
    for g in range(2):
        e = [i for i, r in enumerate(items) if r.group == g and r.correct]
        n = [i for i, r in enumerate(items) if r.group == g and not r.correct]
        log_w = energy[n] - lp[[i - len(experts) for i in n]]
        w = torch.softmax(log_w.detach() if stop_gradient else log_w, -1)
        scale = 1.0 / float(b.step_mask[e + n].sum(-1).mean())
        loss = loss + scale * ((w * energy[n]).sum() - energy[e].mean())
    want = torch.autograd.grad(loss / 2, list(prm.parameters()), allow_unused=True)
    worst = max(float((a - (w if w is not None else 0)).abs().max()) for a, w in zip(opt.grads, want))
    size = max(float(w.abs().max()) for w in want if w is not None)
    assert worst <= 1e-4 * size, (worst, size)


def test_every_iteration_reports_ess_and_the_cap_holds(recipe):
    from trainer.loop import Trainer

    # a fresh head: non-uniform weights, so the 1.5 x mean cap acts (a random policy fails every question)
    cfg = parse_config(recipe(iterations=1, eval_problems=0, questions_per_iter=2, rollouts={"n": 4},
                              prm={"parameterization": "head", "max_weight_ratio": 1.5}))
    trainer = Trainer(cfg)
    trainer.engine = trainer._make_engine()
    row = trainer.iteration(0)
    assert row["prm_groups"] == 2, row
    assert {"ess", "ess_raw", "ess_frac", "w_max_ratio"} <= set(row), sorted(row)
    assert 1.0 <= row["ess"] <= 4.0 and 1.0 <= row["ess_raw"] <= 4.0
    assert row["w_max_ratio"] <= 1.5 + 1e-6, row
    assert row["ess"] >= row["ess_raw"] - 1e-6  # truncation only flattens the weights


# ------------------------------------------------------------------------------- cause 4: a tie to the PRM's start
def _distance(prm, start):
    return sum(float((p.detach() - p0).pow(2).sum()) for p, p0 in zip(prm.parameters(), start)) ** 0.5


def test_init_l2_pulls_the_prm_toward_its_start(tiny_policy_dir):
    torch.manual_seed(0)
    rs = _rollouts()
    experts, negatives = [r for r in rs if r.correct], [r for r in rs if not r.correct]
    lp = torch.tensor([-30.0, -38.0, -33.0, -29.0])
    ends = {}
    for coef in (0.0, 50.0):
        prm = RewardModel("logprob", tiny_policy_dir).train()
        prm.remember_start(coef)
        start = [p.detach().clone() for p in prm.parameters()]
        with torch.no_grad():  # a PRM that has drifted from its start
            for p in prm.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        before = _distance(prm, start)
        opt = torch.optim.SGD(prm.parameters(), lr=0.01)
        m = irl_prm_step(prm, opt, experts, negatives, lp, PRMTrainConfig(init_l2=coef, grad_clip=1e9), 256,
                         updates=3)
        ends[coef] = _distance(prm, start) / before
        assert ("prm_drift" in m) == (coef > 0)
        if coef:
            assert m["prm_drift"] == pytest.approx(before, rel=1e-4)
    # without the term the IRL gradient moves the PRM further away; with it each step removes lr * coef = 50% of
    # the offset (three steps: about 1/8 left, plus what the IRL gradient adds)
    assert ends[0.0] >= 1.0 and ends[50.0] < 0.3, ends
