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
    ppo_clipped_tokens,
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
        # The weights are a scoring pass (eval mode: no dropout), the loss's rewards the update's own pass (the mode
        # the caller set: train in the Trainer). Without stop-gradient the weights must come from the update's pass.
        scored = prm.score(batch) if (not train or cfg.stop_gradient_weights) else None
        with torch.set_grad_enabled(train):
            r = prm.token_rewards(batch) if train else scored
            rbar = masked_mean(r, batch.step_mask)
            rsum = ((scored if scored is not None else r) * batch.step_mask).sum(-1)
            shown = masked_mean(scored, batch.step_mask) if scored is not None else rbar.detach()  # for the metrics
            losses, ess, ess_frac, margins = [], [], [], []
            for g in usable:
                e, n = (gid == g) & ~is_neg, (gid == g) & is_neg
                lp = None if neg_sampler_logprob is None else neg_sampler_logprob[n[len(experts):].nonzero().squeeze(-1)]
                log_w = log_importance_weights(rsum[n], lp)
                loss, w, k = irl_group_loss(rbar[e], rbar[n], log_w, cfg.stop_gradient_weights, cfg.max_weight_ratio)
                losses.append(loss)
                ess.append(k)
                ess_frac.append(k / int(n.sum()))
                margins.append(float(shown[e].mean() - shown[n].mean()))
            total = torch.stack(losses).sum() / max(n_global, 1) if losses else None
            if it == 0:  # metrics before this iteration's update
                rb = shown
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


def minibatch_rows(rows: int, n: int, questions_per_minibatch: int | None) -> list[slice]:
    """This rank's rows (consecutive groups of n rollouts) split into mini-batches of `questions_per_minibatch`
    questions (the GLOBAL mini-batch size divided by the number of ranks; None: one mini-batch). Every rank gets the
    same number of mini-batches (equal question shards), so FSDP's collectives stay paired; with dist.shard's
    round-robin split, mini-batch k holds the same global questions as in a single process."""
    groups = rows // n
    per = groups if not questions_per_minibatch else questions_per_minibatch
    return [slice(g * n, min(g + per, groups) * n) for g in range(0, groups, per)] or [slice(0, rows)]


def policy_step(policy, opt, batch: Batch, old_lp: torch.Tensor, advantages: torch.Tensor, cfg, n: int = 1,
                temperature: float = 1.0) -> dict:
    """PPO-clip (eps = cfg.clip) with an entropy bonus and no KL, over `cfg.ppo_epochs` passes of mini-batches of
    `cfg.mini_batch_size` questions (n rollouts each): one optimizer step per mini-batch, so from the second step on
    the ratio differs from 1 and the clip acts. Each mini-batch's loss is normalised by ITS global number of response
    tokens (veRL's token-mean per mini-batch); a mini-batch with no token on any rank is skipped by all ranks.
    Log-probs and entropy at the rollout `temperature` (old_lp must be computed at the same one)."""
    per = None
    if cfg.mini_batch_size is not None:
        per = max(1, cfg.mini_batch_size // dist.world())
    parts = minibatch_rows(batch.ids.shape[0], n, per)
    stats = {"loss": 0.0, "ent": 0.0, "tokens": 0.0, "clipped": 0.0, "seen": 0.0, "steps": 0}
    for epoch in range(cfg.ppo_epochs):
        for sl in parts:
            mb = Batch(batch.ids[sl], batch.attn[sl], batch.resp_mask[sl], batch.step_mask[sl])
            tokens = dist.all_sum(float(mb.resp_mask.sum()))
            if tokens <= 0:
                continue
            lp, ent = token_logprobs(policy, mb, with_entropy=True, temperature=temperature)
            pg = ppo_clip_loss_sum(lp, old_lp[sl], advantages[sl], mb.resp_mask, cfg.clip)
            ent_sum = (ent * mb.resp_mask).sum()
            loss = (pg - cfg.entropy_coef * ent_sum) / tokens
            loss.backward()
            _step(policy, opt, cfg.grad_clip)
            stats["steps"] += 1
            stats["clipped"] += float(ppo_clipped_tokens(lp.detach(), old_lp[sl], advantages[sl], mb.resp_mask,
                                                         cfg.clip))
            stats["seen"] += float(mb.resp_mask.sum())
            if epoch == 0:  # the first pass: every token once, weighted by its mini-batch's share
                stats["loss"] += float(loss.detach()) * tokens
                stats["ent"] += float(ent_sum.detach())
                stats["tokens"] += float(mb.resp_mask.sum())
    if not stats["steps"]:
        return {}
    total = dist.all_sum(stats["tokens"])
    return {"policy_loss": dist.all_sum(stats["loss"]) / max(total, 1.0),
            "entropy": dist.all_sum(stats["ent"]) / max(total, 1.0),
            "clip_frac": dist.all_sum(stats["clipped"]) / max(dist.all_sum(stats["seen"]), 1.0),
            "policy_steps": stats["steps"]}


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
