"""Supervised fine-tuning of a policy on expert solutions (nanoGPT-style: one loop, top to bottom).

Sequences follow the trajectory contract: prompt ids + (step + SEP) ids ... + EOS. The loss covers the solution
tokens only. Problems are drawn fresh every batch from a seeded task, so the tiny model cannot memorise answers.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from repirl.tasks.base import Problem
from repirl.trajectory import TrajectoryEncoder


@dataclass
class SFTConfig:
    # 1,000 steps with the word-merged tokenizer: held-out accuracy (T=0.8) ~55-75% (1,200 steps: 77% on 64 problems;
    # 1,500 char-level steps gave 49.5% in twice the time); the bootstrap checks its window
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50


def collate(encoder: TrajectoryEncoder, problems: Sequence[Problem], eos_id: int, pad_id: int):
    """input_ids, attention_mask and labels (-100 on prompt and padding) for a batch of expert solutions."""
    seqs, starts = [], []
    for p in problems:
        traj = encoder.encode(p.question, p.steps)
        seqs.append(traj.ids + [eos_id])
        starts.append(traj.prompt_len)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, start : len(s)] = torch.tensor(s[start:])
        mask[i, : len(s)] = 1
    return ids, mask, labels


def lr_at(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_sft(model, encoder: TrajectoryEncoder, sample_problems: Callable[[random.Random, int], list[Problem]],
              cfg: SFTConfig, eos_id: int, pad_id: int, on_log: Callable[[int, dict], None] | None = None,
              progress=None) -> list[dict]:
    """Train in place; returns the log rows. `sample_problems(rng, n)` draws a fresh batch."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    model.train()
    logs, t0, running = [], time.time(), None
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        ids, mask, labels = collate(encoder, sample_problems(rng, cfg.batch_size), eos_id, pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if progress is not None:
            progress(step + 1, running)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, "loss": round(running, 4), "lr": lr_at(step, cfg), "elapsed_s": round(time.time() - t0, 1)}
            logs.append(row)
            if on_log is not None:
                model.eval()
                on_log(step + 1, row)
                model.train()
    model.eval()
    return logs
