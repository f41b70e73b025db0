"""Run under torchrun (2 processes, gloo) or alone: one rePIRL PRM step and one policy step on a fixed batch, each
rank taking its shard; rank 0 saves the updated weights to argv[1]. Used by test_distributed.py."""

import sys

import torch

from trainer import distributed as dist
from trainer.algorithms import batch_of, irl_prm_step, policy_step
from trainer.config import PolicyTrainConfig, PRMTrainConfig
from trainer.models import RewardModel, load_causal_lm, token_logprobs
from trainer.rollouts import Rollout


def fixed_rollouts(n_groups=4, n=3):
    g = torch.Generator().manual_seed(0)
    out = []
    for grp in range(n_groups):
        for k in range(n + 1):  # one reference + n rollouts per question
            plen = 5 + grp
            length = plen + 6 + int(torch.randint(0, 6, (1,), generator=g))
            ids = torch.randint(0, 250, (length,), generator=g).tolist()
            out.append(Rollout(None, grp, ["x"], ids, plen, length - 1, correct=(k == 0 or (grp + k) % 3 == 0),
                               is_reference=k == 0))
    return out


def main(policy_dir, out_dir):
    dist.setup()
    torch.manual_seed(0)
    policy = load_causal_lm(policy_dir).train()
    prm = RewardModel("logprob", policy_dir).train()
    opt_p = torch.optim.SGD(policy.parameters(), lr=0.5)  # linear in the gradient: Adam's first step is
    # lr * sign(g), which turns float noise in near-zero gradients into +-lr differences
    opt_r = torch.optim.SGD(prm.parameters(), lr=0.5)
    mine = [r for r in fixed_rollouts() if r.group % dist.world() == dist.rank()]
    experts = [r for r in mine if r.correct]
    negatives = [r for r in mine if not r.correct]
    with torch.no_grad():
        neg_lp = (token_logprobs(policy, batch_of(negatives, 256)) * batch_of(negatives, 256).step_mask).sum(-1)
    m = irl_prm_step(prm, opt_r, experts, negatives, neg_lp, PRMTrainConfig(), 256, updates=1)
    sampled = [r for r in mine if not r.is_reference]
    batch = batch_of(sampled, 256)
    with torch.no_grad():
        old = token_logprobs(policy, batch)
    adv = torch.tensor([1.0 if r.correct else -0.5 for r in sampled])
    policy_step(policy, opt_p, batch, old, adv, PolicyTrainConfig(entropy_coef=0.01))
    if dist.rank() == 0:
        policy.save_pretrained(f"{out_dir}/policy")
        prm.model.save_pretrained(f"{out_dir}/prm")
        print("prm_loss", m["prm_loss"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
