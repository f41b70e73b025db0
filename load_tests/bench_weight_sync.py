"""Weight sync to a running vLLM engine: in memory (trainer/weight_sync.py) vs save-to-disk + reload (the way the
trainer synced before issue 13), for the same model and engine.

    .venv/bin/python load_tests/bench_weight_sync.py [--hidden 128 --layers 4] [--repeats 5]

Each round perturbs the trainer-side model, then syncs it both ways (timed), and after each sync checks that the
engine's log-probs of a sampled batch equal the trainer's own (max |diff|): a fast sync that loaded nothing would
fail that check. Prints the median time of each way and the ratio disk / memory. Defaults: a random tiny Qwen2 of the
demo policy's size (hidden 128, 4 layers); `--hidden 896 --layers 24 --vocab 151936` is Qwen2-0.5B's shape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_results import emit  # noqa: E402 - load_tests/ is the script's directory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=None, help="default: 4 x hidden")
    ap.add_argument("--vocab", type=int, default=None, help="default: the tiny tokenizer's (259)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--in-process", action="store_true",
                    help="engine core in this process (rollouts.engine_in_process): tensors are handed over")
    args = ap.parse_args()

    import torch
    from transformers import Qwen2ForCausalLM

    from repirl.artifacts import PolicyConfig, save_model_folder
    from repirl.tiny import build_tokenizer, tiny_qwen2_config
    from repirl.vllm_setup import quiet_logs
    from trainer.models import collate, token_logprobs
    from trainer.rollouts import VLLMEngine
    from trainer.weight_sync import engine_weights, push_weights, reload_from_disk

    quiet_logs()
    torch.manual_seed(0)
    tok = build_tokenizer()
    vocab = args.vocab or len(tok)
    cfg = tiny_qwen2_config(vocab, hidden_size=args.hidden, num_layers=args.layers,
                            intermediate_size=args.intermediate or 4 * args.hidden, eos_token_id=tok.eos_token_id,
                            num_key_value_heads=max(1, args.hidden // 64 // 4))
    model = Qwen2ForCausalLM(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    root = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    folder = save_model_folder(model, tok, root / "policy", policy_config=PolicyConfig())
    live = root / "live_policy"
    print(f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {vocab}: {params / 1e6:.2f} M parameters "
          f"({params * 4 / 2**20:.1f} MiB in float32); torch threads {torch.get_num_threads()}")

    engine = VLLMEngine(folder, seed=0, max_model_len=256, in_process=args.in_process)
    prompts = [tok.encode(f"Question: {i} + {i}?\nSolution:\n") for i in range(4)]

    def check() -> float:
        gens = engine.generate(prompts, 2, 0.8, 1.0, 16, seed=1)
        rows = [(p, ids, lps) for p, comps in zip(prompts, gens) for ids, lps in comps if ids]
        seqs = [p + ids for p, ids, _ in rows]
        batch = collate(seqs, [len(p) for p, _, _ in rows], [len(s) for s in seqs], tok.pad_token_id)
        with torch.no_grad():
            lp = token_logprobs(model, batch, temperature=0.8)
        return max(abs(a - b) for i, (p, ids, lps) in enumerate(rows)
                   for a, b in zip(lp[i, len(p) : len(p) + len(ids)].tolist(), lps))

    def perturb() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)

    def via_disk() -> float:
        t = time.perf_counter()
        model.save_pretrained(live)  # what Trainer._save_live_policy wrote every iteration
        reload_from_disk(engine.llm, live)
        return time.perf_counter() - t

    def via_memory() -> float:
        t = time.perf_counter()
        infos.append(push_weights(engine.llm, engine_weights(model)))
        return time.perf_counter() - t

    infos: list[dict] = []
    perturb()
    via_disk(), via_memory()  # warm-up: first-call costs (imports, pickling the worker function)
    t_disk, t_mem, diffs = [], [], []
    for _ in range(args.repeats):
        perturb()
        t_disk.append(via_disk())
        diffs.append(("disk", check()))
        perturb()
        t_mem.append(via_memory())
        diffs.append(("memory", check()))
    worst = {k: max(d for m, d in diffs if m == k) for k in ("disk", "memory")}
    d, m = statistics.median(t_disk), statistics.median(t_mem)
    print(f"save + reload from disk: {d * 1000:8.1f} ms (median of {args.repeats}); log-prob |diff| <= {worst['disk']:.1e}")
    print(f"in memory:               {m * 1000:8.1f} ms (median of {args.repeats}); log-prob |diff| <= {worst['memory']:.1e}")
    print(f"speed-up in memory / disk: {d / m:.1f}x  (target >= 5x)")
    print(f"in-memory pushes: {infos[-1]['mode']}, worker path {infos[-1]['path']}, "
          f"{infos[-1]['bytes'] / 2**20:.1f} MiB; worker-side median "
          f"{statistics.median(i['worker_seconds'] for i in infos[1:]) * 1000:.1f} ms")
    ok = max(worst.values()) < 1e-3
    if not ok:
        print("FAILED: the engine's log-probs do not match the trainer's after a sync")
    where = "engine in process" if args.in_process else "engine core in its own process"
    emit("weight_sync", f"vLLM weight sync in memory vs save + reload ({params / 1e6:.2f} M params, {where})", d / m,
         f"{m * 1000:.1f} vs {d * 1000:.1f} ms; log-prob diff {max(worst.values()):.1e}", target=">= 5x")
    engine.llm.llm_engine.engine_core.shutdown()
    sys.stdout.flush()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
