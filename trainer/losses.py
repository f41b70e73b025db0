"""The objectives, as pure tensor functions (tested against hand-computed values in tests/trainer/test_losses.py).

Conventions: a "group" is the n rollouts of one question. Token tensors are [batch, time] with a float mask that is 1
on the tokens a quantity covers. Sums that span a distributed batch take an explicit `denominator` so that each rank
can compute its share of the global mean (the gradients then add up exactly to the single-process gradient).
"""

from __future__ import annotations


import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


# ---------------------------------------------------------------------------------------------------------- rePIRL PRM
def log_importance_weights(sum_token_rewards: torch.Tensor, sampler_logprob: torch.Tensor | None) -> torch.Tensor:
    """log w_i = sum_t r(tau_i) - log pi_theta(tau_i). Uniform (all zeros) when no sampler log-probs are known."""
    if sampler_logprob is None:
        return torch.zeros_like(sum_token_rewards)
    return sum_token_rewards - sampler_logprob


def truncate_weights(w: torch.Tensor, cap: float) -> torch.Tensor:
    """Normalised weights with no entry above `cap`, still summing to 1 (truncated importance sampling). Clipping once
    and renormalising pushed the clipped entries back over the cap ([0.25, 0.75] at cap 0.6 gave [0.29, 0.71]); here
    entries over the cap are fixed at it and the others rescaled to fill the remaining mass, repeated until none is
    over (at most n rounds; the others keep their proportions). Needs cap * n >= 1 (the config's ratio >= 1)."""
    capped = torch.zeros_like(w, dtype=torch.bool)
    out = w
    for _ in range(w.numel()):
        over = (out > cap) & ~capped
        if not over.any():
            break
        capped = capped | over
        rest = 1.0 - cap * float(capped.sum())
        free_mass = (w * ~capped).sum().clamp(min=torch.finfo(w.dtype).tiny)
        out = torch.where(capped, torch.full_like(w, cap), w * (rest / free_mass))
    return out


def normalized_weights(log_w: torch.Tensor, max_weight_ratio: float | None = None) -> torch.Tensor:
    """Self-normalised weights softmax(log w), optionally truncated at `max_weight_ratio` x the mean weight (1 / n):
    `truncate_weights`, so the cap holds after renormalisation and bounds the variance a single outlier brings."""
    w = torch.softmax(log_w, dim=-1)
    if max_weight_ratio is not None and w.numel() > 0:
        w = truncate_weights(w, max_weight_ratio / w.numel())
    return w


def effective_sample_size(w: torch.Tensor) -> float:
    """Kish's ESS (sum w)^2 / sum w^2 of (normalised) weights: n for uniform weights, 1 for a single spike."""
    if w.numel() == 0:
        return 0.0
    return float(w.sum() ** 2 / (w**2).sum())


def irl_group_loss(expert_energy: torch.Tensor, negative_energy: torch.Tensor, negative_log_w: torch.Tensor,
                   stop_gradient_weights: bool = True, max_weight_ratio: float | None = None, scale: float = 1.0):
    """The paper's max-ent IRL loss for one question, with ONE trajectory energy R(tau) = sum_t r_t in the weights and
    in the loss (issue 24, cause 3):

        L = scale * (sum_i w_i R(tau_i) / sum_i w_i  -  mean_experts R(tau)),   w_i = exp(R(tau_i)) / pi_theta(tau_i)

    The derivation: J(phi) = mean_D R - log z(phi), z = integral exp(R(tau)) dtau = E_{pi_theta}[exp(R) / pi_theta], so
    grad J = mean_D grad R - E_w grad R with exactly these weights. (The loss used the mean token reward rbar while the
    weights used the sum: a gradient of no objective, weighting by exp(sum) what it then moved by the mean.) `scale`
    is a positive constant per question (the trainer passes 1 / the question's mean token count): it keeps the loss
    per token, as the mean was, without changing the gradient's direction within the question.
    Returns (loss, normalised weights, ESS)."""
    log_w = negative_log_w.detach() if stop_gradient_weights else negative_log_w
    w = normalized_weights(log_w, max_weight_ratio)
    loss = scale * ((w * negative_energy).sum() - expert_energy.mean())
    return loss, w.detach(), effective_sample_size(w.detach())


# -------------------------------------------------------------------------------------------------------- policy (RL)
def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline over the last dim (n rollouts of one question): A_i = R_i - mean_{j != i} R_j."""
    n = rewards.shape[-1]
    if n < 2:
        return torch.zeros_like(rewards)
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (n - 1)


def ppo_clip_loss_sum(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      clip: float = 0.2) -> torch.Tensor:
    """Sum over masked tokens of -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A); A is [B] or [B, T]."""
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(new_logp)
    ratio = torch.exp(new_logp - old_logp)
    per_token = -torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    return (per_token * mask).sum()


def ppo_clipped_tokens(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                       clip: float = 0.2) -> torch.Tensor:
    """Number of masked tokens where the clipped term is the active one (veRL's pg_clipfrac numerator:
    -A * clip(ratio) > -A * ratio): there the token's gradient is zero."""
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(new_logp)
    ratio = torch.exp(new_logp - old_logp)
    clipped = (-advantages * torch.clamp(ratio, 1 - clip, 1 + clip)) > (-advantages * ratio)
    return (clipped.float() * mask).sum()


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution, [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per sampled token (unbiased, always >= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


# -------------------------------------------------------------------------------------------------------------- PRIME
def prime_ce_loss(logratio_sum: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """PRIME's implicit PRM loss: BCE(sigmoid(beta * sum_t log(pi_phi/pi_ref)), outcome label), mean over rollouts."""
    return torch.nn.functional.binary_cross_entropy_with_logits(beta * logratio_sum, labels.float())


def prime_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, outcome: torch.Tensor, n: int) -> torch.Tensor:
    """PRIME's combination (their `compute_rloo_advantage_return`): leave-one-out on the process rewards
    (r_t * n/(n-1) - sum_j mean_t r_j / (n-1)) and on the outcome (placed on the last token), then the return-to-go
    (gamma = 1) of the sum. Rows are grouped in consecutive blocks of n. Returns token advantages [B, T]."""
    B, T = token_rewards.shape
    groups = B // n
    r = token_rewards * mask
    per_seq_mean = masked_mean(token_rewards, mask)  # [B]
    proc = torch.zeros_like(r)
    for g in range(groups):
        sl = slice(g * n, (g + 1) * n)
        baseline = per_seq_mean[sl].sum() / (n - 1)
        proc[sl] = (r[sl] * n / (n - 1) - baseline) * mask[sl]
    out_adv = rloo_advantages(outcome.view(groups, n).float()).view(B)
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)
    total = proc + last.float() * out_adv[:, None]
    return total.flip(-1).cumsum(-1).flip(-1) * mask


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, all_sum=float) -> torch.Tensor:
    """veRL's `verl_F.masked_whiten` (shift_mean=True), which PRIME applies to its RLOO returns: (x - mean) /
    sqrt(var + 1e-8) over the masked entries, var unbiased (Bessel's n / (n - 1)). `all_sum` turns a local sum into
    the global one (trainer.distributed.all_sum), so every rank whitens with the whole batch's mean and variance.
    Entries outside the mask are 0."""
    n = all_sum(float(mask.sum()))
    if n < 2:
        return values * mask
    mean = all_sum(float((values * mask).sum())) / n
    var = all_sum(float((((values - mean) ** 2) * mask).sum())) / n * n / (n - 1)
    return (values - mean) * (var + 1e-8) ** -0.5 * mask
