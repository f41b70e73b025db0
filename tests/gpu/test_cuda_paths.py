"""The trainer's and the service's CUDA paths (issue 26), each checked against the same quantity computed another
way: bf16 autocast log-probs against float32 ones; the fused chunked log-probs against full logits; FSDP2 in a
one-process group against an unsharded step, and its DCP checkpoint loaded back; one whole training iteration on the
device (batches, losses and the bf16 sampling replica); the service's transformers PRM scorer and policy on the
device in bf16 against the float32 CPU engines. Marked `gpu` (tests/gpu/conftest.py says how they run and skip)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.device import Compute, attach
from trainer.logprobs import linear_logprobs
from trainer.models import collate, load_causal_lm, token_logprobs

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _exact_fp32():
    """float32 means float32 here (no TF32 matmuls), so the fp32 comparisons below hold to float32 rounding."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def _batch(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, 250, (int(k),), generator=g).tolist() for k in torch.randint(6, 40, (n,), generator=g)]
    return collate(seqs, [4] * n, [len(s) - 1 for s in seqs], 0)


def test_bf16_autocast_logprobs_are_float32_close_and_come_back_to_the_batch(tiny_policy_dir, device):
    model = load_causal_lm(tiny_policy_dir)
    batch = _batch()
    real = batch.attn.bool()
    with torch.no_grad():
        want = token_logprobs(model, batch, temperature=0.8)  # float32 on the CPU
        model.to(device)
        for compute in (Compute(device=device, autocast_bf16=True),
                        Compute(device=device, autocast_bf16=True, chunk_tokens=9, micro_batch_size=3)):
            attach(model, compute)
            got = token_logprobs(model, batch, temperature=0.8)
            assert got.dtype == torch.float32 and got.device == batch.ids.device
            diff = float((got - want)[real].abs().max())
            assert 0 < diff < 0.05, diff  # bf16 rounding: a few 1e-3 nats; 0 would mean autocast never acted
            on_device = token_logprobs(model, batch.to(device), temperature=0.8)
            assert on_device.device.type == device.type  # a device batch's results stay on the device


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_chunked_logprobs_equal_the_full_computation(device, temperature):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(300, 64, generator=g).to(device).requires_grad_(True)
    w = (torch.randn(1000, 64, generator=g) * 0.1).to(device).requires_grad_(True)
    t = torch.randint(0, 1000, (300,), generator=g).to(device)
    g_lp, g_ent = torch.randn(300, generator=g).to(device), torch.randn(300, generator=g).to(device)
    lp, ent = linear_logprobs(h, w, t, temperature, 64, True)
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    got = (lp.detach(), ent.detach(), h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    logp = torch.log_softmax((h @ w.t()) / temperature, -1)
    rlp = logp.gather(-1, t[:, None]).squeeze(-1)
    rent = -(logp.exp() * logp).sum(-1)
    ((rlp * g_lp).sum() + (rent * g_ent).sum()).backward()
    for a, b in zip(got, (rlp.detach(), rent.detach(), h.grad, w.grad)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), float((a - b).abs().max())


def test_chunked_trainer_logprobs_and_gradients_equal_full_logits(tiny_policy_dir, device):
    batch = _batch().to(device)
    real = batch.attn.float()  # padding positions: garbage in the full logits, 0 in the chunked path; not compared
    out = {}
    for name, compute in (("full", Compute(device=device)), ("chunked", Compute(device=device, chunk_tokens=5,
                                                                                   micro_batch_size=3))):
        model = attach(load_causal_lm(tiny_policy_dir).to(device), compute)
        lp, ent = token_logprobs(model, batch, with_entropy=True, temperature=0.9)
        ((lp * real).sum() + 0.1 * (ent * real).sum()).backward()
        out[name] = (lp.detach() * real, {n: p.grad for n, p in model.named_parameters()})
    assert torch.allclose(out["full"][0], out["chunked"][0], atol=1e-5)
    for n, gr in out["full"][1].items():
        assert torch.allclose(gr, out["chunked"][1][n], rtol=1e-4, atol=1e-5), n


def test_fsdp2_one_process_step_equals_unsharded_and_dcp_round_trips(tiny_policy_dir, device, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    res = subprocess.run([sys.executable, str(Path(__file__).with_name("_fsdp_worker.py")), str(tiny_policy_dir),
                          str(tmp_path), device.type], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["max_diff_vs_unsharded"] < 1e-5, got  # micro-batches + no-sync accumulation = the plain step
    assert got["bf16_finite"] and abs(got["bf16_loss"]) < 1e6, got
    assert got["dcp_iteration"] == 1 and got["dcp_restored"], got


def test_one_training_iteration_on_the_device(tiny_policy_dir, device, tmp_path):
    """The whole loop on the device in bf16: batches, losses and backward there, the bf16 sampling replica (a GPU
    run's HFEngine), the log-prob check against the trainer's forward, a DCP checkpoint."""
    from tests.trainer.conftest import small_recipe
    from trainer.config import parse_config
    from trainer.loop import Trainer

    raw = small_recipe(tmp_path, tiny_policy_dir, iterations=1, eval_problems=0, device=device.type,
                       dtype="bfloat16", micro_batch_size=3, logprob_chunk_tokens=16, kl_to_init=True,
                       optim={"lr": 1e-3, "mini_batch_size": 1}, calibration={"problems": 0})
    trainer = Trainer(parse_config(raw))
    trainer.engine = trainer._make_engine()
    if device.type == "cuda":
        assert trainer.engine.replica_dtype == torch.bfloat16
    row = trainer.iteration(0)
    assert trainer.device.type == device.type and next(trainer.policy.parameters()).device.type == device.type
    assert row["logprob_max_abs_diff"] < 0.1, row  # the sampler's weights are the trainer's (bf16 rounding)
    assert row["policy_steps"] == 3 and abs(row["policy_loss"]) < 1e6 and abs(row["kl_init"]) < 1.0, row
    assert row["prm_loss"] is not None
    trainer.save_checkpoint(1)
    assert (tmp_path / "t" / "checkpoints" / "iter_000001" / ".metadata").exists()


def test_service_engines_run_on_the_device_in_bf16(tmp_path, device):
    """repirl/scoring/hf_engine.py and repirl/policy/hf.py with device/dtype auto: on the device, bf16 on a GPU;
    scores within bf16 rounding of the float32 CPU engine."""
    from repirl.artifacts import load_prm_config
    from repirl.policy.base import SamplingConfig
    from repirl.policy.hf import TransformersPolicy
    from repirl.scoring.hf_engine import HFScorer
    from repirl.scoring.tiny_prms import build_tiny_prm

    items = [("Start with 3. Add 4.", ["3+4=7", "Answer: 7"]), ("Start with 5. Double it.", ["5*2=10"])]
    prm = build_tiny_prm(tmp_path / "prm", "token-reward")
    cfg = load_prm_config(prm)
    want = HFScorer(prm, cfg, kv_cache_tokens=0).score(items)
    scorer = HFScorer(prm, cfg, device=device.type, dtype="auto")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    assert all(next(m.parameters()).device.type == device.type and next(m.parameters()).dtype == dtype
               for m in scorer.models)
    got = scorer.score(items)
    got_again = scorer.score(items)  # from the prefix KV cache on the device
    for g, a, w in zip(got, got_again, want):
        # bf16 keeps 8 mantissa bits: over the layers a step reward of ~7.7 moved by 0.07 (0.9%) on the H200
        assert g.step_rewards == pytest.approx(w.step_rewards, rel=0.05, abs=0.05)
        assert a.step_rewards == pytest.approx(g.step_rewards, abs=1e-3)
    policy = TransformersPolicy(prm.parent / f".{prm.name}-policy", device=device.type, dtype="auto")
    assert next(policy.model.parameters()).device.type == device.type
    samples = policy.sample_steps([("Start with 3. Add 4.", [])], SamplingConfig(n=3, max_tokens=8, seed=1))
    assert len(samples[0]) == 3 and any(s.token_ids for s in samples[0])
    assert all(-1e4 < lp <= 0 for s in samples[0] for lp in s.logprobs)
