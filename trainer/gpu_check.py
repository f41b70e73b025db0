"""`make gpu-check`: a short rePIRL training of a from-config Qwen2-0.5B on a GPU, printing what a user sizing a run
needs: rollout and update tokens/s, peak GPU memory, model-FLOPs utilisation, and the per-iteration log-prob check.

    python3 -m trainer.gpu_check                          # on a GPU machine (bf16, 3 iterations); no GPU: says so, exit 0
    python3 -m trainer.gpu_check --device cpu --tiny      # the same code path on a tiny model, on the CPU, in seconds

Made for an air-gapped stock CUDA PyTorch image (torch, transformers, accelerate; no vLLM, no pydantic, no
network): nothing is downloaded. The model is built from Qwen2-0.5B's dimensions with random weights, the tokenizer is
the repo's byte-level one built in code (ids it does not know decode to ""), and the few pure-Python packages the
trainer needs beyond that image come from the folder `make gpu-bundle` filled beforehand (unpacked into
<bundle>/site and put on sys.path; wheels are zip files, so no pip and no index are needed). Rollouts use vLLM when it
is installed, transformers generate otherwise (one line says so).

MFU = model FLOPs / (time x peak): every forward outside the rollouts counts 2 x params x tokens, and one with
gradients 6 x params x tokens (forward + backward, activation recomputation not counted), over the iteration's
non-rollout time (the PRM update, the policy update and their no-grad scoring passes), against the GPU's dense bf16
peak from the table below (by device name; unknown GPUs print no MFU). Attention FLOPs are left out (sequences are
short).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

# dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, no sparsity); the first matching name wins
PEAK_BF16_TFLOPS = [("GB200", 2500.0), ("B200", 2250.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0),
                    ("H800", 989.0), ("H20", 148.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                    ("L40", 181.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
                    ("MI300X", 1307.0), ("MI250", 362.0)]
# Qwen/Qwen2-0.5B's config.json (494 M parameters)
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                 tie_word_embeddings=True, rms_norm_eps=1e-6)
REPO = Path(__file__).resolve().parents[1]
NEEDS = ("pydantic", "yaml")  # what the trainer imports that a stock CUDA torch image may lack (see use_bundle)


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS if k.lower() in name.lower()), None)


def use_bundle(bundle: Path) -> str:
    """Make the trainer's imports work without network: when a package is missing, unpack every wheel of `bundle`
    into bundle/site (once) and put it first on sys.path. Returns what it did, for the log."""
    import importlib.util

    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if not missing:
        return "packages: all present"
    wheels = sorted(bundle.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu-check: {', '.join(missing)} not installed and no wheels in {bundle}: run `make "
                         f"gpu-bundle` on a machine with network and copy {bundle}/ here")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    site = bundle / "site" / tag
    if not (site / ".done").exists():
        site.mkdir(parents=True, exist_ok=True)
        for whl in wheels:
            parts = whl.name[:-4].split("-")
            py, abi = parts[-3], parts[-2]
            if abi not in ("none", "abi3") and not py.startswith(tag):
                continue  # a binary wheel built for another Python (pydantic-core comes in several)
            with zipfile.ZipFile(whl) as z:
                z.extractall(site)
        (site / ".done").write_text("ok")
    sys.path.insert(0, str(site))
    still = [m for m in missing if importlib.util.find_spec(m) is None]
    if still:
        raise SystemExit(f"gpu-check: {', '.join(still)} still missing after unpacking {bundle} (no wheel for {tag}?)")
    return f"packages: {', '.join(missing)} from {bundle} ({len(wheels)} wheels)"


BUNDLE_PURE = ("pydantic", "annotated-types", "typing-inspection")  # pure Python (py3-none-any)
BUNDLE_BINARY = ("pydantic-core",)  # one wheel per CPython version (manylinux x86_64)
BUNDLE_PYTHONS = ("3.10", "3.11", "3.12", "3.13")  # the GPU image's Python is not known in advance


def make_bundle(bundle: Path, pythons=BUNDLE_PYTHONS) -> int:
    """`make gpu-bundle` (needs network): the wheels of the packages the trainer imports beyond a stock CUDA torch
    image, at the versions installed here (pydantic pins its pydantic-core exactly). What that set is was measured:
    a CPU dry run with vLLM blocked, every imported module mapped to its distribution, minus the dependency closure
    of torch, transformers, accelerate, rich, typer, httpx, safetensors and pytest: pydantic and its three
    dependencies (typing-extensions comes with torch; PyYAML with transformers)."""
    import importlib.metadata as md
    import subprocess

    bundle.mkdir(parents=True, exist_ok=True)
    for old in bundle.glob("*.whl"):
        old.unlink()
    pin = [f"{n}=={md.version(n)}" for n in BUNDLE_PURE]
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(bundle)]
    subprocess.run(base + pin, check=True)
    for py in pythons:
        subprocess.run(base + ["--platform", "manylinux2014_x86_64", "--python-version", py,
                               *[f"{n}=={md.version(n)}" for n in BUNDLE_BINARY]], check=True)
    wheels = sorted(bundle.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"gpu-bundle: {len(wheels)} wheels, {size / 2**20:.1f} MiB in {bundle}/ (CPython {', '.join(pythons)}):")
    for w in wheels:
        print(f"  {w.name}  {w.stat().st_size / 2**20:.2f} MiB")
    return 0


def build_policy(out: Path, tiny: bool, seed: int = 0) -> tuple[Path, int]:
    """A random Qwen2 policy folder: Qwen2-0.5B's dimensions, or a tiny one; the repo's byte-level tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from repirl.artifacts import PolicyConfig, save_model_folder
    from repirl.tiny import build_tokenizer, tiny_qwen2_config

    torch.manual_seed(seed)
    tok = build_tokenizer()
    if tiny:
        cfg = tiny_qwen2_config(len(tok), num_layers=2, intermediate_size=256, eos_token_id=tok.eos_token_id)
    else:
        cfg = Qwen2Config(**QWEN2_05B, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                          pad_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(cfg)
    if not tiny:
        model = model.to(torch.bfloat16)  # a 1 GB folder instead of 2 GB; the trainer loads its own precision
    params = sum(p.numel() for p in model.parameters())
    save_model_folder(model, tok, out, policy_config=PolicyConfig())
    return out, params


def recipe(policy: Path, out_dir: Path, device: str, tiny: bool, iterations: int) -> dict:
    big = not tiny
    return {
        "name": "gpu-check", "out_dir": str(out_dir), "policy": str(policy), "iterations": iterations,
        "questions_per_iter": 16 if big else 4, "checkpoint_every": 1000, "eval_problems": 0,
        "device": device, "dtype": "bfloat16", "gradient_checkpointing": big,
        "micro_batch_size": 32 if big else 4, "logprob_chunk_tokens": 1024 if big else None,
        "task": {"train_size": 64, "eval_size": 4},
        "rollouts": {"n": 8 if big else 2, "max_new_tokens": 128 if big else 16, "engine": "auto"},
        "optim": {"lr": 1e-6, "mini_batch_size": 4 if big else 2},
        "prm": {"parameterization": "logprob", "lr": 1e-6},
        "calibration": {"problems": 0},
    }


class FlopCounter:
    """Forward pre-hooks on the trainer's models: tokens through each forward outside the rollouts, with and without
    gradients (rollout forwards are skipped: generate's incremental steps are counted as tokens/s instead)."""

    def __init__(self):
        self.in_rollout, self.flops, self.grad_tokens = False, 0.0, 0

    def watch(self, model, params: int) -> None:
        def hook(_module, args, kwargs):
            if self.in_rollout:
                return
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids", args[0] if args else None)
            tokens = int(mask.sum()) if mask is not None else int(ids.numel())
            import torch

            grad = torch.is_grad_enabled()
            self.flops += (6 if grad else 2) * params * tokens
            self.grad_tokens += tokens if grad else 0

        model.register_forward_pre_hook(hook, with_kwargs=True)


def run(args) -> int:
    import torch

    device = args.device
    if device != "cpu" and not torch.cuda.is_available():
        print("gpu-check: no GPU here (torch.cuda.is_available() is False): nothing to check on this machine. "
              "Run it on a GPU machine, or `python -m trainer.gpu_check --device cpu --tiny` for the CPU dry run.")
        return 0
    print(use_bundle(Path(args.bundle)))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from repirl.vllm_setup import quiet_logs

    quiet_logs()
    from trainer.config import parse_config
    from trainer.loop import Trainer

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    t0 = time.time()
    policy, params = build_policy(work / "policy", args.tiny)
    name = torch.cuda.get_device_name() if device != "cpu" else "cpu"
    peak = peak_tflops(name) if device != "cpu" else None
    print(f"gpu-check: {'tiny' if args.tiny else 'Qwen2-0.5B-shaped'} policy, {params / 1e6:.1f} M parameters, "
          f"built in {time.time() - t0:.1f} s; device {name}; bf16; {args.iterations} iterations")
    cfg = parse_config(recipe(policy, work / "runs", device if device != "auto" else "auto", args.tiny,
                              args.iterations))
    trainer = Trainer(cfg)
    trainer.engine = trainer._make_engine()
    print(f"rollouts: {trainer.engine.name}")
    counter = FlopCounter()
    for model in (trainer.policy, trainer.init_policy, getattr(trainer.prm, "model", None)):
        if model is not None:
            counter.watch(model, params)
    generate = trainer.engine.generate

    def timed_generate(*a, **k):
        counter.in_rollout = True
        try:
            return generate(*a, **k)
        finally:
            counter.in_rollout = False

    trainer.engine.generate = timed_generate
    cuda = device != "cpu"
    worst, ok = 0.0, True
    for it in range(args.iterations):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        counter.flops, counter.grad_tokens = 0.0, 0
        row = trainer.iteration(it)
        rollouts = cfg.questions_per_iter * cfg.rollouts.n
        gen_tokens = row["mean_len"] * rollouts
        t_update = max(row["t_iter"] - row["t_rollout"], 1e-9)
        mfu = counter.flops / t_update / (peak * 1e12) if peak else None
        mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        diff = row.get("logprob_max_abs_diff")
        worst = max(worst, diff if diff is not None else 0.0)
        if diff is None or diff != diff or diff > 1.0:  # missing, NaN, or a sampler that is not the trainer's model
            ok = False
        print(f"iter {it + 1}/{args.iterations}: rollouts {gen_tokens / max(row['t_rollout'], 1e-9):,.0f} tokens/s "
              f"({gen_tokens:.0f} tokens, {row['t_rollout']:.1f} s); update {counter.grad_tokens / t_update:,.0f} "
              f"tokens/s ({t_update:.1f} s, {counter.flops / t_update / 1e12:.2f} TFLOP/s"
              f"{f', MFU {mfu:.1%}' if mfu is not None else ', MFU n/a (no GPU peak known)'}); "
              f"peak GPU memory {f'{mem:.1f} GiB' if mem is not None else 'n/a (CPU)'}; "
              f"log-prob check max |sampler - trainer| {diff if diff is None else f'{diff:.2e}'}")
    print(f"gpu-check: {'PASS' if ok else 'FAIL'}: {args.iterations} iterations; log-prob check max {worst:.2e} "
          f"(bf16: ~1e-2 is bf16 rounding; stale weights show far more); total {time.time() - t0:.0f} s")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--tiny", action="store_true", help="a tiny model instead of Qwen2-0.5B's shape")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--bundle", default=str(REPO / "gpu_bundle"), help="wheels from `make gpu-bundle`")
    ap.add_argument("--work", default=None, help="folder for the model and the run (default: a temp folder)")
    ap.add_argument("--make-bundle", action="store_true", help="download the wheels into --bundle (needs network)")
    args = ap.parse_args(argv)
    return make_bundle(Path(args.bundle)) if args.make_bundle else run(args)


if __name__ == "__main__":
    sys.exit(main())
