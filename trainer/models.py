"""Policy and PRM models for training: loading, batched token log-probs, the two PRM parameterisations, export.

Token quantities are aligned with input positions: the value at position t concerns token ids[t] (log-probs use the
logits of position t-1); position 0 gets 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from repirl.artifacts import PolicyConfig, PRMConfig, Provenance, load_policy_config, save_model_folder
from trainer import distributed as dist
from trainer.device import compute_of


@dataclass
class Batch:
    ids: torch.Tensor  # [B, T] right-padded
    attn: torch.Tensor  # [B, T]
    resp_mask: torch.Tensor  # [B, T] float: response tokens (steps + EOS) -> policy loss
    step_mask: torch.Tensor  # [B, T] float: step tokens (no EOS) -> PRM rewards

    def rows(self, sl: slice) -> "Batch":
        """Rows `sl`, cut to the longest of them (right padding: the columns after it are padding in every row)."""
        width = max(int(self.attn[sl].sum(-1).max()), 1) if self.attn[sl].numel() else 1
        return Batch(self.ids[sl, :width], self.attn[sl, :width], self.resp_mask[sl, :width],
                     self.step_mask[sl, :width])

    def to(self, device) -> "Batch":
        """The batch on `device` (the update's micro-batches go to the model's device once, so the log-probs, the
        losses and their backward all stay there; non_blocking: the host copy overlaps the GPU's work)."""
        if self.ids.device == torch.device(device):
            return self
        return Batch(*(x.to(device, non_blocking=True) for x in (self.ids, self.attn, self.resp_mask, self.step_mask)))

    def select(self, index: torch.Tensor) -> "Batch":
        """Rows `index` (in that order), cut to the longest of them."""
        b = Batch(self.ids[index], self.attn[index], self.resp_mask[index], self.step_mask[index])
        return b.rows(slice(0, len(index)))


def collate(seqs: Sequence[Sequence[int]], prompt_lens: Sequence[int], step_ends: Sequence[int], pad_id: int) -> Batch:
    """step_ends[i]: end of the step tokens (the response may carry one more token, the EOS)."""
    width = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    attn = torch.zeros((B, width), dtype=torch.long)
    resp = torch.zeros((B, width))
    step = torch.zeros((B, width))
    for i, (s, p, e) in enumerate(zip(seqs, prompt_lens, step_ends)):
        ids[i, : len(s)] = torch.tensor(list(s))
        attn[i, : len(s)] = 1
        resp[i, p : len(s)] = 1
        step[i, p:e] = 1
    return Batch(ids, attn, resp, step)


def micro_slices(rows: int, size: int | None, model=None) -> list[slice]:
    """Consecutive row ranges of at most `size` rows (None: one range). With `model` sharded by FSDP over several
    ranks, the list is padded with empty ranges (slice(rows, rows)) to the largest count on any rank: FSDP2
    all-gathers the weights in every forward, so every rank must run as many forwards and backwards as the others,
    and ranks hold unequal shares (failed rollouts, filtered questions). The caller runs an empty range as one row
    whose result counts for nothing."""
    # no micro-batches configured (size None, the same on every rank): one forward everywhere, nothing to agree on
    padded = size is not None and model is not None and dist.world() > 1 and dist.is_sharded(model)
    size = size or max(rows, 1)
    slices = [slice(i, min(i + size, rows)) for i in range(0, rows, size)] or [slice(0, 0)]
    if padded:
        slices += [slice(rows, rows)] * (int(dist.all_max(len(slices))) - len(slices))
    return slices


def micro_rows(sl: slice) -> tuple[slice, bool]:
    """The rows a range from micro_slices runs, and whether they count: an empty range (padding for another rank's
    extra micro-batch) runs row 0, whose result the caller weighs by 0."""
    return (sl, True) if sl.start < sl.stop else (slice(0, 1), False)


def map_micro_batches(batch: Batch, size: int | None, fn, model=None) -> tuple[torch.Tensor, ...]:
    """fn(sub-batch) -> tuple of [b, t] tensors, per micro-batch of `size` rows (each cut to its longest row), put
    back together as [B, T] tensors (zeros past each row's end). Memory: one micro-batch's activations at a time
    when no gradient is kept; training loops call this one micro-batch at a time and backward each. With several
    micro-batches the rows are grouped by length (longest first), so each micro-batch pads to rows of its own length
    rather than to the batch's longest: a row's result does not depend on the rows beside it. `model` (the module fn
    runs): when FSDP-sharded, as many forwards on every rank (micro_slices); an extra one runs the first row and
    enters the result times 0, so a backward through the result also reaches it (FSDP2's hooks pair up)."""
    rows, width = batch.ids.shape
    slices = micro_slices(rows, size, model)
    one = slices[0].stop == rows  # the whole batch in one forward: its rows in their own order
    order = torch.arange(rows) if one else torch.argsort(batch.attn.sum(-1), descending=True, stable=True)
    parts, extra = [], []
    for sl in slices:  # padding: another rank runs more micro-batches, and FSDP needs this rank's forward too
        sl, counts = micro_rows(sl)
        (parts if counts else extra).append(fn(batch.rows(sl) if one else batch.select(order[sl])))
    if one:
        pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
        result = [pad(x) for x in parts[0]]
    else:
        result = []
        for k in range(len(parts[0])):
            like = parts[0][k]
            full = torch.zeros((rows, width), dtype=like.dtype, device=like.device)
            start = 0
            for p in parts:
                full[order[start : start + p[k].shape[0]].to(like.device), : p[k].shape[1]] = p[k]
                start += p[k].shape[0]
            result.append(full)
    if extra:
        result[0] = result[0] + 0.0 * sum(x[0].sum() for x in extra)
    return tuple(result)


def token_logprobs(model, batch: Batch, with_entropy: bool = False, temperature: float = 1.0,
                   one_forward: bool = False):
    """log pi(ids[t] | ids[<t]) at every position (0 at t=0), and optionally each position's predictive entropy
    (of the distribution that produced ids[t]).

    `temperature`: the distribution is softmax(logits / T), the one the sampler drew from at temperature T (as veRL
    divides the logits by the rollout temperature). Every policy log-prob in the trainer (PPO ratio, entropy, the
    importance-weight denominator pi_theta(tau), old log-probs, the frozen initial policy's KL) uses the rollout
    temperature; a PRM's own log-prob reward is defined at T=1.

    How it computes comes from the model's trainer.device.Compute: on its device, in micro-batches of rows, under
    bf16 autocast if asked, and with `chunk_tokens` the vocabulary projection runs per chunk of token positions.
    The result is float32, on the batch's device.

    `one_forward`: `batch` is a training loop's micro-batch, which the loop already cut to the micro-batch size and
    ran as many of on every rank: one forward, without asking the other ranks (under FSDP with a micro-batch size,
    each call otherwise agrees on a count with a collective: one per micro-batch, always answering 1 here)."""
    c = compute_of(model)
    out = map_micro_batches(batch, None if one_forward else c.micro_batch_size,
                            lambda mb: _token_logprobs(model, mb, c, temperature, with_entropy), model)
    return (out[0], out[1]) if with_entropy else out[0]


def _token_logprobs(model, mb: Batch, c, temperature: float, with_entropy: bool):
    ids, attn = mb.ids.to(c.device), mb.attn.to(c.device)
    if c.chunk_tokens is None:
        with c.autocast():
            logits = model(input_ids=ids, attention_mask=attn).logits
        lp, ent = _logprobs_of_logits(logits[:, :-1], ids[:, 1:], temperature, with_entropy)
    else:
        lp, ent = _chunked_logprobs(model, ids, attn, c, temperature, with_entropy)
    zero = torch.zeros_like(lp[:, :1])
    return torch.cat([zero, lp], 1).to(mb.ids.device), torch.cat([zero, ent], 1).to(mb.ids.device)


def _logprobs_of_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool):
    """Log-prob of `targets` and the entropy (zeros unless asked) under softmax(logits / T), in float32 whatever the
    logits' dtype."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, targets[..., None]).squeeze(-1)
    return lp, (-(logp.exp() * logp).sum(-1) if with_entropy else torch.zeros_like(lp))


def _chunked_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, c, temperature: float, with_entropy: bool):
    """The final hidden states once (HF's `logits_to_keep=1`: the full forward computes logits for the last position
    only), then the fused chunked lm_head + float32 log-softmax of trainer/logprobs.py over the real (attended)
    positions only, `c.chunk_tokens` rows at a time, so no [batch, tokens, vocab] tensor exists, in forward or in
    backward. The hidden states come from the model's own outputs (not a hook), so FSDP's pre-backward hooks see them."""
    from trainer.logprobs import linear_logprobs

    with c.autocast():
        out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True, logits_to_keep=1)
    h = out.hidden_states[-1][:, :-1]  # the last layer after the final norm: what lm_head reads
    del out
    head = model.get_output_embeddings()
    B, T1 = h.shape[:2]
    keep = attn[:, 1:].reshape(-1).nonzero().squeeze(-1)  # padding positions are never projected (they stay 0)
    zeros = torch.zeros(B * T1, dtype=torch.float32, device=ids.device)
    if keep.numel() == 0:
        return zeros.view(B, T1), zeros.view(B, T1)
    flat_h, flat_t = h.reshape(B * T1, -1)[keep], ids[:, 1:].reshape(-1)[keep]
    if head.bias is not None:  # no lm_head of the supported models has one; the fused op has no bias term
        raise ValueError(f"logprob_chunk_tokens: {type(model).__name__}'s lm_head has a bias (not supported)")
    dtype = torch.bfloat16 if c.autocast_bf16 else head.weight.dtype
    lp, ent = linear_logprobs(flat_h, head.weight, flat_t, temperature, c.chunk_tokens, with_entropy, dtype)
    return zeros.index_put((keep,), lp).view(B, T1), zeros.index_put((keep,), ent).view(B, T1)


def build_tiny_policy(out_dir: Path, seed: int, layers: int = 2) -> Path:
    """A random tiny Qwen2 policy (byte-level tokenizer), saved with policy.json: for tests and smoke runs."""
    from transformers import Qwen2ForCausalLM

    from repirl.tiny import build_tokenizer, tiny_qwen2_config

    torch.manual_seed(seed)
    tok = build_tokenizer()
    model = Qwen2ForCausalLM(tiny_qwen2_config(len(tok), num_layers=layers, intermediate_size=256,
                                                eos_token_id=tok.eos_token_id))
    cfg = PolicyConfig(provenance=Provenance(algorithm="init", base_model="tiny-random"))
    return save_model_folder(model, tok, out_dir, policy_config=cfg)


def load_causal_lm(folder: str | Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)


class RewardModel(torch.nn.Module):
    """A token-reward PRM.

    logprob: r_t = beta * log pi_phi(a_t | s_t) with pi_phi a causal LM initialised from the policy (its reward starts
             as the policy's own likelihood, the baseline a PRM must beat).
    head:    r_t = bound * tanh(w . h_t / bound), the policy's body plus a fresh scalar head
             (`*ForTokenClassification`, num_labels=1), as in the paper.
    """

    def __init__(self, parameterization: str, init_dir: str | Path, beta: float = 1.0, bound: float | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModelForTokenClassification

        self.parameterization, self.beta, self.bound = parameterization, beta, bound
        if parameterization == "logprob":
            self.model = load_causal_lm(init_dir)
        elif parameterization == "head":
            config = AutoConfig.from_pretrained(init_dir, num_labels=1)
            self.model = AutoModelForTokenClassification.from_pretrained(init_dir, config=config, dtype=torch.float32)
        else:
            raise ValueError(f"unknown PRM parameterization {parameterization!r}")

    def remember_start(self, coef: float) -> None:
        """Keep a copy of the current parameters as phi_0 for `prm.init_l2` (a no-op at 0: a 7B PRM's copy costs its
        fp32 size). Called once the model is placed (sharded: the copies are shards) and BEFORE a resume loads later
        weights, so phi_0 is the run's start."""
        self.start = [p.detach().clone() for p in self.parameters()] if coef > 0 else None
        self.init_l2 = coef

    @torch.no_grad()
    def pull_to_start(self) -> float | None:
        """Add the gradient of (init_l2 / 2) ||phi - phi_0||^2, init_l2 * (phi - phi_0), to the parameters' gradients
        (before the clip and the step). Returns ||phi - phi_0|| (over every rank's shards), or None when off."""
        if getattr(self, "start", None) is None:
            return None
        from trainer import distributed as dist

        local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # FSDP2: this rank's shard
        sq = 0.0
        for p, p0 in zip(self.parameters(), self.start):
            diff = p.detach() - p0
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(diff, alpha=self.init_l2)
            sq += float(local(diff).double().pow(2).sum())
        return dist.all_sum(sq) ** 0.5

    def token_rewards(self, batch: Batch, one_forward: bool = False) -> torch.Tensor:
        """`one_forward`: a training loop's micro-batch (token_logprobs)."""
        if self.parameterization == "logprob":
            return self.beta * token_logprobs(self.model, batch, one_forward=one_forward)
        c = compute_of(self.model)
        size = None if one_forward else c.micro_batch_size
        raw = map_micro_batches(batch, size, lambda mb: (self._head(mb, c),), self.model)[0]
        return raw if self.bound is None else self.bound * torch.tanh(raw / self.bound)

    def _head(self, mb: Batch, c) -> torch.Tensor:
        with c.autocast():
            raw = self.model(input_ids=mb.ids.to(c.device), attention_mask=mb.attn.to(c.device)).logits[..., 0]
        return raw.float().to(mb.ids.device)

    @torch.no_grad()
    def score(self, batch: Batch) -> torch.Tensor:
        """token_rewards for scoring (the policy's reward, the importance weights): always in eval mode, so dropout
        (0.1 in HF's token-classification head) never makes two passes over one batch differ; the mode is restored.
        Only the PRM's own update runs in train mode."""
        was_training = self.training
        self.eval()
        try:
            return self.token_rewards(batch)
        finally:
            self.train(was_training)

    def export(self, out_dir: Path, tokenizer, policy_cfg: PolicyConfig, provenance: Provenance, model=None) -> Path:
        """head -> format "token-reward" with prm.json `token_bound` = the training-time bound, so the served token
        rewards are the trained ones, bound * tanh(head / bound) (issue 24, cause 5: exported as the raw head, the
        served mean over a step weighed tokens the training had saturated: same per-token order, not the same mean).
        The folder holds the raw head (what vLLM's token_classify returns); the scorer applies the bound.

        logprob -> format "implicit" (PRIME's beta * log(pi_phi / pi_ref)) with a *uniform* reference in `reference/`:
        a 1-layer copy of the architecture with all weights zero, whose logits are exactly 0, so log pi_ref = -log V
        and the served token reward is beta * (log pi_phi(a_t | s_t) + log V): the trained reward shifted by a
        constant, same ranking, and loadable by the existing implicit scorers without a new prm.json format.

        `model`: what to save in place of self.model; a sharded run passes trainer.distributed.saveable(self.model),
        which writes the gathered full weights."""
        model = self.model if model is None else model
        common = dict(step_separator=policy_cfg.step_separator, prompt_template=policy_cfg.prompt_template,
                      default_aggregation="mean-token", provenance=provenance)
        if self.parameterization == "head":
            return save_model_folder(model, tokenizer, out_dir,
                                     prm_config=PRMConfig(format="token-reward", token_bound=self.bound, **common))
        from repirl.artifacts import save_implicit_prm

        # step reward = the MEAN of the step's token rewards (the paper's rbar, per step), not PRIME's sum: a sum
        # tracks step length. First-error F1 on held-out solutions: 0.90 / 0.72 with mean vs 0.54 / 0.36 with sum
        # (corrupted references / policy samples; docs/results.md section 2)
        return save_implicit_prm(model, uniform_reference(model.config), tokenizer, out_dir,
                                 PRMConfig(format="implicit", beta=self.beta, step_reward="mean", **common))


def uniform_reference(config):
    """A causal LM with the same vocabulary whose every next-token distribution is exactly uniform (zero weights)."""
    import copy

    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(cfg, key):
            setattr(cfg, key, 1)
    if hasattr(cfg, "layer_types") and cfg.layer_types:
        cfg.layer_types = cfg.layer_types[:1]
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def policy_config_of(folder: str | Path) -> PolicyConfig:
    return load_policy_config(folder)
