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
import json
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
# and what `repirl serve` imports beyond that (load_tests/gpu_service.py; the audit in docs/trainer.md)
SERVICE_NEEDS = ("fastapi", "starlette", "uvicorn", "pydantic_settings", "dotenv", "redis", "sse_starlette",
                 "math_verify")


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS if k.lower() in name.lower()), None)


def bundle_site(bundle: Path) -> Path:
    """Where use_bundle unpacks the wheels for this Python."""
    return bundle / "site" / f"cp{sys.version_info.major}{sys.version_info.minor}"


def use_bundle(bundle: Path, service: bool = False) -> str:
    """Make the trainer's imports (and with `service`, the service's) work without network: when a package is
    missing, unpack every wheel of `bundle` for this Python into bundle/site (once) and put it first on sys.path.
    Returns what it did, for the log."""
    import importlib
    import importlib.util

    needs = NEEDS + (SERVICE_NEEDS if service else ())
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if not missing:
        return "packages: all present"
    wheels = sorted(bundle.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu-check: {', '.join(missing)} not installed and no wheels in {bundle}: run `make "
                         f"gpu-bundle` on a machine with network and copy {bundle}/ here")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    site = bundle_site(bundle)
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
    importlib.invalidate_caches()
    still = [m for m in missing if importlib.util.find_spec(m) is None]
    if still:
        raise SystemExit(f"gpu-check: {', '.join(still)} still missing after unpacking {bundle} (no wheel for {tag}?)")
    return f"packages: {', '.join(missing)} from {bundle} ({len(wheels)} wheels)"


# The wheels `make gpu-bundle` downloads: what the trainer and `repirl serve` import beyond a stock CUDA torch image
# (torch, transformers, accelerate, rich, typer, httpx, prometheus-client, sympy, pytest, ...; ENVIRONMENT.md), at
# the versions installed here, and liger-kernel for the device benchmark (trainer/gpu_bench.py). Audited by running
# the CPU rehearsals in a venv holding only the image's packages and these wheels (docs/trainer.md, "GPU session").
BUNDLE_PURE = ("pydantic", "annotated-types", "typing-inspection", "typing-extensions",  # the trainer's recipes
               "pydantic-settings", "python-dotenv", "fastapi", "starlette", "uvicorn", "redis", "sse-starlette",
               "math-verify", "latex2sympy2_extended", "antlr4-python3-runtime")  # the service
BUNDLE_EXTRA = ("liger-kernel==0.8.5",)  # not installed here (it needs triton: GPU only); pure Python
BUNDLE_BINARY = ("pydantic-core",)  # one wheel per CPython version (manylinux x86_64)
BUNDLE_PYTHONS = ("3.11", "3.12")  # this machine's Python (the audit) and the GPU image's (3.12.3)


def make_bundle(bundle: Path, pythons=BUNDLE_PYTHONS) -> int:
    """`make gpu-bundle` (needs network): BUNDLE_PURE at the versions installed here (pydantic pins its
    pydantic-core exactly), BUNDLE_EXTRA, and pydantic-core for each of `pythons`."""
    import importlib.metadata as md
    import subprocess

    bundle.mkdir(parents=True, exist_ok=True)
    for old in bundle.glob("*.whl"):
        old.unlink()
    pin = [f"{n}=={md.version(n)}" for n in BUNDLE_PURE] + list(BUNDLE_EXTRA)
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(bundle)]
    subprocess.run(base + pin, check=True)
    for py in pythons:
        subprocess.run(base + ["--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                               "--implementation", "cp", "--python-version", py,
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
    # initialised on the GPU when there is one (seconds, where a CPU init of 494 M parameters takes much longer)
    with torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu"):
        model = Qwen2ForCausalLM(cfg)
    if not tiny:
        model = model.to("cpu", torch.bfloat16)  # a 1 GB folder instead of 2 GB; the trainer loads its own precision
    params = sum(p.numel() for p in model.parameters())
    save_model_folder(model, tok, out, policy_config=PolicyConfig())
    return out, params


def recipe(policy: Path, out_dir: Path, device: str, tiny: bool, iterations: int) -> dict:
    big = not tiny
    return {
        "name": "gpu-check", "out_dir": str(out_dir), "policy": str(policy), "iterations": iterations,
        "questions_per_iter": 16 if big else 4, "checkpoint_every": 1000, "eval_problems": 0,
        # no gradient checkpointing: a 0.5B model's activations for 32 x 256 tokens fit easily, and recomputing
        # them costs a third more compute (trainer/gpu_bench.py measures both). Full logits, not fused chunks: on the
        # H200 the policy step ran at 0.888x the plain-transformers anchor with full logits (peak 39.9 GiB) and 0.747x
        # with fused chunks of 2048 (21.1 GiB); chunks are for when [tokens, vocab] float32 logits do not fit
        "device": device, "dtype": "bfloat16", "gradient_checkpointing": False,
        "micro_batch_size": 32 if big else 4, "logprob_chunk_tokens": None if big else 16,
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
        self.in_rollout, self.flops, self.grad_tokens, self.rollout_peak = False, 0.0, 0, 0

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
            if cuda:  # the rollouts' peak, then the rest of the iteration's (the updates) on its own
                counter.rollout_peak = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()

    cuda = device != "cpu"
    trainer.engine.generate = timed_generate
    worst, ok = 0.0, True
    report = {"device": name, "params": params, "iterations": []}
    for it in range(args.iterations):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        counter.flops, counter.grad_tokens = 0.0, 0
        row = trainer.iteration(it)
        rollouts = cfg.questions_per_iter * cfg.rollouts.n
        gen_tokens = row["mean_len"] * rollouts
        t_update = max(row["t_iter"] - row["t_rollout"], 1e-9)
        mfu = counter.flops / t_update / (peak * 1e12) if peak else None
        mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None  # after the rollouts: the update phases
        mem_roll = counter.rollout_peak / 2**30 if cuda else None
        diff = row.get("logprob_max_abs_diff")
        worst = max(worst, diff if diff is not None else 0.0)
        if diff is None or diff != diff or diff > 1.0:  # missing, NaN, or a sampler that is not the trainer's model
            ok = False
        print(f"iter {it + 1}/{args.iterations}: rollouts {gen_tokens / max(row['t_rollout'], 1e-9):,.0f} tokens/s "
              f"({gen_tokens:.0f} tokens, {row['t_rollout']:.1f} s); update {counter.grad_tokens / t_update:,.0f} "
              f"tokens/s ({t_update:.1f} s, {counter.flops / t_update / 1e12:.2f} TFLOP/s"
              f"{f', MFU {mfu:.1%}' if mfu is not None else ', MFU n/a (no GPU peak known)'}); "
              f"peak GPU memory "
              f"{f'{mem_roll:.1f} GiB rollouts, {mem:.1f} GiB updates' if mem is not None else 'n/a (CPU)'}; "
              f"log-prob check max |sampler - trainer| {diff if diff is None else f'{diff:.2e}'}")
        # where the iteration's time went: rollouts, the PRM phase (its update and scoring), the policy update, and
        # the rest (old log-probs, the log-prob checks, batching)
        rest = row["t_iter"] - row["t_rollout"] - row["t_prm"] - row["t_policy"]
        print(f"  phases: rollouts {row['t_rollout']:.2f} s, PRM {row['t_prm']:.2f} s, policy update "
              f"{row['t_policy']:.2f} s, other {rest:.2f} s")
        report["iterations"].append({
            "rollout_tokens_per_s": round(gen_tokens / max(row["t_rollout"], 1e-9)), "gen_tokens": round(gen_tokens),
            "update_tokens_per_s": round(counter.grad_tokens / t_update), "update_tflops": round(
                counter.flops / t_update / 1e12, 2), "update_mfu": round(mfu, 4) if mfu is not None else None,
            "peak_gib": round(mem, 2) if mem is not None else None, "logprob_check": diff,
            "peak_rollout_gib": round(mem_roll, 2) if mem_roll is not None else None,
            "t_rollout": row["t_rollout"], "t_prm": row["t_prm"], "t_policy": row["t_policy"],
            "t_other": round(rest, 3), "t_iter": row["t_iter"]})
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"gpu-check: {'PASS' if ok else 'FAIL'}: {args.iterations} iterations; log-prob check max {worst:.2e} "
          f"(bf16: ~1e-2 is bf16 rounding; stale weights show far more); total {time.time() - t0:.0f} s", flush=True)
    if args.profile:
        profile_after_rollouts(trainer, args.iterations, cuda, Path(args.profile))
    return 0 if ok else 1


def profile_after_rollouts(trainer, it: int, cuda: bool, out: Path):
    """One more iteration, profiled (torch.profiler) from the end of its rollouts to its end: the old log-probs, the
    log-prob checks, the PRM phase and the policy update (profiling `generate` records too many events to summarise
    in a short session). Appends the op table, by device time, to `out`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=acts)
    generate = trainer.engine.generate

    def start_after(*a, **k):
        try:
            return generate(*a, **k)
        finally:
            if cuda:
                torch.cuda.synchronize()
            prof.start()

    trainer.engine.generate = start_after
    t0 = time.time()
    row = trainer.iteration(it)
    if cuda:
        torch.cuda.synchronize()
    prof.stop()
    trainer.engine.generate = generate
    key = "cuda_time_total" if cuda else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    with open(out, "a") as f:
        f.write(f"\n\ngpu-check: one rePIRL iteration after its rollouts (PRM phase {row['t_prm']} s, policy update "
                f"{row['t_policy']} s, iteration {row['t_iter']} s of which rollouts {row['t_rollout']} s; "
                f"profiled), sorted by {key}\n\n{table}\n")
    print(f"gpu-check: profiled one more iteration after its rollouts ({time.time() - t0:.1f} s): table in {out}")
    print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--tiny", action="store_true", help="a tiny model instead of Qwen2-0.5B's shape")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--bundle", default=str(REPO / "gpu_bundle"), help="wheels from `make gpu-bundle`")
    ap.add_argument("--work", default=None, help="folder for the model and the run (default: a temp folder)")
    ap.add_argument("--make-bundle", action="store_true", help="download the wheels into --bundle (needs network)")
    ap.add_argument("--json", default=None, help="also write the per-iteration figures to this file")
    ap.add_argument("--profile", default=None, help="profile one more iteration after its rollouts; append the "
                    "op table to this file")
    ap.add_argument("--tests", action="store_true", help="run `pytest -m gpu tests/gpu` with the bundle's packages")
    args = ap.parse_args(argv)
    if args.tests:
        return run_gpu_tests(Path(args.bundle))
    return make_bundle(Path(args.bundle)) if args.make_bundle else run(args)


def run_gpu_tests(bundle: Path) -> int:
    """`pytest -m gpu tests/gpu`, in a child whose PYTHONPATH holds the repo and the bundle's packages."""
    import subprocess

    print(use_bundle(bundle, service=True))
    path = [str(REPO), str(bundle_site(bundle)), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    return subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs",
                           "tests/gpu"], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
