"""Token log-probs (and entropy) straight from the final hidden states: a fused, chunked lm_head + log-softmax with a
hand-written backward, so no [tokens, vocab] tensor outlives one chunk and autograd records one node, not the ~8
elementwise nodes (and their saved [chunk, vocab] float32 buffers) of the plain expression.

    lp[i]  = log softmax(W h_i / T)[t_i]                  (float32)
    ent[i] = -sum_v p_iv log p_iv,  p_i = softmax(W h_i / T)

Forward, per chunk of rows: z = (h W^T).float() / T, lse = logsumexp(z), lp = z[t] - lse, ent = lse - sum p z.
Saved for backward: h, W, the targets, lse and ent ([N] floats), nothing of vocabulary size.
Backward, per chunk, recomputing z (one more lm_head matmul, as the checkpointed chunks did before):

    d lp  / d z_v = 1[v = t] - p_v
    d ent / d z_v = -p_v (log p_v + ent)

so dL/dz = g_lp (onehot - p) - g_ent p (log p + ent), divided by T, then grad_h = dz W and grad_W = dz^T h (bf16
matmuls on a GPU under `dtype`, accumulated into a float32 grad_W). Compared with torch's own autograd of the same
expression in tests/trainer/test_logprobs.py (values, entropy and both gradients, with and without temperature).

Why not liger-kernel's fused linear cross-entropy: it returns the loss, and fuses the backward into the forward by
assuming the loss is the final output scaled by one number; a PPO loss needs each token's log-prob first (the ratio
and the clip decide the token's gradient), and no liger op returns per-token entropy with a gradient. The device
benchmark (trainer/gpu_bench.py, `logprob-kernels`) times both on the same shapes.
"""

from __future__ import annotations

import torch


class _FusedLinearLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, temperature: float, chunk: int, with_entropy: bool, dtype):
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            n = h.shape[0]
            lp = torch.empty(n, dtype=torch.float32, device=h.device)
            lse = torch.empty_like(lp)
            ent = torch.zeros_like(lp)
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                z = _scaled_logits(h[s:e].to(dtype), w, temperature)
                lse_c = torch.logsumexp(z, dim=-1)
                lp[s:e] = z.gather(-1, targets[s:e, None]).squeeze(-1) - lse_c
                lse[s:e] = lse_c
                if with_entropy:
                    z.sub_(lse_c[:, None])  # log p, in place
                    ent[s:e] = -(z.exp() * z).sum(-1)
                del z
        ctx.save_for_backward(h, weight, targets, lse, ent)
        ctx.temperature, ctx.chunk, ctx.with_entropy, ctx.dtype = temperature, chunk, with_entropy, dtype
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        h, weight, targets, lse, ent = ctx.saved_tensors
        t, dtype = ctx.temperature, ctx.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            use_ent = ctx.with_entropy and g_ent is not None
            if g_lp is None:
                g_lp = torch.zeros_like(lse)
            for s in range(0, h.shape[0], ctx.chunk):
                e = min(s + ctx.chunk, h.shape[0])
                hc = h[s:e].to(dtype)
                logp = _scaled_logits(hc, w, t).sub_(lse[s:e, None])  # log p, recomputed
                p = logp.exp()
                if use_ent:  # dz = -p * (g_lp + g_ent * (log p + ent)), then + g_lp at the target
                    dz = logp.add_(ent[s:e, None]).mul_(g_ent[s:e, None]).add_(g_lp[s:e, None]).mul_(p).neg_()
                else:
                    dz = p.mul_(g_lp[s:e, None]).neg_()
                dz.scatter_add_(-1, targets[s:e, None], g_lp[s:e, None])
                if t != 1.0:
                    dz.div_(t)
                dz = dz.to(dtype)
                if need_h:
                    grad_h[s:e] = (dz @ w).to(h.dtype)
                if need_w:
                    grad_w += (dz.t() @ hc).float()
                del logp, p, dz
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None, None


def _scaled_logits(h: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
    z = (h @ w.t()).float()
    return z.div_(temperature) if temperature != 1.0 else z


def linear_logprobs(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                    chunk: int = 1024, with_entropy: bool = False, dtype: torch.dtype | None = None):
    """(lp, ent) of `targets` [N] under softmax(h W^T / T), h [N, H], W [V, H]; both float32 [N] (ent zeros unless
    asked). `dtype`: the matmuls' dtype (bf16 under the trainer's autocast; default: W's)."""
    dtype = dtype or weight.dtype
    return _FusedLinearLogprob.apply(h, weight, targets, float(temperature), int(chunk), bool(with_entropy), dtype)
