"""Does best-of-N through the service reach the accuracy the evaluator reports for the same PRM and policy?

    python load_tests/check_service_vs_eval.py --policy runs/demo/policy --prm runs/demo-repirl/prm \
        [--problems 40] [--n 16] [--temperature 0.8] [--engine hf|vllm] [--harder]

1. The evaluator's path, in this process: `trainer.evaluation.bestofn.sample_problems` (run_search, best-of-n) on
   the held-out problems, every sample scored by the PRM, the pick made by `metrics.select` (repirl.search.choose).
2. The service: `python -m server --prm eval=PRM --policy hf:POLICY --engine hf` (or vllm:), started here on a free
   port; POST /v1/best-of-n per problem with the same n, temperature, seed, max steps and step tokens.
It prints both accuracies, how many problems got the same answer, and exits 1 when the service's accuracy is more
than two standard errors (of a difference of two proportions) below the evaluator's. With the transformers engines
the two runs sample identically (seeded), so the answers should agree problem by problem.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"service exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(1)
    raise SystemExit("service not ready in time")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="runs/demo/policy")
    ap.add_argument("--prm", default="runs/demo/prm")
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--max-step-tokens", type=int, default=32)
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="policy + PRM engine on both sides")
    ap.add_argument("--harder", action="store_true", help="the evaluator's harder problems (more steps, larger numbers)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    from repirl.artifacts import load_prm_config, scoring_revision
    from repirl.policy import load_policy
    from repirl.scoring.loader import load_scorer
    from repirl.tasks.arithmetic import ArithmeticTask
    from trainer.evaluation import bestofn
    from trainer.evaluation.metrics import select

    # --- the evaluator, in process -----------------------------------------------------------------------------
    policy = load_policy(args.policy, engine="transformers" if args.engine == "hf" else "vllm")
    scorer = load_scorer(args.prm, engine=args.engine, name="eval")
    task_cfg = bestofn.policy_task_config(policy)
    task_cfg = bestofn.harder(task_cfg) if args.harder else task_cfg
    task = ArithmeticTask(task_cfg)
    problems = bestofn.heldout_problems(task_cfg, args.problems)
    sample_cfg = bestofn.SampleConfig(n=args.n, temperature=args.temperature, seed=args.seed,
                                      max_steps=args.max_steps, max_step_tokens=args.max_step_tokens)
    t0 = time.time()
    samples = bestofn.sample_problems(policy, task, problems, sample_cfg)
    bestofn.score_samples(scorer, "eval", [p.question for p in problems], samples)
    prob = bestofn.is_probability_scorer(scorer)
    ours = [select(ss, "naive", "eval", prob) for ss in samples]
    t_eval = time.time() - t0
    del policy, scorer

    # --- the service -------------------------------------------------------------------------------------------
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spec = ("hf:" if args.engine == "hf" else "vllm:") + str(args.policy)
    cmd = [sys.executable, "-m", "server", "--prm", f"eval={args.prm}", "--policy", spec, "--engine", args.engine,
           "--port", str(port)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(base, proc)
        t0 = time.time()
        theirs = []
        for i, p in enumerate(problems):
            r = post(base + "/v1/best-of-n", {
                "question": p.question, "model": "eval", "n": args.n, "temperature": args.temperature,
                "seed": sample_cfg.seed + 7919 * i,  # the evaluator's per-problem seed (bestofn.sample_problems)
                "max_steps": args.max_steps, "max_step_tokens": args.max_step_tokens, "select": "naive",
                "return_candidates": False})
            theirs.append(r)
        t_service = time.time() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    m = len(problems)
    eval_ok = [s is not None and s.correct for s in ours]
    svc_ok = [task.check(p, r["steps"]).correct for p, r in zip(problems, theirs)]
    same = sum((s.answer if s else None) == r["answer"] for s, r in zip(ours, theirs))
    same_pick = sum((s.steps if s else []) == r["steps"] for s, r in zip(ours, theirs))
    a, b = sum(eval_ok) / m, sum(svc_ok) / m
    se = math.sqrt((a * (1 - a) + b * (1 - b)) / m) or 1 / m
    ok = b >= a - 2 * se
    figures = {"problems": m, "n": args.n, "temperature": args.temperature, "engine": args.engine,
               "task": "harder" if args.harder else "in-distribution", "policy": str(args.policy), "prm": str(args.prm),
               "prm_revision": scoring_revision(load_prm_config(args.prm)),
               "evaluator_accuracy": a, "service_accuracy": b, "same_answer": same, "same_solution": same_pick, "difference": b - a,
               "two_se": 2 * se, "evaluator_seconds": round(t_eval, 1), "service_seconds": round(t_service, 1),
               "passed": ok}
    print(json.dumps(figures, indent=1))
    print(f"best-of-{args.n}: evaluator {a:.3f}, service {b:.3f} ({same}/{m} problems same answer) -> "
          f"{'OK' if ok else 'FAIL'}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
