"""The policy's learning-rate schedule: a linear warm-up to `optim.lr`, then constant (veRL's
`get_constant_schedule_with_warmup`, except that the first step is not taken at lr 0).

The schedule is a pure function of the optimizer step count, so a resumed run needs that count only: the checkpoint
stores it (trainer/checkpoint.py, state.json `lr_steps`) and `restore` puts it back.
"""

from __future__ import annotations

import torch


def warmup_factor(step: int, warmup_steps: int) -> float:
    """lr / optim.lr at optimizer step `step` (0-based): (step + 1) / warmup_steps during the warm-up, then 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def warmup_scheduler(opt: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Step it once after every optimizer step (policy_step does); its `last_epoch` is the steps taken so far."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_factor(step, warmup_steps))


def restore(sched: torch.optim.lr_scheduler.LambdaLR, steps: int) -> None:
    """Put a scheduler at `steps` optimizer steps taken (what a checkpoint recorded) and set the lr to match."""
    sched.last_epoch = steps
    for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(steps)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]
