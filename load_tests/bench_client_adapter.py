"""Completions scored per second through the TRL adapter (repirl_client.adapters.trl.PRMReward: batched requests,
bounded concurrency) against the same kind of items sent one per request, all measured in this run.

The service is `python -m server` in a subprocess (the client does not share the server's GIL), on a tiny random-
weight token-reward PRM built in code (or --prm DIR), transformers engine, one torch thread. Every measurement
scores fresh items (distinct numbers), so the prefix cache never serves one from an earlier measurement; each runs
`--rounds` times after a warm-up and the median is reported.

  adapter          PRMReward(...)(prompts, completions): 64 items per request, 4 requests in flight
  1/request x1     client.score(question, steps) per completion in a loop (what a hand-written reward does)
  1/request x4     the same with 4 threads (the adapter's concurrency, without batching)

Usage: python load_tests/bench_client_adapter.py [--completions 256] [--rounds 3] [--prm DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "clients" / "python"))  # works without `pip install ./clients/python` too


def make_completions(n: int, seed: int) -> tuple[list[str], list[str]]:
    """n (question, completion) pairs of 3-4 arithmetic steps, distinct across seeds."""
    rng = random.Random(seed)
    questions, completions = [], []
    for _ in range(n):
        a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(2, 9)
        steps = [f"{a}+{b}={a + b}", f"{a + b}*{c}={(a + b) * c}"]
        if rng.random() < 0.5:
            steps.append(f"{(a + b) * c}-{b}={(a + b) * c - b}")
        steps.append(f"Answer: {eval(steps[-1].split('=')[0])}")
        questions.append(f"Start with {a}. Add {b}, then multiply by {c}. What is the result? (#{seed})")
        completions.append("\n\n".join(steps))
    return questions, completions


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--completions", type=int, default=256, help="completions per measurement (a GRPO batch)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prm", help="a PRM folder (default: a tiny random one built here)")
    args, _ = ap.parse_known_args(argv)  # run_all.py passes its own flags to every benchmark

    from repirl_client import Client
    from repirl_client.adapters.trl import PRMReward
    from tests.server.conftest import ServerProc

    with tempfile.TemporaryDirectory() as tmp:
        prm = args.prm
        if prm is None:
            from repirl.scoring.tiny_prms import build_tiny_prm

            prm = str(build_tiny_prm(Path(tmp) / "prm", "token-reward"))
        srv = ServerProc(["--engine", "hf", "--prm", f"prm={prm}"], env={"REPIRL_TORCH_THREADS": "1"},
                         log=Path(tmp) / "server.log")
        try:
            srv.wait_ready(timeout=300)
        except Exception:
            print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        try:
            client = Client(base_url=srv.url, timeout=120)
            reward = PRMReward(client, max_items_per_request=64, max_concurrency=4)
            n = args.completions

            def adapter(seed):
                qs, cs = make_completions(n, seed)
                out = reward(prompts=qs, completions=cs, question=qs)
                assert sum(r is not None for r in out) == n, out
                return reward.scorer.requests_sent

            def one_by_one(seed, threads):
                qs, cs = make_completions(n, seed)

                def one(k):
                    return client.score(question=qs[k], steps=cs[k].split("\n\n")).data[0].score

                if threads == 1:
                    return [one(k) for k in range(n)]
                with ThreadPoolExecutor(threads) as pool:
                    return list(pool.map(one, range(n)))

            runs = {"adapter": lambda s: adapter(s), "1/request x1": lambda s: one_by_one(s, 1),
                    "1/request x4": lambda s: one_by_one(s, 4)}
            for name, fn in runs.items():  # warm-up: connections, engine, tokenizer caches
                fn(10_000 + len(name))
            seed, rates = 0, {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, fn in runs.items():  # interleaved: load on the shared machine hits all alike
                    seed += 1
                    t0 = time.perf_counter()
                    fn(seed)
                    rates[name].append(n / (time.perf_counter() - t0))
            before = reward.scorer.requests_sent
            adapter(99_999)
            per_call = reward.scorer.requests_sent - before
        finally:
            srv.stop()

    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{n} completions per measurement, median of {args.rounds} rounds (completions/s; all rounds in brackets)")
    for name, r in rates.items():
        print(f"  {name:<14} {med[name]:8.1f}  [{', '.join(f'{x:.1f}' for x in r)}]")
    print(f"  adapter requests per {n} completions: {per_call} (vs {n} one per request)")
    print(f"adapter vs 1/request x1: {med['adapter'] / med['1/request x1']:.2f}x")
    print(f"adapter vs 1/request x4: {med['adapter'] / med['1/request x4']:.2f}x")
    from bench_results import emit

    for base in ("1/request x1", "1/request x4"):
        emit("SDK adapter", f"TRL PRMReward vs client.score per completion on {base[-1]} thread(s), {n} completions "
             "(completions/s)", med["adapter"] / med[base], f"{med['adapter']:.0f} vs {med[base]:.0f} /s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
