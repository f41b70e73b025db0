"""The floor that KV-block granularity puts under `bench_search.py`'s "vllm+cache" row (issue 23 item 6).

Runs the bench's beam searches (same problems, seeds and PRM; the KV-reusing transformers PRM decides the tree),
records every PRM call's token ids, and replays them against an ideal block prefix cache of block size B: unbounded,
never evicted, and every full block of every sequence computed before (earlier calls and earlier items of the same
call) is readable. An item whose steps are all in the step-prefix cache costs nothing (the service's step cache, as
bench_search.StepCacheScorer); any other item computes `len - hit`, hit = the longest computed-before prefix that is a
whole number of blocks and leaves at least one token (vLLM recomputes the last token of a fully cached prompt:
v1/core/kv_cache_manager.py `get_computed_blocks`, max_cache_hit_length = num_tokens - 1). B=1 is a token-granular
prefix cache (the transformers engine's reuse). Whatever repirl's vLLM engine does, it cannot compute fewer tokens
than this replay at its block size.

Usage: OMP_NUM_THREADS=1 python load_tests/bench_block_floor.py [--problems 8] [--blocks 1 16 32]
"""

from __future__ import annotations

import argparse
import hashlib
from array import array

from bench_search import HELDOUT_SEED, _forget, _models, _questions  # noqa: F401 - load_tests/ is the script's dir


class Recorder:
    """A StepScorer that records each call's trajectories (ids, step ends) and scores with the inner scorer."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, items):
        self.calls.append([self.inner.encoder.encode(q, steps) for q, steps in items])
        return self.inner.score(items)


def _key(ids) -> bytes:
    return hashlib.blake2b(array("q", ids).tobytes(), digest_size=16).digest()


def replay(calls, block: int) -> int:
    """Tokens computed by an ideal block-`block` prefix cache behind the step cache (module doc)."""
    blocks: set[bytes] = set()  # prefixes of whole blocks computed so far
    steps: set[bytes] = set()  # step prefixes (ids through a step's end) scored so far
    computed = 0
    for call in calls:
        for t in call:
            ends = [e for _, e in t.step_spans]
            if all(_key(t.ids[:e]) in steps for e in ends):
                continue
            n, hit = len(t.ids), 0
            for k in range(block, n, block):  # k <= n - 1: one token is always computed
                if _key(t.ids[:k]) not in blocks:
                    break
                hit = k
            computed += n - hit
            blocks.update(_key(t.ids[:k]) for k in range(block, n + 1, block))
            steps.update(_key(t.ids[:e]) for e in ends)
    return computed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy")
    ap.add_argument("--prm")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--max-step-tokens", type=int, default=64)
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 16, 32])
    args = ap.parse_args()

    from repirl.artifacts import load_prm_config
    from repirl.policy import load_policy
    from repirl.scoring.hf_engine import HFScorer
    from repirl.search import SearchParams, run_search

    policy_dir, prm_dir = _models(args)
    policy = load_policy(policy_dir, engine="transformers")
    scorer = HFScorer(prm_dir, load_prm_config(prm_dir), kv_cache_tokens=1 << 20)
    tree, computed, per_search = 0, 0, []
    for i, q in enumerate(_questions(policy_dir, args.problems)):
        _forget(scorer)
        rec = Recorder(scorer)
        st = run_search(policy, rec, q, SearchParams(strategy="beam", n=16, beam_width=4, max_steps=args.max_steps,
                                                     max_step_tokens=args.max_step_tokens, seed=1000 + i)).stats
        tree, computed = tree + st.tree_tokens, computed + st.prm_tokens_computed
        per_search.append((st.tree_tokens, rec.calls))
    print(f"policy {policy_dir}  prm {prm_dir}  {len(per_search)} beam searches (n=16, width 4): tree tokens {tree}, "
          f"kv-reuse computed {computed} ({computed / max(tree, 1):.3f})")
    for b in args.blocks:
        floor = sum(replay(calls, b) for _, calls in per_search)
        print(f"block {b:>3}: floor {floor} / {tree} tree tokens = {floor / max(tree, 1):.3f}")


if __name__ == "__main__":
    main()
