"""Issue 13's device-agnostic paths, on the CPU (trainer/device.py, trainer/models.py, trainer/algorithms.py,
trainer/checkpoint.py): each result is compared with the same quantity computed another way.

* chunked log-probs (and entropy, and their gradients) equal a plain log_softmax over the full logits, and the chunked
  path never creates a [tokens, vocab] tensor;
* micro-batches with gradient accumulation give the full batch's update (policy, rePIRL PRM, PRIME PRM), and gradient
  checkpointing the same gradients;
* bf16 on CPU: log-probs float32 and within bf16's error of the fp32 model; a whole training run in bf16 stays finite
  with fp32 master weights;
* a run with every memory option on, killed after a checkpoint (DCP) and resumed, equals the uninterrupted run;
  a 2-process (gloo, FSDP2 bf16) checkpoint loads into one process;
* `device: auto` is the CPU here, and bad values name the file and key.
"""

import copy
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from trainer.algorithms import batch_of, irl_prm_step, policy_step, prime_prm_step
from trainer.config import ConfigError, PolicyTrainConfig, PrimeConfig, PRMTrainConfig, load_config, parse_config
from trainer.device import Compute, attach, resolve_device
from trainer.models import RewardModel, collate, load_causal_lm, token_logprobs

from tests.trainer.conftest import REPO, one_and_two_processes, small_recipe, torchrun


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n=7, seed=0, vocab=250):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, vocab, (int(k),), generator=g).tolist() for k in torch.randint(6, 40, (n,), generator=g)]
    return collate(seqs, [4] * n, [len(s) - 1 for s in seqs], 0)


