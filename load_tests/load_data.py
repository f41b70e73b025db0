"""Request bodies for the load tests (load_tests/locustfile.py, load_tests/run_load.py): real GSM8K solutions and
the demo task. No locust import here (locust monkey-patches the process it is imported in)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GSM8K_DIR = Path(os.environ.get("REPIRL_GSM8K_DIR", REPO.parent / "shared" / "data" / "gsm8k"))
MAX_CHARS = int(os.environ.get("REPIRL_LOAD_MAX_CHARS", "1500"))
SEARCH_N = int(os.environ.get("REPIRL_LOAD_SEARCH_N", "4"))
# candidate sets come from the first POOL questions of each source, so sets recur (as a training run's groups do)
# and their shared prefixes are served from the cache; /v1/score items come from all of them
POOL = int(os.environ.get("REPIRL_LOAD_POOL", "64"))


def _steps(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]  # GSM8K: one step per line


def load_gsm8k(max_chars: int = MAX_CHARS) -> list[tuple[str, list[list[str]]]]:
    """(question, [reference steps, sampled solutions' steps...]) per GSM8K test question that fits max_chars."""
    path = GSM8K_DIR / "model_solutions.jsonl"
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            sols = [_steps(row["ground_truth"])] + [_steps(v["solution"]) for k, v in row.items()
                                                    if isinstance(v, dict) and "solution" in v]
            sols = [s for s in sols if s and len(row["question"]) + sum(map(len, s)) <= max_chars]
            if sols:
                out.append((row["question"], sols))
    return out


def load_demo(n: int = 500) -> list[tuple[str, list[str]]]:
    """The demo task (the synthetic arithmetic the demo policy was trained on): questions and reference steps."""
    from repirl.tasks.arithmetic import ArithmeticTask

    return [(p.question, list(p.steps)) for p in ArithmeticTask().sample(n, seed=4242, prefix="load")]


def _wrong(step: str, rng: random.Random) -> str:
    """The same step with its last number changed (a plausible arithmetic slip)."""
    digits = [i for i, ch in enumerate(step) if ch.isdigit()]
    if not digits:
        return step + " (check)"
    i = digits[-1]
    return step[:i] + str((int(step[i]) + rng.randint(1, 9)) % 10) + step[i + 1:]


GSM8K: list = []
DEMO: list = []


def load() -> None:
    """Fills GSM8K and DEMO (once)."""
    if not DEMO:
        GSM8K.extend(load_gsm8k())
        DEMO.extend(load_demo())


def score_items(rng: random.Random) -> list[dict]:
    items = []
    for _ in range(rng.randint(1, 4)):
        if GSM8K and rng.random() < 0.7:
            question, sols = rng.choice(GSM8K)
            steps = rng.choice(sols)
        else:
            question, steps = rng.choice(DEMO)
        items.append({"question": question, "steps": steps})
    return items


def candidate_set(rng: random.Random) -> tuple[str, list[dict]]:
    """Candidates sharing a prefix: the reference's first k steps, then the reference's rest, or a slip at step k
    (and what follows it unchanged), or a sampled solution (GSM8K)."""
    if GSM8K and rng.random() < 0.5:
        question, sols = rng.choice(GSM8K[:POOL])
        ref = sols[0]
    else:
        question, ref = rng.choice(DEMO[:POOL])
        sols = [ref]
    cands = [{"steps": ref}]
    for j in range(1, len(ref)):
        cands.append({"steps": ref[:j] + [_wrong(ref[j], rng)] + ref[j + 1:]})
    cands += [{"steps": s} for s in sols[1:]]
    return question, cands[:8]
