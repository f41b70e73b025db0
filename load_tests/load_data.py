"""Request bodies for the load tests (load_tests/locustfile.py, load_tests/run_load.py): real GSM8K solutions and
the demo task. No locust import here (locust monkey-patches the process it is imported in)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GSM8K_DIR = Path(os.environ.get("REPIRL_GSM8K_DIR", REPO.parent / "shared" / "data" / "gsm8k"))
# an optional character cap on top of the token sizing below (none by default: `size_to_service` fits the items to the
# served PRM's max_model_len)
MAX_CHARS = int(os.environ.get("REPIRL_LOAD_MAX_CHARS") or 0) or None
SEARCH_N = int(os.environ.get("REPIRL_LOAD_SEARCH_N", "4"))
# candidate sets come from the first POOL questions of each source, so sets recur (as a training run's groups do)
# and their shared prefixes are served from the cache; /v1/score items come from all of them
POOL = int(os.environ.get("REPIRL_LOAD_POOL", "64"))


def _steps(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]  # GSM8K: one step per line


def load_gsm8k(max_chars: int | None = MAX_CHARS) -> list[tuple[str, list[list[str]]]]:
    """(question, [reference steps, sampled solutions' steps...]) per GSM8K test question (solutions within
    max_chars characters when given)."""
    path = GSM8K_DIR / "model_solutions.jsonl"
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            sols = [_steps(row["ground_truth"])] + [_steps(v["solution"]) for k, v in row.items()
                                                    if isinstance(v, dict) and "solution" in v]
            sols = [s for s in sols if s and (max_chars is None or len(row["question"]) + sum(map(len, s)) <= max_chars)]
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
# room left under max_model_len: candidate_set's slip can append " (check)" to a step (8 byte-level tokens)
MARGIN_TOKENS = 16


def load() -> None:
    """Fills GSM8K and DEMO (once)."""
    if not DEMO:
        GSM8K.extend(load_gsm8k())
        DEMO.extend(load_demo())


def served_prm(host: str, headers: dict | None = None, prm: str | None = None) -> dict:
    """The PRM's card from the service's /v1/models (`prm`, or the first PRM listed)."""
    import httpx

    r = httpx.get(host.rstrip("/") + "/v1/models", headers=headers or {}, timeout=30)
    r.raise_for_status()
    cards = [c for c in r.json()["data"] if c.get("kind") == "prm" and (prm is None or c["id"] == prm)]
    if not cards:
        raise RuntimeError(f"{host}/v1/models lists no PRM{f' named {prm!r}' if prm else ''}")
    return cards[0]


def prefix_lengths(card: dict):
    """(counter, exact): counter(question, steps) -> token count through each step. Exact when the card's `root` is
    a PRM folder this machine can read (the service's own tokenizer and trajectory contract); otherwise an upper
    bound for byte-level BPE tokenizers (one token per UTF-8 byte, the prompt counted as question + 64)."""
    root = Path(card.get("root") or "")
    if (root / "prm.json").is_file():
        from transformers import AutoTokenizer

        from repirl.artifacts import load_prm_config
        from repirl.trajectory import TrajectoryEncoder

        cfg = load_prm_config(root)
        enc = TrajectoryEncoder(AutoTokenizer.from_pretrained(root), cfg.prompt_template, cfg.step_separator)

        def exact(question: str, steps: list[str]) -> list[int]:
            t = enc.encode(question, steps)
            return [end for _, end in t.step_spans]
        return exact, True
    sep = len((card.get("step_separator") or "\n\n").encode())

    def bound(question: str, steps: list[str]) -> list[int]:
        out, n = [], len(question.encode()) + 64
        for step in steps:
            n += len(step.encode()) + sep
            out.append(n)
        return out
    return bound, False


def fit_to_context(max_len: int, counter, margin: int = MARGIN_TOKENS) -> dict:
    """Sizes GSM8K and DEMO (loaded) to a PRM of `max_len` tokens: a solution too long is cut to its longest prefix
    of whole steps that fits (a prefix is still a trajectory to score), one whose first step does not fit is left
    out, a question with no solution left is left out. Returns what was kept, trimmed and left out."""
    budget = max_len - margin
    stats = {"max_model_len": max_len, "solutions": 0, "kept": 0, "trimmed": 0, "steps_cut": 0, "dropped": 0,
             "questions_dropped": 0}
    for rows in (GSM8K, DEMO):
        kept_rows = []
        for question, sols in rows:
            many = isinstance(sols[0], list)  # GSM8K: several solutions; DEMO: one list of steps
            fitted = []
            for steps in (sols if many else [sols]):
                stats["solutions"] += 1
                k = sum(n <= budget for n in counter(question, steps))  # prefix lengths only grow
                if k == len(steps):
                    stats["kept"] += 1
                    fitted.append(steps)
                elif k:
                    stats["trimmed"] += 1
                    stats["steps_cut"] += len(steps) - k
                    fitted.append(steps[:k])
                else:
                    stats["dropped"] += 1
            if fitted:
                kept_rows.append((question, fitted if many else fitted[0]))
            else:
                stats["questions_dropped"] += 1
        rows[:] = kept_rows
    return stats


def size_to_service(host: str, headers: dict | None = None, prm: str | None = None) -> str:
    """Loads the data and fits it to the served PRM's `max_model_len` (GET /v1/models); one line saying what was left
    out (the locustfile prints it, `make load` puts it in its report)."""
    load()
    card = served_prm(host, headers, prm)
    max_len = card.get("max_model_len")
    if not max_len:
        return f"PRM {card['id']!r}: /v1/models gives no max_model_len; items not sized"
    counter, exact = prefix_lengths(card)
    s = fit_to_context(int(max_len), counter)
    return (f"items sized to PRM {card['id']!r} max_model_len {max_len} (token counts "
            f"{'exact, its tokenizer' if exact else 'bounded by UTF-8 bytes'}, {MARGIN_TOKENS} spare): "
            f"{s['solutions']} solutions, {s['kept']} whole, {s['trimmed']} trimmed to their first steps "
            f"({s['steps_cut']} steps cut), {s['dropped']} left out; {s['questions_dropped']} questions left out; "
            f"{len(GSM8K)} GSM8K questions and {len(DEMO)} demo problems in use")


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
