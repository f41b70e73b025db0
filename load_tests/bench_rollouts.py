"""Rollout speed: the same batch through vLLM (in-process, what the trainer uses) and transformers generate.

    .venv/bin/python load_tests/bench_rollouts.py [--policy runs/demo/policy] [--prompts 32] [--n 8] [--tokens 64]

Both engines sample exactly `--tokens` new tokens per sequence (EOS ignored), so the work is identical; the script
prints tokens/s for each and the ratio vLLM / transformers measured in this run. Without --policy (or if the folder
is missing) a random tiny Qwen2 policy is built in code.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_results import emit  # noqa: E402 - load_tests/ is the script's directory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="runs/demo/policy")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from repirl.artifacts import load_policy_config
    from repirl.tasks.arithmetic import ArithmeticTask
    from repirl.trajectory import TrajectoryEncoder
    from trainer.models import build_tiny_policy, load_causal_lm

    policy = Path(args.policy)
    if not (policy / "config.json").exists():
        policy = build_tiny_policy(Path(tempfile.mkdtemp()) / "tiny", seed=0, layers=4)
        print(f"(no policy at {args.policy}: using a random tiny policy built in code)")
    tok = AutoTokenizer.from_pretrained(policy)
    pcfg = load_policy_config(policy)
    enc = TrajectoryEncoder(tok, pcfg.prompt_template, pcfg.step_separator)
    prompts = [enc.prompt_ids(p.question) for p in ArithmeticTask().sample(args.prompts, seed=7)]
    total = args.prompts * args.n * args.tokens
    print(f"batch: {args.prompts} prompts x n={args.n} x {args.tokens} new tokens = {total} tokens; "
          f"torch threads {torch.get_num_threads()}")

    model = load_causal_lm(policy).eval()
    eos = tok.eos_token_id

    def hf_once():
        torch.manual_seed(0)
        flat = [p for p in prompts for _ in range(args.n)]
        width = max(map(len, flat))
        ids = torch.full((len(flat), width), eos)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(flat):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.tokens,
                                 min_new_tokens=args.tokens, do_sample=True, temperature=0.8, top_k=None, top_p=None,
                                 pad_token_id=eos)
        assert out.shape[1] - width == args.tokens

    from vllm import SamplingParams

    from repirl.vllm_setup import start_llm

    llm = start_llm(policy, "the benchmark policy", dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
                    max_num_batched_tokens=32768)  # see trainer/rollouts.py: no chunked prefill with seeded requests
    params = SamplingParams(n=args.n, temperature=0.8, max_tokens=args.tokens, ignore_eos=True, seed=0, logprobs=0)

    def vllm_once():
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        assert sum(len(c.token_ids) for o in outs for c in o.outputs) == total

    def best_of(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_hf, t_vllm = best_of(hf_once), best_of(vllm_once)
    print(f"transformers generate: {t_hf:.3f} s  ({total / t_hf:,.0f} tokens/s)")
    print(f"vLLM (in-process):     {t_vllm:.3f} s  ({total / t_vllm:,.0f} tokens/s)")
    print(f"speed-up vLLM / transformers: {t_hf / t_vllm:.1f}x  (best of {args.repeats}, same batch, same run)")
    emit("rollouts", f"vLLM (in-process) vs transformers generate: {args.prompts} prompts x n={args.n} x "
         f"{args.tokens} tokens (tokens/s)", t_hf / t_vllm, f"{total / t_vllm:,.0f} vs {total / t_hf:,.0f} tokens/s")


if __name__ == "__main__":
    main()
