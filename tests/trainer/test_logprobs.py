"""trainer/logprobs.py's fused chunked lm_head + log-softmax against torch's own autograd of the plain expression
(full [N, V] logits, log_softmax, gather, entropy), in float64 and float32, with and without temperature and entropy,
chunk sizes that do and do not divide N; and in bf16 against the float64 reference within bf16's error."""

import pytest
import torch

from trainer.logprobs import linear_logprobs


def _inputs(n=37, hidden=24, vocab=101, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=dtype)
    w = torch.randn(vocab, hidden, generator=g, dtype=dtype) / hidden**0.5 * 3
    t = torch.randint(0, vocab, (n,), generator=g)
    g_lp = torch.randn(n, generator=g, dtype=dtype)
    g_ent = torch.randn(n, generator=g, dtype=dtype)
    return h, w, t, g_lp, g_ent


def _reference(h, w, t, temperature, with_entropy):
    logp = torch.log_softmax((h @ w.t()) / temperature, -1)
    lp = logp.gather(-1, t[:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1) if with_entropy else torch.zeros_like(lp)
    return lp, ent


def _grads(fn, h, w, g_lp, g_ent, with_entropy):
    h, w = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    lp, ent = fn(h, w)
    loss = (lp * g_lp).sum() + ((ent * g_ent).sum() if with_entropy else 0)
    loss.backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("chunk", [5, 16, 1000])
def test_values_and_gradients_equal_plain_autograd(temperature, with_entropy, chunk):
    h, w, t, g_lp, g_ent = _inputs()
    want = _grads(lambda a, b: _reference(a, b, t, temperature, with_entropy), h, w, g_lp, g_ent, with_entropy)
    got = _grads(lambda a, b: linear_logprobs(a, b, t, temperature, chunk, with_entropy, torch.float64),
                 h, w, g_lp, g_ent, with_entropy)
    for name, a, b in zip(("lp", "ent", "grad_h", "grad_w"), got, want):
        # the op computes in float32 (log-probs are float32 everywhere in the trainer): float32 rounding, not more
        assert torch.allclose(a.double(), b, rtol=1e-5, atol=1e-5), (name, float((a.double() - b).abs().max()))
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float64  # grads come back in the inputs' dtypes
    if with_entropy:
        assert float(got[1].min()) > 0  # a real entropy, not the zeros of the no-entropy path


def test_bf16_matmuls_are_within_bf16_error_and_gradients_flow_to_float32_master_weights():
    h, w, t, g_lp, g_ent = _inputs(n=64, hidden=64, vocab=300)
    want = _grads(lambda a, b: _reference(a, b, t, 0.8, True), h, w, g_lp, g_ent, True)
    h32, w32 = h.float(), w.float()
    got = _grads(lambda a, b: linear_logprobs(a, b, t, 0.8, 16, True, torch.bfloat16), h32, w32, g_lp.float(),
                 g_ent.float(), True)
    assert got[3].dtype == torch.float32  # the fp32 master weight gets a float32 gradient
    for name, a, b in zip(("lp", "ent", "grad_h", "grad_w"), got, want):
        rel = float((a.double() - b).norm() / b.norm())
        assert 1e-6 < rel < 2e-2, (name, rel)  # bf16 operands: 1e-3..1e-2 relative; exactly 0 would mean no bf16


def test_only_the_asked_gradients_and_no_vocabulary_sized_saved_tensor():
    h, w, t, g_lp, _ = _inputs(n=40, hidden=8, vocab=500, dtype=torch.float32)
    h.requires_grad_(True)
    saved = []

    def pack(x):
        saved.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        lp, _ = linear_logprobs(h, w, t, 1.0, 8, True)
    # h, W (parameters are kept anyway), targets, lse, entropy: nothing [tokens, vocab] is kept for backward
    assert sorted(set(saved)) == [(40,), (40, 8), (500, 8)], saved
    (lp * g_lp).sum().backward()
    assert h.grad is not None and w.grad is None
