"""Run alone or under torchrun (2 processes, gloo), for test_distributed.py: the three update steps with micro-batches of
2 rows when the ranks hold UNEQUAL shares, as a real run's ranks do (failed rollouts, filtered questions and
uneven question counts differ by rank): 3 questions, so rank 0 holds two and rank 1 one.

1. a rePIRL PRM step (logprob PRM): rank 0 scores 8 rows (4 micro-batches), rank 1 4 rows (2);
2. a PPO step in 2 mini-batches of questions: rank 0's are 3 + 3 rows, rank 1's 2 + 1;
3. PRIME's PRM update with one question per mini-batch on one row per question: rank 0 holds rows for mini-batches
   1 and 2, rank 1 for mini-batch 1 only, so in mini-batch 2 rank 1 has no row at all.

FSDP2 all-gathers the weights in every forward, so a rank that runs fewer forwards than another leaves the
collectives unpaired (a hang, or a size mismatch in gloo). Alone (argv[3] = "0") the worker computes the same
global updates in one process: steps 1-2 on the whole batch, step 3 as two one-step calls on PRIME's two global
mini-batches. Rank 0 saves the weights to out_dir/weights.pt."""

import sys

import torch

from tests.trainer._dist_worker import fixed_rollouts
from trainer import distributed as dist
from trainer.algorithms import batch_of, irl_prm_step, policy_step, prime_prm_step
from trainer.config import PolicyTrainConfig, PrimeConfig, PRMTrainConfig
from trainer.device import Compute, attach
from trainer.models import RewardModel, load_causal_lm, token_logprobs


def _wrapped(model, hf):
    dist.wrap(hf)
    attach(hf, Compute(micro_batch_size=2))
    return model


def _count_all_max() -> list:
    """Every `dist.all_max` call from here on (micro_slices' agreement on the forward count among them)."""
    calls, inner = [], dist.all_max
    dist.all_max = lambda x: calls.append(x) or inner(x)
    return calls


def main(policy_dir, out_dir, sharded):
    dist.setup("cpu")
    agreements = _count_all_max()
    torch.manual_seed(0)
    mine = [r for r in fixed_rollouts(n_groups=3) if r.group % dist.world() == dist.rank()]
    experts, negatives = [r for r in mine if r.correct], [r for r in mine if not r.correct]
    sampled = [r for r in mine if not r.is_reference]
    policy = load_causal_lm(policy_dir).train()
    _wrapped(policy, policy)
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    neg = batch_of(negatives, 256)
    batch, adv = batch_of(sampled, 256), torch.tensor([1.0 if r.correct else -0.5 for r in sampled])
    with torch.no_grad():
        neg_lp = (token_logprobs(policy, neg) * neg.step_mask).sum(-1)
        old = token_logprobs(policy, batch, temperature=0.8)

    prm = RewardModel("logprob", policy_dir).train()
    _wrapped(prm, prm.model)
    m = irl_prm_step(prm, torch.optim.SGD(prm.parameters(), lr=0.5), experts, negatives, neg_lp,
                     PRMTrainConfig(grad_clip=1.0), 256, updates=1)
    s = policy_step(policy, opt, batch, old, adv, PolicyTrainConfig(entropy_coef=0.01, mini_batch_size=2), n=3,
                    temperature=0.8)

    implicit = RewardModel("logprob", policy_dir).train()
    _wrapped(implicit, implicit.model)
    ref = load_causal_lm(policy_dir).eval()
    prime_opt = torch.optim.SGD(implicit.parameters(), lr=0.5)
    firsts = [next(r for r in sampled if r.group == g) for g in sorted({r.group for r in sampled})]  # a row each
    prm_cfg = PRMTrainConfig(grad_clip=1e9)
    if sharded:  # 3 mini-batches of one question over [q0, q2] on rank 0 and [q1] on rank 1: {q0, q1}, {q2}, {}
        _, _, pm = prime_prm_step(implicit, ref, prime_opt, firsts, PrimeConfig(beta=0.5, mini_batch_size=1),
                                  prm_cfg, 256, 3)
        steps = pm["prm_steps"]
    else:
        by_group = {r.group: r for r in firsts}
        for rows in ([by_group[0], by_group[1]], [by_group[2]]):
            prime_prm_step(implicit, ref, prime_opt, rows, PrimeConfig(beta=0.5), prm_cfg, 256, len(rows))
        steps = None
    weights = {"policy": dist.model_state(policy), "prm": dist.model_state(prm.model),
               "prime": dist.model_state(implicit.model), "prm_loss": m["prm_loss"], "prime_steps": steps,
               "all_max_calls": len(agreements), **s}
    if dist.rank() == 0:
        torch.save(weights, f"{out_dir}/weights.pt")
        print("uneven ok", flush=True)


if __name__ == "__main__":
    from trainer import distributed

    try:
        main(sys.argv[1], sys.argv[2], sys.argv[3] == "1")
    finally:
        distributed.teardown()
