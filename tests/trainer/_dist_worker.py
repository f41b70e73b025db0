"""Run under torchrun (2 processes, gloo) or alone: one rePIRL PRM step and one policy step on a fixed batch, each
rank taking its shard; rank 0 saves the updated weights to argv[2]. Used by test_distributed.py.

Under torchrun the policy and the PRM are sharded with FSDP2 (trainer.distributed.wrap, as the Trainer does); each
rank prints `local_numel <rank> <policy elements it holds> <full count>`. Then the checkpoint path is exercised: the
full model + AdamW state is gathered, the model is scrambled, the state is loaded back (rank 0's copy broadcast into
the shards) and gathered again; rank 0 prints `roundtrip ok` when everything came back bit-identical."""

import copy
import sys

import torch

from trainer import distributed as dist
from trainer.algorithms import batch_of, irl_prm_step, policy_step
from trainer.config import PolicyTrainConfig, PRMTrainConfig
from trainer.models import RewardModel, load_causal_lm, token_logprobs
from trainer.rollouts import Rollout


def fixed_rollouts(n_groups=4, n=3, max_extra=6):
    g = torch.Generator().manual_seed(0)
    out = []
    for grp in range(n_groups):
        for k in range(n + 1):  # one reference + n rollouts per question
            plen = 5 + grp
            length = plen + 6 + int(torch.randint(0, max_extra, (1,), generator=g))
            ids = torch.randint(0, 250, (length,), generator=g).tolist()
            out.append(Rollout(None, grp, ["x"], ids, plen, length - 1, correct=(k == 0 or (grp + k) % 3 == 0),
                               is_reference=k == 0))
    return out


def roundtrip(model, opt):
    """Gather model + optimizer state, scramble the model, load the state back, gather again: equal on rank 0."""
    model_sd, opt_sd = dist.model_state(model), dist.optim_state(model, opt)
    model_sd, opt_sd = copy.deepcopy(model_sd), copy.deepcopy(opt_sd)  # single process: views of the live tensors
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5).add_(1.0)
    dist.load_state(model, opt, model_sd, copy.deepcopy(opt_sd))  # torch may write shards into what it is given
    again, opt_again = dist.model_state(model), dist.optim_state(model, opt)
    if dist.rank() == 0:
        assert model_sd.keys() == again.keys() and all(torch.equal(model_sd[k], again[k]) for k in model_sd)
        st, st2 = opt_sd["state"], opt_again["state"]
        assert st and st.keys() == st2.keys()
        assert all(torch.equal(torch.as_tensor(st[k][s]), torch.as_tensor(st2[k][s])) for k in st for s in st[k])


def main(policy_dir, out_dir):
    dist.setup()
    torch.manual_seed(0)
    full = sum(p.numel() for p in load_causal_lm(policy_dir).parameters())
    policy = dist.wrap(load_causal_lm(policy_dir).train())
    opt_p = torch.optim.SGD(policy.parameters(), lr=0.5)  # before any forward: see trainer.distributed.wrap
    print("local_numel", dist.rank(), dist.local_numel(policy), full, flush=True)
    mine = [r for r in fixed_rollouts() if r.group % dist.world() == dist.rank()]
    experts = [r for r in mine if r.correct]
    negatives = [r for r in mine if not r.correct]
    with torch.no_grad():
        neg_lp = (token_logprobs(policy, batch_of(negatives, 256)) * batch_of(negatives, 256).step_mask).sum(-1)
    for kind in ("logprob", "head"):  # head: a fresh score head (seeded) on the body; eval() turns its dropout off
        torch.manual_seed(1)
        prm = RewardModel(kind, policy_dir).train(kind == "logprob")
        dist.wrap(prm.model)
        # SGD: linear in the gradient (Adam's first step is lr * sign(g), which turns float noise in near-zero
        # gradients into +-lr differences). grad_clip 1.0 clips the logprob PRM's step (a norm taken per shard
        # would show); the policy step is not clipped (averaged, not summed, gradients would show).
        opt_r = torch.optim.SGD(prm.parameters(), lr=0.5)
        m = irl_prm_step(prm, opt_r, experts, negatives, neg_lp, PRMTrainConfig(grad_clip=1.0), 256, updates=1)
        prm_out = dist.saveable(prm.model)  # collective when sharded
        if dist.rank() == 0:
            prm_out.save_pretrained(f"{out_dir}/prm_{kind}")
            print(f"prm_loss_{kind}", m["prm_loss"], flush=True)
    sampled = [r for r in mine if not r.is_reference]
    batch = batch_of(sampled, 256)
    with torch.no_grad():
        old = token_logprobs(policy, batch, temperature=0.8)
    adv = torch.tensor([1.0 if r.correct else -0.5 for r in sampled])
    # two mini-batches of 2 questions (3 rollouts each): two optimizer steps, the second with ratio != 1; on 2 ranks
    # each mini-batch is one question per rank, the same global questions as in one process
    mb = PolicyTrainConfig(entropy_coef=0.01, mini_batch_size=2)
    out = policy_step(policy, opt_p, batch, old, adv, mb, n=3, temperature=0.8)
    if dist.rank() == 0:
        print("policy_steps", out["policy_steps"], "clip_frac", out["clip_frac"], flush=True)
    pol = dist.saveable(policy)
    if dist.rank() == 0:
        pol.save_pretrained(f"{out_dir}/policy")

    adam = torch.optim.AdamW(policy.parameters(), lr=1e-3)  # stateful, for the round trip; built after a backward,
    # which leaves the sharded parameters registered
    policy_step(policy, adam, batch, old, adv, mb, n=3, temperature=0.8)
    roundtrip(policy, adam)
    if dist.rank() == 0:
        print("roundtrip ok", flush=True)


if __name__ == "__main__":
    from trainer import distributed

    try:
        main(sys.argv[1], sys.argv[2])
    finally:
        distributed.teardown()  # before exit, as train_cli does (trainer/distributed.py)
