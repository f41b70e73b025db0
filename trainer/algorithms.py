"""One PRM update and one policy update, shared by every algorithm (rePIRL, RLOO, PRIME, TTT, offline)."""

from __future__ import annotations

from typing import Sequence

import torch

from repirl.answers import extract_answer
from trainer import distributed as dist
from trainer.losses import (
    irl_group_loss,
    kl_k3,
    log_importance_weights,
    masked_mean,
    ppo_clip_loss_sum,
    prime_advantages,
    prime_ce_loss,
    rloo_advantages,
)
from trainer.models import Batch, collate, token_logprobs
from trainer.rollouts import Rollout


def batch_of(rollouts: Sequence[Rollout], pad_id: int) -> Batch:
    return collate([r.ids for r in rollouts], [r.prompt_len for r in rollouts], [r.step_end for r in rollouts], pad_id)


def _step(model, opt, grad_clip: float) -> None:
    # Distributed runs: FSDP2 (trainer/distributed.py wrap) already reduce-scattered the SUM of the ranks' gradients
    # during backward; each rank holds its shard, as DTensors, whose global norm clip_grad_norm_ computes (all-reduce).
    dist.check_synced(model)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def irl_prm_step(prm, opt, experts: Sequence[Rollout], negatives: Sequence[Rollout], neg_sampler_logprob,
                 cfg, pad_id: int, updates: int) -> dict:
    """rePIRL's PRM update over this rank's questions. `neg_sampler_logprob` [len(negatives)]: log pi_theta of each
    failed rollout's step tokens (None: uniform weights, the offline mode without log-probs)."""
    items = list(experts) + list(negatives)
    groups = sorted({r.group for r in items})
    if not items:
        return {}
    batch = batch_of(items, pad_id)
    is_neg = torch.tensor([False] * len(experts) + [True] * len(negatives))
    gid = torch.tensor([r.group for r in items])
    usable = [g for g in groups if ((gid == g) & is_neg).any() and ((gid == g) & ~is_neg).any()]
    n_global = dist.all_sum(len(usable))
    metrics: dict = {}
    for it in range(max(1, updates)):
        train = updates > 0
        with torch.set_grad_enabled(train):
            r = prm.token_rewards(batch)
            rbar = masked_mean(r, batch.step_mask)
            rsum = (r * batch.step_mask).sum(-1)
            losses, ess, ess_frac, margins = [], [], [], []
            for g in usable:
                e, n = (gid == g) & ~is_neg, (gid == g) & is_neg
                lp = None if neg_sampler_logprob is None else neg_sampler_logprob[n[len(experts):].nonzero().squeeze(-1)]
                log_w = log_importance_weights(rsum[n], lp)
                loss, w, k = irl_group_loss(rbar[e], rbar[n], log_w, cfg.stop_gradient_weights, cfg.max_weight_ratio)
                losses.append(loss)
                ess.append(k)
                ess_frac.append(k / int(n.sum()))
                margins.append(float(rbar[e].mean().detach() - rbar[n].mean().detach()))
            total = torch.stack(losses).sum() / max(n_global, 1) if losses else None
            if it == 0:  # metrics before this iteration's update
                rb = rbar.detach()
                metrics = {
                    "prm_loss": dist.all_sum(float(total.detach()) * max(n_global, 1)) / max(n_global, 1) if losses else None,
                    "margin": _mean(margins), "ess": _mean(ess), "ess_frac": _mean(ess_frac),
                    "prm_groups": int(n_global),
                    "expert_rbar": float(rb[~is_neg].mean()) if len(experts) else None,
                    "negative_rbar": float(rb[is_neg].mean()) if len(negatives) else None,
                }
            if train and n_global > 0:
                (total if total is not None else 0.0 * r.sum()).backward()
                _step(prm, opt, cfg.grad_clip)
    return metrics


def prime_prm_step(prm, ref_model, opt, rollouts: Sequence[Rollout], cfg_prime, cfg_prm, pad_id: int,
                   n_global_rollouts: int) -> tuple[torch.Tensor, Batch, dict]:
    """PRIME: implicit PRM r_t = beta * log(pi_phi / pi_ref) trained with BCE on outcome labels. Returns the token
    rewards (computed in the loss's forward pass, before the update, as PRIME does), the batch and metrics."""
    batch = batch_of(rollouts, pad_id)
    with torch.no_grad():
        ref_lp = token_logprobs(ref_model, batch)
    lp = token_logprobs(prm.model, batch)
    logratio = (lp - ref_lp) * batch.step_mask
    labels = torch.tensor([float(r.correct) for r in rollouts])
    loss = prime_ce_loss(logratio.sum(-1), labels, cfg_prime.beta) * len(rollouts) / max(n_global_rollouts, 1)
    if cfg_prm.updates_per_iter > 0 and not cfg_prm.frozen:
        loss.backward()
        _step(prm, opt, cfg_prm.grad_clip)
    rewards = (cfg_prime.beta * logratio).detach()
    rbar = masked_mean(rewards, batch.step_mask)
    ok = labels > 0
    margin = float(rbar[ok].mean() - rbar[~ok].mean()) if ok.any() and (~ok).any() else None
    return rewards, batch, {"prm_loss": dist.all_sum(float(loss.detach())), "margin": margin}


def policy_step(policy, opt, batch: Batch, old_lp: torch.Tensor, advantages: torch.Tensor, cfg,
                global_tokens: float | None = None) -> dict:
    """PPO-clip (eps = cfg.clip) with an entropy bonus and no KL, normalised by the global number of response tokens."""
    mask = batch.resp_mask
    global_tokens = global_tokens if global_tokens is not None else dist.all_sum(float(mask.sum()))
    out = {}
    for epoch in range(cfg.ppo_epochs):
        lp, ent = token_logprobs(policy, batch, with_entropy=True)
        pg = ppo_clip_loss_sum(lp, old_lp, advantages, mask, cfg.clip)
        ent_sum = (ent * mask).sum()
        loss = (pg - cfg.entropy_coef * ent_sum) / max(global_tokens, 1.0)
        loss.backward()
        _step(policy, opt, cfg.grad_clip)
        if epoch == 0:
            out = {"policy_loss": dist.all_sum(float(loss.detach())), "entropy": dist.all_sum(float(ent_sum.detach())) / max(global_tokens, 1)}
    return out


def format_reward(r: Rollout) -> float:
    """TTT's only reward: the solution states a final answer in the expected form."""
    return 1.0 if r.steps and extract_answer(r.steps[-1]) is not None else 0.0


def sequence_advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """RLOO over consecutive blocks of n rollouts."""
    return rloo_advantages(rewards.view(-1, n)).view(-1)


def dense_advantages(prm_token_rewards: torch.Tensor, mask: torch.Tensor, outcome: torch.Tensor, n: int,
                     coef: float) -> torch.Tensor:
    """Dense rePIRL variant: PRIME's combination with the rePIRL PRM's token rewards (scaled by lambda)."""
    return prime_advantages(coef * prm_token_rewards, mask, outcome, n)


def kl_to_init(old_lp: torch.Tensor, init_lp: torch.Tensor, mask: torch.Tensor) -> float:
    return float((kl_k3(old_lp, init_lp) * mask).sum() / mask.sum().clamp(min=1))


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