def _reference_logprobs(model, batch, temperature):
    """Plain full-logits log-probs and entropy, written out here rather than taken from trainer.models."""
    logits = model(input_ids=batch.ids, attention_mask=batch.attn).logits.float()[:, :-1] / temperature
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(-1, batch.ids[:, 1:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------------ chunked log-probs
@pytest.mark.parametrize("compute", [Compute(chunk_tokens=2), Compute(chunk_tokens=7), Compute(chunk_tokens=10_000),
                                     Compute(chunk_tokens=5, micro_batch_size=3), Compute(micro_batch_size=2)],
                         ids=["chunk2", "chunk7", "one-chunk", "chunk5-micro3", "micro2"])
def test_chunked_logprobs_equal_the_full_computation(tiny_policy_dir, compute):
    model = load_causal_lm(tiny_policy_dir)
    batch = _batch()
    real = batch.attn[:, 1:].bool()  # positions holding a real token (padding is never scored)
    want_lp, want_ent = _reference_logprobs(model, batch, 0.8)
    (want_lp[real].sum() + 0.1 * want_ent[real].sum()).backward()
    want_g = _grads(model)
    model.zero_grad()

    attach(model, compute)
    lp, ent = token_logprobs(model, batch, with_entropy=True, temperature=0.8)
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == batch.ids.shape
    assert torch.all(lp[:, 0] == 0)
    assert (lp[:, 1:][real] - want_lp[real]).abs().max() <= 1e-5
    assert (ent[:, 1:][real] - want_ent[real]).abs().max() <= 1e-5
    (lp[:, 1:][real].sum() + 0.1 * ent[:, 1:][real].sum()).backward()  # through the recomputed chunks
    got_g = _grads(model)
    assert got_g.keys() == want_g.keys()
    for k in want_g:
        assert torch.allclose(got_g[k], want_g[k], atol=1e-5, rtol=1e-4), k


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor (elements) any aten op creates, forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_logprobs_never_build_the_full_logits():
    from transformers import Qwen2ForCausalLM

    from repirl.tiny import tiny_qwen2_config

    vocab = 4096  # large next to the hidden size, as in real models (Qwen2.5: 152k vocabulary, 1.5-3.5k hidden)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen2_config(vocab, num_layers=1, intermediate_size=128, eos_token_id=0))
    batch = _batch(n=16, vocab=vocab)
    full = batch.ids.shape[0] * (batch.ids.shape[1] - 1) * vocab
    sizes = {}
    for name, compute in (("full", Compute()), ("chunked", Compute(chunk_tokens=16))):
        attach(model, compute)
        with _LargestTensor() as probe:
            lp = token_logprobs(model, batch, temperature=0.8)
            (lp * batch.resp_mask).sum().backward()
        sizes[name] = probe.largest
    assert sizes["full"] >= full  # the plain path materialises [batch, tokens, vocab] (forward or backward)
    # chunked: one chunk's logits [16, vocab] at most, or the lm_head weight [vocab, hidden] and its gradient, which
    # every path has
    weight = vocab * model.config.hidden_size
    assert sizes["chunked"] <= max(16 * vocab, weight) < full / 4, sizes


# --------------------------------------------------------------------------------------- micro-batches, checkpointing
def _rollouts():
    from tests.trainer._dist_worker import fixed_rollouts

    return fixed_rollouts(max_extra=12)  # longer spread of lengths than the 2-process tests: more padding exercised


def _run_updates(policy_dir, compute, checkpointing=False):
    """One rePIRL PRM step, one PRIME PRM step and one two-mini-batch PPO step from the same weights, with SGD (its
    update is linear in the gradient). Returns the updated weights and the metrics."""
    torch.manual_seed(0)
    rs = _rollouts()
    experts, negatives = [r for r in rs if r.correct], [r for r in rs if not r.correct]
    sampled = [r for r in rs if not r.is_reference]
    out, metrics = {}, {}
    policy = load_causal_lm(policy_dir).train()
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    attach(policy, compute)
    with torch.no_grad():
        neg_lp = (token_logprobs(policy, batch_of(negatives, 256)) * batch_of(negatives, 256).step_mask).sum(-1)
        batch = batch_of(sampled, 256)
        old = token_logprobs(policy, batch, temperature=0.8)
    prm = RewardModel("logprob", policy_dir).train()
    attach(prm.model, compute)
    metrics["irl"] = irl_prm_step(prm, torch.optim.SGD(prm.parameters(), lr=0.5), experts, negatives, neg_lp,
                                  PRMTrainConfig(grad_clip=1e9), 256, updates=1)
    out["irl"] = copy.deepcopy(prm.model.state_dict())
    prm = RewardModel("logprob", policy_dir).train()
    attach(prm.model, compute)
    rewards, _, metrics["prime"] = prime_prm_step(prm, policy, torch.optim.SGD(prm.parameters(), lr=0.5), sampled,
                                                  PrimeConfig(), PRMTrainConfig(grad_clip=1e9), 256, len(sampled))
    out["prime"], out["prime_rewards"] = copy.deepcopy(prm.model.state_dict()), rewards
    adv = torch.tensor([1.0 if r.correct else -0.5 for r in sampled])
    cfg = PolicyTrainConfig(entropy_coef=0.01, mini_batch_size=2, grad_clip=1e9)
    metrics["policy"] = policy_step(policy, torch.optim.SGD(policy.parameters(), lr=0.5), batch, old, adv, cfg, n=3,
                                    temperature=0.8)
    out["policy"] = copy.deepcopy(policy.state_dict())
    return out, metrics


def test_micro_batches_give_the_full_batch_update(tiny_policy_dir):
    init = load_causal_lm(tiny_policy_dir).state_dict()
    full, m_full = _run_updates(tiny_policy_dir, Compute())
    for compute, ckpt in ((Compute(micro_batch_size=2), False), (Compute(micro_batch_size=3, chunk_tokens=8), True)):
        micro, m_micro = _run_updates(tiny_policy_dir, compute, checkpointing=ckpt)
        for part in ("irl", "prime", "policy"):
            moved = max((full[part][k] - init[k]).abs().max() for k in init)
            assert moved > 1e-3, f"{part}: the step changed nothing"
            for k in init:
                assert torch.allclose(micro[part][k], full[part][k], atol=1e-6, rtol=1e-5), (part, k, compute)
        assert torch.allclose(micro["prime_rewards"], full["prime_rewards"], atol=1e-5)
        assert m_micro["policy"]["policy_steps"] == m_full["policy"]["policy_steps"] == 2
        for part, key in (("irl", "prm_loss"), ("irl", "ess"), ("prime", "prm_loss"), ("policy", "policy_loss"),
                          ("policy", "entropy"), ("policy", "clip_frac")):
            assert m_micro[part][key] == pytest.approx(m_full[part][key], rel=1e-5, abs=1e-7), (part, key)
    assert m_full["policy"]["clip_frac"] > 0  # the second mini-batch's ratio left the clip range: the clip is tested


# ----------------------------------------------------------------------------------------------------------- bf16
def test_bf16_logprobs_on_cpu_are_float32_and_close(tiny_policy_dir):
    model = load_causal_lm(tiny_policy_dir)
    batch = _batch()
    real = batch.attn.bool()
    with torch.no_grad():
        want = token_logprobs(model, batch, temperature=0.8)
        for compute in (Compute(autocast_bf16=True), Compute(autocast_bf16=True, chunk_tokens=9, micro_batch_size=3)):
            attach(model, compute)
            got = token_logprobs(model, batch, temperature=0.8)
            diff = float((got - want)[real].abs().max())
            assert got.dtype == torch.float32
            # bf16 keeps 8 bits of mantissa (relative 2^-8 ~ 0.4% per matmul); on this model the log-probs move by
            # a few 1e-3 nats. 0 would mean autocast never acted.
            assert 0 < diff < 0.05, diff


# --------------------------------------------------------------------------------------- whole runs, DCP resume
def _recipe(tmp_path, policy_dir, **over):
    """conftest's small recipe, bf16 with every memory option on, no evaluation or calibration. On the CPU also on a
    GPU host: the resume test asserts bit-identical runs, which CUDA's atomic-add kernels (embedding backward) do not
    promise, and the 2-process runs would need two GPUs (rank 1 takes cuda:1). tests/gpu covers the CUDA paths."""
    return small_recipe(tmp_path, policy_dir, **{
        "name": "s", "iterations": 3, "questions_per_iter": 4, "eval_problems": 0,
        "device": "cpu", "dtype": "bfloat16", "gradient_checkpointing": True, "micro_batch_size": 3,
        "logprob_chunk_tokens": 16, "prm": {"lr": 1e-3}, "optim": {"lr": 1e-3, "mini_batch_size": 2},
        "calibration": {"problems": 0}, **over})


def _rows(run):
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("t_")}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_dcp_resume_with_every_memory_option_equals_an_uninterrupted_run(tiny_policy_dir, tmp_path):
    from trainer.loop import Trainer
    from trainer.train_cli import run_training

    raw = _recipe(tmp_path, tiny_policy_dir)
    run_training(parse_config(raw))
    run = tmp_path / "s"
    rows = _rows(run)
    assert len(rows) == 3 and all(r["prm_loss"] is not None and abs(r["prm_loss"]) < 1e6 for r in rows)
    assert all(abs(r["policy_loss"]) < 1e6 and r["policy_steps"] == 2 for r in rows)  # finite, two mini-batches
    ckpt = run / "checkpoints" / "iter_000003"
    assert (ckpt / ".metadata").exists() and list(ckpt.glob("*.distcp")) and not (ckpt / "state.pt").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000002", "iter_000003"]

    # the same run, resumed from its second checkpoint (as if killed during iteration 3; the first was pruned)
    shutil.copytree(run, tmp_path / "r")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump({**saved, "name": "r"}, sort_keys=False))
    for gone in ("checkpoints/iter_000003", "policy", "prm", "summary.json"):
        p = tmp_path / "r" / gone
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    trainer = Trainer(parse_config({**raw, "name": "r"}), resume=True)
    assert trainer.start_iter == 2 and trainer.device.type == "cpu"
    # fp32 master weights and AdamW state under bf16 compute
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    assert all(v.dtype == torch.float32 for st in trainer.opt_policy.state.values() for k, v in st.items()
               if k != "step")
    assert trainer.opt_policy.state and trainer.opt_prm.state  # the optimizers' state came back too
    trainer.run(progress=False)
    assert _rows(tmp_path / "r") == rows
    init = _weights(tiny_policy_dir)
    for sub in ("policy", "prm"):
        a, b = _weights(run / sub), _weights(tmp_path / "r" / sub)
        assert a.keys() == b.keys() and any(not torch.equal(a[k], init[k]) for k in init), sub
        assert all(torch.equal(a[k], b[k]) for k in a), sub


