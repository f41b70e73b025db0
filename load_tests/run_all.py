"""`make bench`: every load_tests/bench_*.py in turn (each prints its own measurements, taken in its own run), then
ONE table of every ratio with what it compares (collected from the scripts' `BENCH_RESULT` lines).

Usage: python load_tests/run_all.py [--quick] [--no-vllm] [--only scoring,search,rollouts,weight_sync,adapter]
  --quick    reduced sizes (1 round, 2 search problems, a smaller rollout batch, 64 completions): minutes, not tens
  --no-vllm  skip what needs vLLM (scoring on vLLM, the search's vLLM set-up, rollouts, weight sync)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_results import parse  # noqa: E402


def runs(quick: bool, vllm: bool) -> list[tuple[str, str, list[str]]]:
    """(group, script, args) in order."""
    rounds = ["--rounds", "1"] if quick else []
    out = [("scoring", "bench_scoring.py", ["--engine", "hf", *rounds])]
    if vllm:
        out.append(("scoring", "bench_scoring.py", ["--engine", "vllm", "--only", "123", *rounds]))
    out.append(("search", "bench_search.py", (["--problems", "2", "--max-steps", "4"] if quick else [])
                + ([] if vllm else ["--no-vllm"])))
    if vllm:
        out.append(("rollouts", "bench_rollouts.py",
                    ["--prompts", "8", "--n", "4", "--tokens", "32", "--repeats", "1"] if quick else []))
    if vllm:  # the trainer's weight push: engine core in its own process (vLLM's default) and in the trainer's
        reps = ["--repeats", "2" if quick else "5"]
        out.append(("weight_sync", "bench_weight_sync.py", reps))
        out.append(("weight_sync", "bench_weight_sync.py", [*reps, "--in-process"]))
    out.append(("adapter", "bench_client_adapter.py", ["--completions", "64", "--rounds", "1"] if quick else []))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--only", default="scoring,search,rollouts,weight_sync,adapter")
    args = ap.parse_args()
    from repirl.vllm_setup import vllm_available  # noqa: E402 (run from the repository root: make bench)

    vllm = not args.no_vllm and vllm_available()
    rows, failed, t_all = [], [], time.monotonic()
    for group, script, script_args in runs(args.quick, vllm):
        if group not in args.only.split(","):
            continue
        cmd = [sys.executable, str(HERE / script), *script_args]
        print(f"== {script} {' '.join(script_args)}", flush=True)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={"VLLM_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "1",
                                                                          **os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            row = parse(line)
            if row is None:
                print(line, end="", flush=True)
            else:
                rows.append(row)
        if proc.wait():
            failed.append(f"{script} {' '.join(script_args)} (exit {proc.returncode})")
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)

    print(f"\n## Benchmarks ({'--quick: reduced sizes, ' if args.quick else ''}{os.cpu_count()} CPUs, "
          f"{time.monotonic() - t_all:.0f} s in all)\n")
    print("| benchmark | compares | ratio | measured | target |")
    print("|---|---|---:|---|---|")
    for r in rows:
        print(f"| {r['benchmark']} | {r['compares']} | {r['ratio']:.2f}x | {r['detail']} | {r['target']} |")
    if not vllm:
        print("\n(vLLM not installed or --no-vllm: its rows are missing)")
    for f in failed:
        print(f"FAILED: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
