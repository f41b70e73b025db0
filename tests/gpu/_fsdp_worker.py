"""Run by tests/gpu/test_cuda_paths.py in its own process: a one-process group (NCCL on a GPU, gloo on the CPU
rehearsal), the policy sharded with FSDP2 (`distributed.wrap(force=True)`), one PPO step with micro-batches (gradient
sync off for all but the last, `set_grad_sync`) against the same step of an unsharded copy; then a bf16
mixed-precision FSDP2 step, and a DCP checkpoint of the sharded model + AdamW loaded back into a fresh sharded copy.
argv: policy_dir out_dir device. Prints one JSON line."""

import json
import sys

import torch
import torch.distributed as tdist

from trainer import checkpoint
from trainer import distributed as dist
from trainer.algorithms import policy_step
from trainer.config import PolicyTrainConfig
from trainer.device import Compute, attach
from trainer.models import collate, load_causal_lm, token_logprobs


def main(policy_dir, out_dir, device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(0)
    # the trainer's own backends (trainer/distributed.py setup): NCCL for CUDA tensors, gloo for the CPU floats that
    # `all_sum` reduces (NCCL alone failed on the H200: "No backend type associated with device type cpu")
    tdist.init_process_group("cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo",
                             init_method=f"file://{out_dir}/pg", rank=0, world_size=1)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 250, (int(k),), generator=g).tolist() for k in torch.randint(10, 30, (6,), generator=g)]
    batch = collate(seqs, [4] * 6, [len(s) - 1 for s in seqs], 0)
    adv = torch.tensor([1.0, -0.5, 0.3, -1.0, 0.7, 0.2])
    cfg = PolicyTrainConfig(lr=1e-3, entropy_coef=0.01, mini_batch_size=None)

    def model(shard, bf16=False, micro=None):
        torch.manual_seed(0)
        m = load_causal_lm(policy_dir).to(device).train()
        if shard:
            dist.wrap(m, bf16=bf16, force=True)
        attach(m, Compute(device=device, micro_batch_size=micro, chunk_tokens=7))
        return m, torch.optim.SGD(m.parameters(), lr=1e-2)

    plain, opt_p = model(False)
    with torch.no_grad():
        old = token_logprobs(plain, batch)
    policy_step(plain, opt_p, batch, old, adv, cfg)
    sharded, opt_s = model(True, micro=2)
    assert dist.is_sharded(sharded)
    policy_step(sharded, opt_s, batch, old, adv, cfg)
    full = dist.model_state(sharded)
    diff = max(float((full[k].to(device) - v).abs().max()) for k, v in plain.state_dict().items() if k in full)

    bf, opt_b = model(True, bf16=True, micro=3)
    stats = policy_step(bf, opt_b, batch, old, adv, cfg)
    finite = all(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in bf.parameters())

    adam_m, _ = model(True)
    adam = torch.optim.AdamW(adam_m.parameters(), lr=1e-3)
    policy_step(adam_m, adam, batch, old, adv, cfg)
    checkpoint.save(out_dir, 1, {"policy": (adam_m, adam)})
    fresh, _ = model(True)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    it = checkpoint.load(checkpoint.latest(out_dir), {"policy": (fresh, fresh_opt)})
    a, b = dist.model_state(adam_m), dist.model_state(fresh)
    restored = all(torch.equal(a[k], b[k]) for k in a) and bool(fresh_opt.state)
    print(json.dumps({"max_diff_vs_unsharded": diff, "bf16_loss": stats["policy_loss"], "bf16_finite": finite,
                      "dcp_iteration": it, "dcp_restored": restored}))
    tdist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
