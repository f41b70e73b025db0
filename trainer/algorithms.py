"""One PRM update and one policy update, shared by every algorithm (rePIRL, RLOO, PRIME, TTT, offline)."""

from __future__ import annotations

from typing import Sequence

import torch

from repirl.answers import extract_answer
from trainer import distributed as dist
from trainer.losses import (
    effective_sample_size,
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
from trainer.device import compute_of
from trainer.models import Batch, collate, micro_rows, micro_slices, token_logprobs
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
    tokens = batch.step_mask.sum(-1)  # [B] step tokens of each trajectory

    def loss_of(energy):  # the paper's loss over this rank's usable questions, divided by the global count
        # energy: R(tau) = sum of the step tokens' rewards, in the weights and in the loss alike (losses.irl_group_loss)
        losses, ess, ess_raw, ess_frac, w_max = [], [], [], [], []
        for g in usable:
            e, n = (gid == g) & ~is_neg, (gid == g) & is_neg
            lp = None if neg_sampler_logprob is None else neg_sampler_logprob[n[len(experts):].nonzero().squeeze(-1)]
            log_w = log_importance_weights(energy[n], lp)
            scale = 1.0 / float(tokens[(gid == g)].mean().clamp(min=1))  # per token, as a constant of the question
            loss, w, k = irl_group_loss(energy[e], energy[n], log_w, cfg.stop_gradient_weights, cfg.max_weight_ratio,
                                        scale)
            losses.append(loss)
            ess.append(k)
            ess_raw.append(effective_sample_size(torch.softmax(log_w.detach(), -1)))  # before any truncation
            ess_frac.append(k / int(n.sum()))
            w_max.append(float(w.max()) * int(n.sum()))  # largest weight / the mean weight (<= max_weight_ratio)
        total = torch.stack(losses).sum() / max(n_global, 1) if losses else None
        return total, {"ess": ess, "ess_raw": ess_raw, "ess_frac": ess_frac, "w_max_ratio": w_max}

    metrics: dict = {}
    for it in range(max(1, updates)):
        train = updates > 0
        if train and not cfg.stop_gradient_weights:
            # the weights' gradient couples all rollouts of a question: one pass over the whole batch (no
            # micro-batches); the weights come from the update's own pass
            r = prm.token_rewards(batch)
            shown = masked_mean(r, batch.step_mask).detach()
            total, stats = loss_of((r * batch.step_mask).sum(-1))
            value = float(total.detach()) if total is not None else 0.0
            if n_global > 0:
                (total if total is not None else 0.0 * r.sum()).backward()
        else:
            # The weights are a scoring pass (eval mode: no dropout), held constant. Then L = sum_i c_i * R_i with
            # c_i = dL/d R_i (scale * w_i / n_global for a failed rollout, -scale / (its question's experts *
            # n_global) for an expert, 0 for skipped questions), read off the loss by autograd. The update's own pass
            # (the caller's mode: train) then accumulates sum_i c_i * grad R_i micro-batch by micro-batch: the same
            # gradient as one pass over the whole batch, with one micro-batch's activations at a time.
            scored = prm.score(batch)
            shown = masked_mean(scored, batch.step_mask)
            leaf = (scored * batch.step_mask).sum(-1).requires_grad_(True)
            with torch.enable_grad():
                total, stats = loss_of(leaf)
            coef = torch.autograd.grad(total, leaf)[0] if total is not None else torch.zeros_like(shown)
            value = float(total.detach()) if total is not None else 0.0
            if train and n_global > 0:
                dev = compute_of(prm.model).device
                value = torch.zeros((), dtype=torch.float64, device=dev)
                micros = micro_slices(len(items), compute_of(prm.model).micro_batch_size, prm.model)
                for k, sl in enumerate(micros):
                    sl, counts = micro_rows(sl)  # padding: another rank has more rows; row 0 joins, counting nothing
                    mb = batch.rows(sl).to(dev)  # rewards, loss and backward on the model's device
                    c = coef[sl].to(dev) * float(counts)
                    part = (c * (prm.token_rewards(mb, one_forward=True) * mb.step_mask).sum(-1)).sum()
                    dist.set_grad_sync(prm.model, k == len(micros) - 1)
                    part.backward()  # also on a rank without usable questions (zeros): FSDP's collectives pair up
                    value += part.detach()
                value = float(value)
        if it == 0:  # metrics before this iteration's update
            margins = [float(shown[(gid == g) & ~is_neg].mean() - shown[(gid == g) & is_neg].mean()) for g in usable]
            metrics = {
                "prm_loss": dist.all_sum(value * n_global) / n_global if n_global > 0 else None,  # every rank sums
                "margin": _mean(margins), **{k: _mean(v) for k, v in stats.items()},
                "prm_groups": int(n_global),
                "expert_rbar": float(shown[~is_neg].mean()) if len(experts) else None,
                "negative_rbar": float(shown[is_neg].mean()) if len(negatives) else None,
            }
        if train and n_global > 0:
            drift = prm.pull_to_start()  # prm.init_l2 (off: None)
            if drift is not None and it == 0:
                metrics["prm_drift"] = drift  # ||phi - phi_0|| before this iteration's update
            _step(prm, opt, cfg.grad_clip)
    return metrics


def prime_prm_step(prm, ref_model, opt, rollouts: Sequence[Rollout], cfg_prime, cfg_prm, pad_id: int,
                   n_global_rollouts: int) -> tuple[torch.Tensor, Batch, dict]:
    """PRIME: implicit PRM r_t = beta * log(pi_phi / pi_ref) trained with BCE on outcome labels. Returns the token
    rewards, the batch and metrics.

    As PRIME's `update_rm` (veRL recipe/prime/prime_dp_rm.py): the rollouts are split, in batch order, into
    mini-batches of `cfg_prime.mini_batch_size` questions (None: the whole batch) as the policy's are
    (`minibatch_parts`: ceil(questions / size) equal parts), one optimizer step each, each step
    on its mini-batch's mean BCE. `cfg_prime.update` "after" (PRIME's single forward) returns the rewards of the forward
    pass that preceded each step; "before" (PRIME's default, double forward) scores the batch again with the updated
    PRM. Micro-batches: each one's loss is its rows' share of its mini-batch's global mean BCE, so gradients add up
    exactly; every rank splits its rows into the same number of mini-batches (from the global question count)."""
    batch = batch_of(rollouts, pad_id)
    with torch.no_grad():
        ref_lp = token_logprobs(ref_model, batch)
    labels = torch.tensor([float(r.correct) for r in rollouts])
    update = cfg_prm.updates_per_iter > 0 and not cfg_prm.frozen
    dev = compute_of(prm.model).device
    logratio, value = torch.zeros_like(ref_lp), torch.zeros((), dtype=torch.float64, device=dev)
    micro_size = compute_of(prm.model).micro_batch_size

    def logratio_of(sl: slice) -> tuple[torch.Tensor, int]:  # rows sl: log(pi_phi / pi_ref) on response steps
        mb = batch.rows(sl).to(dev)  # log-probs, loss and backward on the model's device
        width = mb.ids.shape[1]
        return (token_logprobs(prm.model, mb, one_forward=True) - ref_lp[sl, :width].to(dev)) * mb.step_mask, width

    questions = round(dist.all_sum(float(len({r.group for r in rollouts}))))  # each rank holds its own questions
    parts = minibatch_parts(torch.arange(len(rollouts)), questions, cfg_prime.mini_batch_size, 0, 0)
    steps = 0
    for part in parts:
        rows_global = dist.all_sum(len(part))
        if rows_global == 0:
            continue
        first = int(part[0]) if len(part) else 0
        micros = micro_slices(len(part), micro_size, prm.model)  # as many on every rank (FSDP); empty ones join
        for k, sl in enumerate(micros):  # with row 0, counting nothing (a rank may have no row in this mini-batch)
            sl, counts = micro_rows(slice(first + sl.start, first + sl.stop))
            with torch.set_grad_enabled(update):
                lr, width = logratio_of(sl)
                loss = prime_ce_loss(lr.sum(-1), labels[sl].to(dev), cfg_prime.beta) * len(lr) / rows_global
                loss = loss * float(counts)
            if update:
                dist.set_grad_sync(prm.model, k == len(micros) - 1)
                loss.backward()
            if counts:
                logratio[sl, :width] = lr.detach().to(logratio.device)
                value += loss.detach() * rows_global / max(n_global_rollouts, 1)
        if update:
            _step(prm, opt, cfg_prm.grad_clip)
            steps += 1
    value = float(value)
    if update and cfg_prime.update == "before":  # PRIME's double forward: the rewards of the updated PRM
        with torch.no_grad():  # columns past a micro-batch's width are padding, already 0 in logratio
            for sl in micro_slices(len(rollouts), micro_size, prm.model):
                sl, counts = micro_rows(sl)  # padding: another rank has more rows, FSDP needs this rank's forward too
                lr, width = logratio_of(sl)
                if counts:
                    logratio[sl, :width] = lr.to(logratio.device)
    rewards = cfg_prime.beta * logratio
    rbar = masked_mean(rewards, batch.step_mask)
    ok = labels > 0
    margin = float(rbar[ok].mean() - rbar[~ok].mean()) if ok.any() and (~ok).any() else None
    return rewards, batch, {"prm_loss": dist.all_sum(value), "margin": margin, "prm_steps": steps}


def minibatch_parts(rows: torch.Tensor, kept_questions: int, questions_per_minibatch: int | None, epoch: int,
                    seed: int) -> list[torch.Tensor]:
    """This rank's kept rows (`rows`: indices into the batch, in batch order) split into the PPO mini-batches of one
    epoch. The number of mini-batches comes from the GLOBAL count of kept questions: ceil(kept / size) (None: one),
    so every rank runs the same number of optimizer steps and FSDP's collectives stay paired; with nothing filtered
    and the recipe's divisibility (dist.shard's round-robin split), mini-batch k of the first epoch holds the same
    global questions as in a single process. From the second epoch on the rows are reshuffled (seeded by `seed` and
    the epoch, the same on every rank), so a second pass does not replay the first one's mini-batches."""
    parts = 1 if not questions_per_minibatch else max(1, -(-kept_questions // questions_per_minibatch))
    if epoch > 0:
        gen = torch.Generator().manual_seed(seed * 1009 + epoch)
        rows = rows[torch.randperm(len(rows), generator=gen)]
    return list(torch.tensor_split(rows, parts))


def policy_step(policy, opt, batch: Batch, old_lp: torch.Tensor, advantages: torch.Tensor, cfg, n: int = 1,
                temperature: float = 1.0, keep: torch.Tensor | None = None, seed: int = 0, sched=None) -> dict:
    """PPO-clip (eps = cfg.clip) with an entropy bonus and no KL, over `cfg.ppo_epochs` passes of mini-batches of
    `cfg.mini_batch_size` questions (n rollouts each): one optimizer step per mini-batch, so from the second step on
    the ratio differs from 1 and the clip acts. `keep` [B] (the filters' rows, 1.0 = kept): the removed rows leave
    the batch BEFORE it is split (veRL's order), so the kept questions fill the mini-batches (masking them in place
    left mini-batches part empty and made fewer, smaller steps). Each mini-batch's loss is normalised by ITS global
    number of response tokens (veRL's token-mean); a mini-batch with no token on any rank is skipped by all ranks.
    Epochs after the first reshuffle the rows (`minibatch_parts`, seeded by `seed`). Log-probs and entropy at the
    rollout `temperature` (old_lp must be computed at the same one). `sched` (the lr warm-up, trainer/schedule.py)
    steps after every optimizer step; `lr` in the result is the first step's learning rate."""
    rows = torch.arange(batch.ids.shape[0]) if keep is None else keep.nonzero().squeeze(-1)
    kept_questions = round(dist.all_sum(float(len(rows))) / n)
    if kept_questions == 0:
        return {}
    compute = compute_of(policy)
    dev = compute.device
    # sums kept on the device (loss x tokens, entropy, clipped tokens) and read once at the end: a float() per
    # micro-batch would wait for the GPU each time
    sums = torch.zeros(3, dtype=torch.float64, device=dev)
    stats = {"tokens": 0.0, "seen": 0.0, "steps": 0}
    lr = opt.param_groups[0]["lr"]
    for epoch in range(cfg.ppo_epochs):
        for part in minibatch_parts(rows, kept_questions, cfg.mini_batch_size, epoch, seed):
            tokens = dist.all_sum(float(batch.resp_mask[part].sum()))
            if tokens <= 0:
                continue
            # gradient accumulation: each micro-batch's loss is its share of the mini-batch's token-mean (divided by
            # the mini-batch's GLOBAL token count), so the summed gradients are the whole mini-batch's, exactly
            micros = micro_slices(len(part), compute.micro_batch_size, policy)  # as many on every rank (FSDP)
            for k, ms in enumerate(micros):
                idx = part[ms]
                empty = len(idx) == 0  # other ranks have rows here: this one joins with a row that counts for nothing
                host = batch.select(idx if not empty else torch.zeros(1, dtype=torch.long))  # cut to its longest row
                if empty:
                    host.resp_mask = torch.zeros_like(host.resp_mask)
                    idx = torch.zeros(1, dtype=torch.long)
                width = host.ids.shape[1]
                # the micro-batch and its targets on the model's device: log-probs, loss and backward stay there
                mb = host.to(dev)
                old = old_lp[idx, :width].to(dev, non_blocking=True)
                adv = (advantages[idx] if advantages.dim() == 1 else advantages[idx, :width]).to(dev, non_blocking=True)
                lp, ent = token_logprobs(policy, mb, with_entropy=True, temperature=temperature, one_forward=True)
                pg = ppo_clip_loss_sum(lp, old, adv, mb.resp_mask, cfg.clip)
                ent_sum = (ent * mb.resp_mask).sum()
                loss = (pg - cfg.entropy_coef * ent_sum) / tokens
                dist.set_grad_sync(policy, k == len(micros) - 1)  # FSDP: reduce once per mini-batch, not per micro
                loss.backward()
                with torch.no_grad():
                    sums[2] += ppo_clipped_tokens(lp, old, adv, mb.resp_mask, cfg.clip)
                    if epoch == 0:  # the first pass: every token once, weighted by its mini-batch's share
                        sums[0] += loss * tokens
                        sums[1] += ent_sum
                stats["seen"] += float(host.resp_mask.sum())
                if epoch == 0:
                    stats["tokens"] += float(host.resp_mask.sum())
            _step(policy, opt, cfg.grad_clip)
            if sched is not None:
                sched.step()
            stats["steps"] += 1
    if not stats["steps"]:
        return {}
    loss_sum, ent_sum, clipped = sums.tolist()
    total = dist.all_sum(stats["tokens"])
    return {"policy_loss": dist.all_sum(loss_sum) / max(total, 1.0),
            "entropy": dist.all_sum(ent_sum) / max(total, 1.0),
            "clip_frac": dist.all_sum(clipped) / max(dist.all_sum(stats["seen"]), 1.0),
            "policy_steps": stats["steps"], "lr": lr}


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
