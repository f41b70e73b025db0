"""The objectives against hand-computed values."""

import math

import pytest
import torch

from trainer.losses import (
    effective_sample_size,
    irl_group_loss,
    kl_k3,
    log_importance_weights,
    normalized_weights,
    ppo_clip_loss_sum,
    prime_advantages,
    prime_ce_loss,
    rloo_advantages,
    token_entropy,
)
from trainer.ranking import auc, best_of_n


def test_log_importance_weights_and_uniform_fallback():
    got = log_importance_weights(torch.tensor([2.0, 1.0]), torch.tensor([-3.0, -1.0]))
    assert got.tolist() == [5.0, 2.0]  # sum r - log pi
    assert log_importance_weights(torch.tensor([2.0, 1.0]), None).tolist() == [0.0, 0.0]


def test_self_normalised_weights_ess_and_truncation():
    w = normalized_weights(torch.tensor([0.0, math.log(3.0)]))
    assert w.tolist() == pytest.approx([0.25, 0.75])
    assert effective_sample_size(w) == pytest.approx(1 / (0.25**2 + 0.75**2))  # 1.6
    assert effective_sample_size(torch.full((5,), 0.2)) == pytest.approx(5.0)
    # truncated at 1.2 x mean (0.6): the cap holds AFTER renormalising (clip-then-renormalise gave [0.29, 0.71])
    t = normalized_weights(torch.tensor([0.0, math.log(3.0)]), max_weight_ratio=1.2)
    assert t.tolist() == pytest.approx([0.4, 0.6])
    # huge log-weights do not overflow: computed in log space
    assert normalized_weights(torch.tensor([1000.0, 1000.0 + math.log(3.0)])).tolist() == pytest.approx([0.25, 0.75], rel=1e-4)


def test_truncation_cap_holds_after_renormalisation():
    # softmax [0.05, 0.15, 0.8], cap 1.5 x mean = 0.5: 0.8 -> 0.5, the other two share 0.5 in proportion 1:3
    w = normalized_weights(torch.log(torch.tensor([0.05, 0.15, 0.8])), max_weight_ratio=1.5)
    assert w.tolist() == pytest.approx([0.125, 0.375, 0.5])
    # a cascade: after the first cap the next weight goes over it too and is capped in turn
    w = normalized_weights(torch.log(torch.tensor([0.01, 0.04, 0.25, 0.7])), max_weight_ratio=1.2)
    assert float(w.max()) <= 0.3 + 1e-7 and float(w.sum()) == pytest.approx(1.0)
    assert w.tolist() == pytest.approx([0.1, 0.3, 0.3, 0.3])  # 0.7, then 0.25, then 0.04 reach the cap
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):  # random log-weights, caps 1 (uniform) to 4 x mean
        n, ratio = int(torch.randint(1, 9, (1,), generator=gen)), 1 + 3 * float(torch.rand(1, generator=gen))
        w = normalized_weights(8 * torch.randn(n, generator=gen), max_weight_ratio=ratio)
        assert float(w.max()) <= ratio / n * (1 + 1e-6) and float(w.sum()) == pytest.approx(1.0, abs=1e-6)


def test_irl_loss_uses_one_energy_in_weights_and_loss():
    # token rewards of two experts and two failed rollouts (different lengths), the failed ones' log pi_theta
    r_exp = [torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.2, 0.2, 0.2])]
    r_neg = [torch.tensor([-1.0, 0.0, -1.0]), torch.tensor([0.3])]
    log_pi = torch.tensor([-2.0, -1.0])
    energy = lambda rs: torch.stack([r.sum() for r in rs])  # R(tau) = sum_t r_t
    log_w = log_importance_weights(energy(r_neg), log_pi)  # [-2 + 2, 0.3 + 1] = [0, 1.3]
    w = torch.softmax(log_w, -1)
    assert w.tolist() == pytest.approx([1 / (1 + math.exp(1.3)), math.exp(1.3) / (1 + math.exp(1.3))])
    neg = energy(r_neg).clone().requires_grad_(True)
    loss, got_w, _ = irl_group_loss(energy(r_exp), neg, log_w, scale=0.5)
    # 0.5 * (w . [-2, 0.3] - mean(1.0, 0.8)): the SAME R(tau) the weights exponentiate
    assert float(loss.detach()) == pytest.approx(0.5 * (float(w[0]) * -2.0 + float(w[1]) * 0.3 - 0.9))
    loss.backward()
    assert neg.grad.tolist() == pytest.approx((0.5 * w).tolist())  # d L / d R_i = scale * w_i
    assert got_w.tolist() == pytest.approx(w.tolist())


