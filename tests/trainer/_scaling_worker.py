"""Run alone or under torchrun (2 processes, gloo), for test_scaling.py: one rePIRL PRM step and one two-mini-batch
PPO step (SGD) on the fixed rollouts of _dist_worker.py, each rank taking its questions.

argv: policy_dir out_dir knobs. knobs=1: FSDP2-sharded (under torchrun), micro-batches of 2 rows, log-probs in
chunks of 5 positions, gradient checkpointing; then the sharded policy + AdamW state is written as a DCP checkpoint
(trainer/checkpoint.py) into out_dir/ckpt, and a bf16 FSDP step runs on a fresh copy (its log-probs must be
float32 and finite). knobs=0: none of these (the reference). Rank 0 saves the gathered weights to out_dir/weights.pt."""

import sys

import torch

from tests.trainer._dist_worker import fixed_rollouts
from trainer import checkpoint
from trainer import distributed as dist
from trainer.algorithms import batch_of, irl_prm_step, policy_step
from trainer.config import PolicyTrainConfig, PRMTrainConfig
from trainer.device import Compute, attach
from trainer.models import RewardModel, load_causal_lm, token_logprobs


def _model(policy_dir, knobs, bf16=False, prm=False):
    m = RewardModel("logprob", policy_dir).train() if prm else load_causal_lm(policy_dir).train()
    hf = m.model if prm else m
    if knobs:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dist.wrap(hf, bf16=bf16)
    attach(hf, Compute(micro_batch_size=2, chunk_tokens=5) if knobs else Compute())
    return m


def main(policy_dir, out_dir, knobs):
    dist.setup("cpu")
    torch.manual_seed(0)
    mine = [r for r in fixed_rollouts() if r.group % dist.world() == dist.rank()]
    experts, negatives = [r for r in mine if r.correct], [r for r in mine if not r.correct]
    sampled = [r for r in mine if not r.is_reference]
    batch, adv = batch_of(sampled, 256), torch.tensor([1.0 if r.correct else -0.5 for r in sampled])
    cfg = PolicyTrainConfig(entropy_coef=0.01, mini_batch_size=2)

    policy = _model(policy_dir, knobs)
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    with torch.no_grad():
        neg_lp = (token_logprobs(policy, batch_of(negatives, 256)) * batch_of(negatives, 256).step_mask).sum(-1)
        old = token_logprobs(policy, batch, temperature=0.8)
    prm = _model(policy_dir, knobs, prm=True)
    m = irl_prm_step(prm, torch.optim.SGD(prm.parameters(), lr=0.5), experts, negatives, neg_lp,
                     PRMTrainConfig(grad_clip=1.0), 256, updates=1)
    s = policy_step(policy, opt, batch, old, adv, cfg, n=3, temperature=0.8)
    weights = {"policy": dist.model_state(policy), "prm": dist.model_state(prm.model), "prm_loss": m["prm_loss"], **s}
    if dist.rank() == 0:
        torch.save(weights, f"{out_dir}/weights.pt")
    if not knobs:
        return
    adam = torch.optim.AdamW(policy.parameters(), lr=1e-3)  # stateful: the checkpoint must carry its state
    policy_step(policy, adam, batch, old, adv, cfg, n=3, temperature=0.8)
    checkpoint.save(out_dir / "ckpt", 1, {"policy": (policy, adam)})
    final = dist.model_state(policy)
    if dist.rank() == 0:
        torch.save(final, f"{out_dir}/after_adam.pt")

    half = _model(policy_dir, knobs, bf16=True)  # FSDP2 MixedPrecisionPolicy(bf16 params, fp32 reduce)
    lp = token_logprobs(half, batch, temperature=0.8)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    diff = float(((lp - old).abs() * batch.attn).max())
    assert 0 < diff < 0.1, diff  # bf16 compute acted, within bf16's error
    policy_step(half, torch.optim.AdamW(half.parameters(), lr=1e-3), batch, lp.detach(), adv, cfg, n=3,
                temperature=0.8)
    if dist.rank() == 0:
        print("bf16 ok", diff, flush=True)


if __name__ == "__main__":
    from pathlib import Path

    from trainer import distributed

    try:
        main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1")
    finally:
        distributed.teardown()  # before exit, as train_cli does (trainer/distributed.py)