@pytest.mark.slow
def test_two_process_bf16_checkpoint_loads_into_one_process(tiny_policy_dir, tmp_path):
    """2 gloo processes, FSDP2 with the bf16 mixed-precision policy, micro-batches and chunks: the run's sharded DCP
    checkpoint, loaded by ONE process (DCP reshards), holds exactly the full weights the run exported."""
    from trainer import checkpoint

    raw = _recipe(tmp_path, tiny_policy_dir, name="d", iterations=1)
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(raw))
    torchrun("-m", "trainer.train_cli", "--config", str(tmp_path / "d.yaml"), "--no-progress")
    ckpt = tmp_path / "d" / "checkpoints" / "iter_000001"
    assert json.loads((ckpt / "state.json").read_text())["world"] == 2
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one file per rank: nothing was gathered to write it
    exported = _weights(tmp_path / "d" / "policy")
    policy = load_causal_lm(tiny_policy_dir)
    opt = torch.optim.AdamW(policy.parameters())
    assert checkpoint.load(ckpt, {"policy": (policy, opt), "prm": (RewardModel("logprob", tiny_policy_dir), None)}) == 1
    got = policy.state_dict()
    assert any(not torch.equal(got[k], v) for k, v in _weights(tiny_policy_dir).items())  # it trained
    assert all(torch.equal(got[k], v) for k, v in exported.items())
    assert opt.state and all(torch.isfinite(s["exp_avg"]).all() for s in opt.state.values())