def test_irl_loss_hand_computed():
    experts = torch.tensor([1.0, 2.0])
    neg = torch.tensor([0.5, -1.0], requires_grad=True)
    log_w = torch.tensor([0.0, math.log(3.0)], requires_grad=True)
    loss, w, ess = irl_group_loss(experts, neg, log_w)
    # 0.25 * 0.5 + 0.75 * -1.0 - mean(1, 2) = 0.125 - 0.75 - 1.5
    assert float(loss) == pytest.approx(-2.125)
    assert ess == pytest.approx(1.6)
    loss.backward()
    assert neg.grad.tolist() == pytest.approx([0.25, 0.75])  # d/d rbar_i = w_i
    assert log_w.grad is None  # stop-gradient: the weights are constants


def test_irl_loss_without_stop_gradient_differentiates_the_weights():
    log_w = torch.tensor([0.0, math.log(3.0)], requires_grad=True)
    loss, _, _ = irl_group_loss(torch.tensor([1.0]), torch.tensor([0.5, -1.0]), log_w, stop_gradient_weights=False)
    loss.backward()
    # d/d log_w_j of sum_i softmax_i x_i = w_j (x_j - sum_i w_i x_i); weighted mean = -0.625
    assert log_w.grad.tolist() == pytest.approx([0.25 * (0.5 + 0.625), 0.75 * (-1.0 + 0.625)])


def test_rloo_advantages():
    assert rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0])).tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert rloo_advantages(torch.tensor([[3.0, 1.0]])).tolist() == [[2.0, -2.0]]


def test_ppo_clip_loss_hand_computed():
    mask = torch.ones(1, 1)
    up, down = torch.tensor([[math.log(1.5)]]), torch.tensor([[math.log(0.5)]])
    zero = torch.zeros(1, 1)
    assert float(ppo_clip_loss_sum(up, zero, torch.tensor([1.0]), mask)) == pytest.approx(-1.2)  # clipped at 1.2
    assert float(ppo_clip_loss_sum(up, zero, torch.tensor([-1.0]), mask)) == pytest.approx(1.5)  # pessimistic side
    assert float(ppo_clip_loss_sum(down, zero, torch.tensor([1.0]), mask)) == pytest.approx(-0.5)
    assert float(ppo_clip_loss_sum(down, zero, torch.tensor([-1.0]), mask)) == pytest.approx(0.8)
    # masked tokens contribute nothing; token-level advantages are accepted
    two = ppo_clip_loss_sum(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[1.0, 5.0]]), torch.tensor([[1.0, 0.0]]))
    assert float(two) == pytest.approx(-1.0)


def test_prime_ce_and_advantages_hand_computed():
    assert float(prime_ce_loss(torch.tensor([2.0]), torch.tensor([1]), beta=0.5)) == pytest.approx(-math.log(1 / (1 + math.exp(-1))))
    r = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    adv = prime_advantages(r, torch.ones(2, 2), torch.tensor([1.0, 0.0]), n=2)
    # process: r * 2 - (1 + 1) -> [0, 0], [-2, 2]; outcome RLOO [1, -1] on the last token; return-to-go
    assert adv.tolist() == [[1.0, 1.0], [-1.0, 1.0]]


def test_entropy_and_kl():
    assert float(token_entropy(torch.zeros(1, 1, 4))) == pytest.approx(math.log(4))
    assert float(kl_k3(torch.tensor(-1.0), torch.tensor(-1.0))) == 0.0
    assert float(kl_k3(torch.tensor(0.0), torch.tensor(-1.0))) == pytest.approx(math.exp(-1) + 1 - 1)


def test_auc_and_best_of_n():
    assert auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auc([1.0, 1.0], [True, False]) == pytest.approx(0.5)  # ties count one half
    assert auc([1.0], [True]) is None
    assert best_of_n([0, 0, 1, 1], [0.2, 0.9, 0.5, 0.1], [False, True, False, True]) == 0.5
