"""trainer/gpu_bench.py's `kernels` and `rollouts` sections (a mixin of its Bench: self.device, self.timed,
self.reset_peak, self.peak_gib, self.free, self.sync, self.model, self.config)."""

from __future__ import annotations

import time

import torch


class KernelAndRolloutSections:
    def kernels(self) -> dict:
        from trainer.logprobs import linear_logprobs

        cfg = self.config()
        n, hidden, vocab = (8192, cfg.hidden_size, cfg.vocab_size) if not self.tiny else (512, cfg.hidden_size,
                                                                                          cfg.vocab_size)
        g = torch.Generator(device="cpu").manual_seed(0)
        h0 = (torch.randn(n, hidden, generator=g) * 0.5).to(self.device, torch.bfloat16)
        w = torch.nn.Parameter((torch.randn(vocab, hidden, generator=g) * 0.02).to(self.device))
        t = torch.randint(0, vocab, (n,), generator=g).to(self.device)
        g_lp = torch.randn(n, generator=g).to(self.device)

        def full():
            h = h0.detach().requires_grad_(True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = h @ w.t()
            logp = torch.log_softmax(logits.float() / 0.8, -1)
            lp = logp.gather(-1, t[:, None]).squeeze(-1)
            ent = -(logp.exp() * logp).sum(-1)
            ((lp * g_lp).sum() + 0.01 * ent.sum()).backward()
            w.grad = None
            return lp.detach()

        def fused(chunk, with_entropy=True):
            def run():
                h = h0.detach().requires_grad_(True)
                lp, ent = linear_logprobs(h, w, t, 0.8, chunk, with_entropy, torch.bfloat16)
                ((lp * g_lp).sum() + (0.01 * ent.sum() if with_entropy else 0)).backward()
                w.grad = None
                return lp.detach()
            return run

        chunks = (1024, 4096) if not self.tiny else (128,)
        variants = ([("full-fp32-logits", full)] + [(f"fused-chunk{c}", fused(c)) for c in chunks]
                    + [(f"fused-chunk{chunks[-1]}-no-entropy", fused(chunks[-1], False))])
        out = {"positions": n, "vocab": vocab, "temperature": 0.8}
        ref = None
        for name, fn in variants:
            try:
                base = self.reset_peak()
                lp = fn()
                ref = lp if ref is None else ref
                ms = self.timed(fn) * 1000
                out[name] = {"ms": round(ms, 2), "peak_gib": self.peak_gib(base),
                             "max_abs_diff_vs_full": round(float((lp - ref).abs().max()), 5)}
            except Exception as e:  # noqa: BLE001
                out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            print(f"[kernels] {name}: {out[name]}", flush=True)
            self.free()
        out["liger"] = self._liger(h0, w, t, g_lp, ref)
        print(f"[kernels] liger: {out['liger']}", flush=True)
        return out

    def _liger(self, h0, w, t, g_lp, ref) -> dict:
        """liger-kernel's fused linear cross-entropy (Triton; GPU only) on the same positions, reduction "none"
        (per-token losses with a per-token gradient, as a PPO loss needs), the temperature folded into the weight
        (W / T); it has no entropy, so compare it with the trainer's no-entropy variant."""
        if not self.cuda:
            return {"skipped": "GPU only (Triton kernels)"}
        try:
            from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
        except Exception as e:  # noqa: BLE001 - not carried, or triton missing
            return {"skipped": f"liger-kernel does not import: {type(e).__name__}: {e}"[:300]}
        out = {"version": _dist_version("liger-kernel")}
        wb = (w.detach() / 0.8).to(torch.bfloat16).requires_grad_(True)
        loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="none")

        def run():
            h = h0.detach().requires_grad_(True)
            lp = -loss_fn(wb, h, t).float()
            (lp * g_lp).sum().backward()
            wb.grad = None
            return lp.detach()

        try:
            base = self.reset_peak()
            lp = run()
            out["max_abs_diff_vs_full"] = round(float((lp - ref).abs().max()), 5) if ref is not None else None
            out["ms"] = round(self.timed(run) * 1000, 2)
            out["peak_gib"] = self.peak_gib(base)
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{type(e).__name__}: {e}"[:300]
        return out

    def rollouts(self) -> dict:
        import copy

        from trainer.device import Compute, attach
        from trainer.rollouts import HFEngine

        model = self.model().train()
        attach(model, Compute(device=self.device, autocast_bf16=True))
        prompts_n, n, new = (16, 8, 128) if not self.tiny else (4, 2, 16)
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(2, 250, (int(k),), generator=g).tolist()
                   for k in torch.randint(40, 80, (prompts_n,), generator=g)]
        eos = 1
        out = {"sequences": prompts_n * n, "max_new_tokens": new}

        def engine_run(engine):
            t0 = time.perf_counter()
            gens = engine.generate(prompts, n, 0.8, 1.0, new, seed=0)
            self.sync()
            dt = time.perf_counter() - t0
            toks = sum(len(ids) for grp in gens for ids, _ in grp)
            return {"tokens_per_s": round(toks / dt), "tokens": toks, "seconds": round(dt, 2)}

        new_engine = HFEngine(model, eos, 0, replica_dtype=torch.bfloat16)  # the trainer's one-process bf16 GPU path
        old_engine = HFEngine(model, eos, 0, batch_size=64)  # the previous path: fp32 master + autocast, 64 rows
        # plain transformers generate, the baseline: a bf16 model, every row in one call
        plain = copy.deepcopy(model).to(torch.bfloat16).eval()
        flat = [p for p in prompts for _ in range(n)]
        width = max(map(len, flat))
        ids = torch.full((len(flat), width), 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(flat):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)

        def plain_run(max_new):
            t0 = time.perf_counter()
            with torch.no_grad():
                gen = plain.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=True,
                                     temperature=0.8, top_k=None, top_p=None, pad_token_id=0, eos_token_id=eos)
            self.sync()
            return gen[:, width:], time.perf_counter() - t0

        plain_run(4)  # warm-up (kernels, allocator)
        new_gen, dt = plain_run(new)
        # a second full run: the first on the H200 gave 1,236 tokens/s where an earlier plain script had 5,846
        out["plain_generate_first_run_s"] = round(dt, 2)
        again, dt2 = plain_run(new)
        if dt2 < dt:
            new_gen, dt = again, dt2
        toks = int(sum(((r != eos).cumprod(0)).sum() + (r == eos).any() for r in new_gen))  # up to the first EOS
        out["plain_generate_bf16"] = {"tokens_per_s": round(toks / dt), "tokens": toks, "seconds": round(dt, 2)}
        print(f"[rollouts] plain generate: {out['plain_generate_bf16']}", flush=True)
        plain = None
        self.free()
        short = lambda e: e.generate(prompts[:2], 2, 0.8, 1.0, 4, seed=0)  # noqa: E731 - warm-up
        for name, eng in (("trainer_hfengine", new_engine), ("previous_hfengine", old_engine)):
            try:
                short(eng)
                out[name] = engine_run(eng)
                out[name]["vs_plain"] = round(out[name]["tokens_per_s"] / out["plain_generate_bf16"]["tokens_per_s"], 3)
            except Exception as e:  # noqa: BLE001
                out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            print(f"[rollouts] {name}: {out[name]}", flush=True)
        del model, new_engine, old_engine
        self.free()
        return out


def _dist_version(name: str):
    try:
        import importlib.metadata as md

        return md.version(name)
    except Exception:  # noqa: BLE001
        return None