@pytest.mark.slow
def test_two_process_memory_options_give_the_single_process_step(tiny_policy_dir, tmp_path):
    """2 gloo processes, FSDP2 with micro-batches, chunked log-probs and gradient checkpointing: one rePIRL PRM step +
    one PPO step (two mini-batches, SGD) equal one plain process on the whole batch; the sharded DCP checkpoint
    (one file per rank) loads into one process bit-identical to the gathered weights; a bf16 FSDP2 step runs."""
    from trainer import checkpoint

    two, a, b = one_and_two_processes("_scaling_worker.py", tiny_policy_dir, tmp_path)
    assert "bf16 ok" in two.stdout
    init = load_causal_lm(tiny_policy_dir).state_dict()
    for sub in ("policy", "prm"):
        assert any((a[sub][k] - init[k]).abs().max() > 1e-3 for k in init), f"{sub}: the step changed nothing"
        for k in init:
            assert torch.allclose(a[sub][k], b[sub][k], atol=1e-5, rtol=1e-4), (sub, k)
    assert b["policy_steps"] == a["policy_steps"] == 2 and a["clip_frac"] > 0
    for key in ("prm_loss", "policy_loss", "entropy", "clip_frac"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key

    ckpt = tmp_path / "two" / "ckpt" / "checkpoints" / "iter_000001"
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one file per rank: nothing was gathered to write it
    policy = load_causal_lm(tiny_policy_dir)
    adam = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    assert checkpoint.load(ckpt, {"policy": (policy, adam)}) == 1  # DCP reshards 2 -> 1
    gathered = torch.load(tmp_path / "two" / "after_adam.pt", weights_only=False)
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in gathered.items())
    assert adam.state and all(int(st["step"]) == 2 for st in adam.state.values())  # two AdamW steps, restored


# ---------------------------------------------------------------------------------------------- recipe settings
def test_device_auto_is_the_cpu_here_and_bad_values_are_named(tmp_path):
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():  # (a GPU host: auto takes this rank's GPU)
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="device: cuda"):
            resolve_device("cuda")
    p = tmp_path / "x.yaml"
    for text, key in (("device: tpu", "device"), ("dtype: float16", "dtype"), ("micro_batch_size: 0", "micro_batch_size"),
                      ("logprob_chunk_tokens: -1", "logprob_chunk_tokens"),
                      ("gradient_checkpointing: maybe", "gradient_checkpointing")):
        p.write_text(f"name: x\n{text}\n")
        with pytest.raises(ConfigError) as e:
            load_config(p)
        assert str(p) in str(e.value) and f"key '{key}'" in str(e.value), e.value
    p.write_text("name: x\ndevice: auto\ndtype: bfloat16\ngradient_checkpointing: true\nmicro_batch_size: 4\n"
                 "logprob_chunk_tokens: 2048\n")
    cfg = load_config(p)
    assert (cfg.device, cfg.dtype, cfg.gradient_checkpointing, cfg.micro_batch_size, cfg.logprob_chunk_tokens) == (
        "auto", "bfloat16", True, 4, 2048)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU host runs `device: cuda` for real")
def test_train_cli_refuses_cuda_without_a_gpu_in_one_line(tmp_path):
    p = tmp_path / "gpu.yaml"
    p.write_text("name: g\ndevice: cuda\n")
    r = subprocess.run([sys.executable, "-m", "trainer.train_cli", "--config", str(p), "--no-progress"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    said = " ".join(r.stderr.split())  # rich wraps long lines at the terminal's width
    assert str(p) in said and "device: cuda" in said and "torch sees no GPU" in said, r.stderr
