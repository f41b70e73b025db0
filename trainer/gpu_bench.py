"""Issue 26's device measurements, each against a baseline measured in the same run on the same GPU:

    python3 -m trainer.gpu_bench --out DIR                 # a GPU: Qwen2-0.5B shape, bf16 (about a minute)
    python3 -m trainer.gpu_bench --device cpu --tiny       # the same code on a tiny model on the CPU (seconds)

Sections (`--sections`, comma-separated; each prints its figures as soon as it has them, and DIR/bench.json is
rewritten after each, so a section that fails or a run that is killed keeps what came before):

  anchor    plain transformers: forward + backward + AdamW, fp32 master weights under bf16 autocast, 32 x 256 tokens
            (labels = ids: HF's loss), the issue's reference (18.7% MFU on an H200)
  update    the trainer's policy update (trainer/algorithms.py policy_step: PPO-clip + entropy, fused chunked
            log-probs, clip, AdamW) on the same 32 x 256 tokens, one optimizer step per call: tokens/s, MFU and the
            ratio to the anchor (target >= 0.8); variants: gradient checkpointing on, full logits (no chunks)
  kernels   the lm_head + log-softmax alone on 8192 positions: full fp32 logits, trainer/logprobs.py's fused chunks,
            liger-kernel's fused linear cross-entropy (when it imports): forward + backward ms and peak memory
  memory    one bf16 [32, 256, vocab] logits tensor and its fp32 copy, allocated and measured
  profile   torch.profiler over one policy update: the top ops by device time -> DIR/profile.txt
  rollouts  128 sequences x 128 new tokens: the trainer's HFEngine (bf16 replica, one batch) vs plain `generate`
            on a bf16 model, and the previous path (fp32 master weights under autocast, chunks of 64 rows)

MFU counts 6 x parameters x tokens per forward + backward (2 x for a forward) against the GPU's dense bf16 peak
(trainer/gpu_check.py's table), as the issue's anchor figure does; attention FLOPs are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from trainer.gpu_bench_sections import KernelAndRolloutSections
from trainer.gpu_check import QWEN2_05B, peak_tflops

SECTIONS = ("anchor", "update", "kernels", "memory", "profile", "rollouts")


class Bench(KernelAndRolloutSections):
    def __init__(self, args):
        self.device = torch.device(args.device if args.device != "auto" else
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.tiny = args.tiny
        self.out = Path(args.out) if args.out else None
        self.results: dict = {"device": torch.cuda.get_device_name() if self.cuda else "cpu",
                              "torch": torch.__version__, "tiny": self.tiny}
        self.peak = peak_tflops(self.results["device"]) if self.cuda else None
        self.rows, self.width = (32, 256) if not self.tiny else (8, 64)
        self.repeats = args.repeats
        self.name = args.name

    # ---------------------------------------------------------------------------------------------- helpers
    def config(self):
        from transformers import Qwen2Config

        if self.tiny:
            from repirl.tiny import tiny_qwen2_config

            return tiny_qwen2_config(300, num_layers=2, intermediate_size=256, eos_token_id=1)
        return Qwen2Config(**QWEN2_05B, eos_token_id=1, bos_token_id=1, pad_token_id=1)

    def model(self, seed: int = 0):
        """A random Qwen2 (fp32 master weights) built directly on the device (no CPU init of 494 M parameters)."""
        from transformers import Qwen2ForCausalLM

        torch.manual_seed(seed)
        with torch.device(self.device):
            m = Qwen2ForCausalLM(self.config())
        if not self.cuda:  # torch's CPU flash kernel for bf16 needs AVX-512 VNNI (trainer/device.py place)
            m.set_attn_implementation("eager")
        return m

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, fn, warmup: int = 2, repeats: int | None = None) -> float:
        """Median seconds of fn() (synchronised), after warm-up calls."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats or self.repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    def reset_peak(self):
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        return 0

    def peak_gib(self, base: int = 0):
        return round((torch.cuda.max_memory_allocated() - base) / 2**30, 2) if self.cuda else None

    def mfu(self, flops_per_s: float):
        return round(flops_per_s / (self.peak * 1e12), 4) if self.peak else None

    def ids(self, rows, width, vocab, seed=0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randint(2, min(vocab, 250), (rows, width), generator=g).to(self.device)

    def emit(self, section: str, data: dict):
        self.results[section] = data
        print(f"[{section}] " + json.dumps(data), flush=True)
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = self.out / f"{self.name}.json.tmp"
            tmp.write_text(json.dumps(self.results, indent=1))
            tmp.replace(self.out / f"{self.name}.json")

    def free(self):
        import gc

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------------------- sections
    def anchor(self) -> dict:
        model = self.model().train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        ids = self.ids(self.rows, self.width, model.config.vocab_size)

        def step():
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        base = self.reset_peak()
        t = self.timed(step)
        tokens = self.rows * self.width
        self.params = params
        out = {"tokens_per_s": round(tokens / t), "step_s": round(t, 4), "params": params,
               "tflops": round(6 * params * tokens / t / 1e12, 2), "mfu": self.mfu(6 * params * tokens / t),
               "peak_gib": self.peak_gib(base), "shape": [self.rows, self.width]}
        model = opt = None  # free the GPU memory before the next variant
        self.free()
        return out

    def _update_setup(self, chunk, checkpointing):
        from trainer.device import Compute, attach, enable_gradient_checkpointing
        from trainer.models import collate

        model = self.model().train()
        if checkpointing:
            enable_gradient_checkpointing(model)
        attach(model, Compute(device=self.device, autocast_bf16=True, micro_batch_size=self.rows, chunk_tokens=chunk))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0, fused=self.cuda)
        prompt = self.width // 4
        ids = self.ids(self.rows, self.width, model.config.vocab_size).cpu().tolist()
        batch = collate(ids, [prompt] * self.rows, [self.width - 1] * self.rows, 0)
        return model, opt, batch

    def update(self) -> dict:
        from trainer.algorithms import policy_step
        from trainer.config import PolicyTrainConfig
        from trainer.models import token_logprobs

        if not hasattr(self, "params"):
            self.params = sum(p.numel() for p in self.model().parameters())
            self.free()
        anchor = self.results.get("anchor", {}).get("tokens_per_s")
        cfg = PolicyTrainConfig(lr=1e-6)
        tokens = self.rows * self.width
        chunk = 2048 if not self.tiny else 64
        out = {}
        for name, c, ckpt in (("fused-chunks", chunk, False), ("fused-chunks+checkpointing", chunk, True),
                              ("full-logits", None, False)):
            try:
                model, opt, batch = self._update_setup(c, ckpt)
                with torch.no_grad():
                    old = token_logprobs(model, batch, temperature=0.8)
                adv = torch.randn(self.rows, generator=torch.Generator().manual_seed(1))
                base = self.reset_peak()
                t = self.timed(lambda: policy_step(model, opt, batch, old, adv, cfg, n=1, temperature=0.8))
                row = {"tokens_per_s": round(tokens / t), "step_s": round(t, 4),
                       "tflops": round(6 * self.params * tokens / t / 1e12, 2),
                       "mfu": self.mfu(6 * self.params * tokens / t), "peak_gib": self.peak_gib(base),
                       "chunk_tokens": c, "checkpointing": ckpt}
                if anchor:
                    row["vs_anchor"] = round(tokens / t / anchor, 3)
                out[name] = row
                print(f"[update] {name}: {json.dumps(row)}", flush=True)
                model = opt = None  # free the GPU memory before the next variant
            except Exception as e:  # one variant's failure (memory, say) keeps the others
                out[name] = {"error": f"{type(e).__name__}: {e}"[:400]}
                print(f"[update] {name}: FAILED {out[name]['error']}", flush=True)
            self.free()
        return out

    def memory(self) -> dict:
        vocab = self.config().vocab_size
        shape = [self.rows, self.width, vocab]
        base = self.reset_peak()
        x = torch.empty(shape, dtype=torch.bfloat16, device=self.device).normal_()
        bf16 = (torch.cuda.memory_allocated() - base) if self.cuda else x.numel() * x.element_size()
        y = x.float()
        fp32 = (torch.cuda.memory_allocated() - base - bf16) if self.cuda else y.numel() * y.element_size()
        del x, y
        self.free()
        return {"logits_shape": shape, "bf16_bytes": bf16, "bf16_gb": round(bf16 / 1e9, 2),
                "fp32_copy_bytes": fp32, "fp32_copy_gb": round(fp32 / 1e9, 2),
                "measured": "torch.cuda.memory_allocated" if self.cuda else "numel x element size (CPU)"}

    def profile(self) -> dict:
        from torch.profiler import ProfilerActivity, profile

        from trainer.algorithms import policy_step
        from trainer.config import PolicyTrainConfig
        from trainer.models import token_logprobs

        model, opt, batch = self._update_setup(2048 if not self.tiny else 64, False)
        with torch.no_grad():
            old = token_logprobs(model, batch, temperature=0.8)
        adv = torch.randn(self.rows, generator=torch.Generator().manual_seed(1))
        cfg = PolicyTrainConfig(lr=1e-6)
        policy_step(model, opt, batch, old, adv, cfg, n=1, temperature=0.8)  # warm-up
        self.sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with profile(activities=acts) as prof:
            with torch.no_grad():
                token_logprobs(model, batch, temperature=0.8)  # a no-grad scoring pass (old log-probs)
            policy_step(model, opt, batch, old, adv, cfg, n=1, temperature=0.8)
            self.sync()
        key = "cuda_time_total" if self.cuda else "cpu_time_total"
        events = prof.key_averages()
        table = events.table(sort_by=key, row_limit=30)
        attr = "device_time_total" if self.cuda else "cpu_time_total"
        top = sorted(events, key=lambda e: getattr(e, attr, 0) or 0, reverse=True)[:15]
        total = sum((getattr(e, "self_device_time_total" if self.cuda else "self_cpu_time_total", 0) or 0)
                    for e in events)
        rows = [{"op": e.key[:80], "ms": round((getattr(e, attr, 0) or 0) / 1000, 2), "calls": e.count}
                for e in top]
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "profile.txt").write_text(f"one no-grad scoring pass + one policy update, {self.rows} x "
                                                  f"{self.width} tokens, sorted by {key}\n\n{table}\n")
        print(table, flush=True)
        model = opt = None  # free the GPU memory before the next variant
        self.free()
        return {"sorted_by": key, "self_total_ms": round(total / 1000, 2), "top": rows}

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.gpu_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and small shapes (the CPU rehearsal)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for NAME.json and profile.txt")
    ap.add_argument("--name", default="bench", help="the JSON file's name in --out (NAME.json)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-bench: no GPU here; use --device cpu --tiny for the CPU rehearsal")
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench = Bench(args)
    print(f"gpu-bench: {bench.results['device']}, torch {torch.__version__}, "
          f"{'tiny' if args.tiny else 'Qwen2-0.5B-shaped'}, bf16 peak {bench.peak} TFLOP/s", flush=True)
    failed = 0
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        if name not in SECTIONS:
            print(f"gpu-bench: unknown section {name!r} (known: {', '.join(SECTIONS)})")
            return 2
        t0 = time.time()
        try:
            data = getattr(bench, name)()
            data["section_s"] = round(time.time() - t0, 1)
            bench.emit(name, data)
        except Exception as e:  # noqa: BLE001 - one section's failure never loses the others
            failed += 1
            traceback.print_exc()
            bench.emit(name, {"error": f"{type(e).__name__}: {e}"[:500], "section_s": round(time.time() - t0, 1)})
        bench.free()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
