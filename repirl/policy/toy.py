"""A toy policy that memorises a few solutions in seconds: a real causal-LM folder (tiny Qwen2, byte-level tokenizer,
policy.json) whose samples stop at the separator and state answers, so every engine and search strategy can be run
end to end in tests and demos without the trained demo policy. Not a model of anything.

Trained on several solutions of the same question, it samples among them at the points where they diverge (roughly
in proportion to how often each appears), which gives searches real choices to make.

The fixture checks itself: where a noisy optimiser happens to stop differs between CPU kernel sets (AVX2 vs AVX-512
ended 250 constant-lr steps at loss 0.35 vs 0.04), so training warms up, decays the lr, keeps the best state, and a
folder is written only after `check_memorised` passes; otherwise it starts again from the next seed, up to a cap,
then fails saying what it got. The hard part is the minority solution's second step, which must copy the "8" it
chose three tokens earlier: at a peak lr of 3e-3 some inits never learn that copy (stuck at p=1/3, seeds 0 and 1 on
AVX-512); 1e-3 with a 50-step warm-up learnt it for seeds 0-5 on AVX-512, AVX2 and the default kernels (p >= 0.94).
`python -m repirl.policy.toy` builds every toy policy the tests use into a fresh folder (CI runs it per kernel set).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

from repirl.artifacts import PolicyConfig, Provenance, atomic_dir, save_model_folder
from repirl.trajectory import TrajectoryEncoder

TOY_QUESTION = "Start with 3. Add 4, then multiply by 2. What is the result?"
TOY_SOLUTIONS = (
    ("3+4=7", "7*2=14", "Answer: 14"),
    ("3+4=7", "7*2=14", "Answer: 14"),
    ("3+4=8", "8*2=16", "Answer: 16"),
)

_VERSION = 3  # bump when the training recipe changes, so cached folders are rebuilt
_ROUNDS = 4  # fresh starts (seed, seed+1, ...) of `steps` each before a fixture that does not converge is a failure
_PEAK_LR, _WARMUP = 1e-3, 50
# A memorised token has at least this share of the probability its solutions give it: 1.0 for a token every
# solution with that prefix agrees on, 2/3 vs 1/3 where they diverge (two of three say "7", one "8").
_MIN_SHARE = 0.6


class ToyPolicyError(RuntimeError):
    """The toy policy did not memorise its solutions within the training cap."""


def toy_cache_dir() -> Path:
    """Where tests keep toy policies between runs (content-addressed, so a changed spec never reads a stale one)."""
    return Path(os.environ.get("REPIRL_TOY_CACHE", Path(tempfile.gettempdir()) / "repirl-toy-policies"))


def _targets(rows, eos_id: int) -> list[tuple[list[int], int, dict[int, float]]]:
    """Per solution: its ids (+ EOS), where the solution starts, and for every solution position the share of the
    solutions sharing that prefix that continue with each token (the distribution a perfect memoriser learns)."""
    seqs = [r.ids + [eos_id] for r in rows]
    out = []
    for seq, r in zip(seqs, rows):
        shares = {}
        for pos in range(r.prompt_len, len(seq)):
            nxt = Counter(s[pos] for s in seqs if len(s) > pos and s[:pos] == seq[:pos])
            shares[pos] = nxt[seq[pos]] / sum(nxt.values())
        out.append((seq, r.prompt_len, shares))
    return out


def check_memorised(model, targets) -> tuple[bool, str]:
    """Every solution token gets at least `_MIN_SHARE` of its share under teacher forcing, and the majority token
    wins the argmax (so greedy decoding reproduces the most frequent solution exactly, EOS included)."""
    import torch

    worst, worst_at = 1.0, ""
    with torch.no_grad():
        for i, (seq, start, shares) in enumerate(targets):
            probs = model(input_ids=torch.tensor([seq])).logits[0].float().softmax(-1)
            for pos in range(start, len(seq)):
                p = float(probs[pos - 1, seq[pos]])
                ratio = p / shares[pos]
                majority = shares[pos] > 0.5
                if majority and int(probs[pos - 1].argmax()) != seq[pos]:
                    ratio = min(ratio, 0.0)
                if ratio < worst:
                    worst, worst_at = ratio, f"solution {i}, token {pos - start}: p={p:.3f} (share {shares[pos]:.2f})"
    return worst >= _MIN_SHARE, f"worst token {worst_at}" if worst_at else "all tokens memorised"


def build_toy_policy(root: str | Path | None = None, question: str = TOY_QUESTION,
                     solutions: Sequence[Sequence[str]] = TOY_SOLUTIONS, steps: int = 500, seed: int = 0) -> Path:
    """Train (or reuse, when `root` already holds the same one) a toy policy folder; returns its path.
    Raises ToyPolicyError when the model has not memorised its solutions in `_ROUNDS` fresh starts."""
    root = toy_cache_dir() if root is None else root
    spec = json.dumps({"v": _VERSION, "q": question, "s": [list(s) for s in solutions], "steps": steps, "seed": seed})
    out = Path(root) / f"toy-policy-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    if (out / "config.json").is_file():
        return out

    import torch
    from transformers import Qwen2ForCausalLM

    from repirl.tiny import build_tokenizer, tiny_qwen2_config

    tok = build_tokenizer()
    config = tiny_qwen2_config(len(tok), hidden_size=128, num_layers=2, max_position_embeddings=256,
                               eos_token_id=tok.eos_token_id)
    pcfg = PolicyConfig(task={"name": "toy"}, provenance=Provenance(algorithm="toy-memorise", iterations=steps))
    enc = TrajectoryEncoder(tok, pcfg.prompt_template, pcfg.step_separator)
    rows = [enc.encode(question, list(s)) for s in solutions]
    targets = _targets(rows, tok.eos_token_id)
    width = max(len(r.ids) for r in rows) + 1
    ids = torch.full((len(rows), width), tok.eos_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (seq, start, _) in enumerate(targets):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, start: len(seq)] = torch.tensor(seq[start:])  # learn the solution, not the prompt

    statuses = []
    for rnd in range(_ROUNDS):
        torch.manual_seed(seed + rnd)  # a fresh init: a run stuck in a local minimum does not get out of it
        model = Qwen2ForCausalLM(config)
        opt = torch.optim.AdamW(model.parameters(), lr=_PEAK_LR)
        best_loss, best_state = math.inf, None
        model.train()
        for step in range(steps):  # linear warm-up, then cosine decay to 2%: the last steps are small, no end spike
            frac = (step + 1) / _WARMUP if step < _WARMUP else \
                0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - _WARMUP) / (steps - _WARMUP)))
            for g in opt.param_groups:
                g["lr"] = _PEAK_LR * frac
            loss = model(input_ids=ids, labels=labels).loss
            if loss.item() < best_loss:  # the loss of the weights before this step: keep those weights
                best_loss = loss.item()
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.load_state_dict(best_state)  # the best state seen, wherever the optimiser stopped
        model.eval()
        ok, status = check_memorised(model, targets)
        statuses.append(f"seed {seed + rnd}: best loss {best_loss:.4f}, {status}")
        if ok:
            break
    else:
        raise ToyPolicyError(f"toy policy did not memorise its {len(solutions)} solutions in {_ROUNDS} starts of "
                             f"{steps} steps ({'; '.join(statuses)}; torch CPU kernels: "
                             f"{torch.backends.cpu.get_cpu_capability()})")
    model.generation_config.eos_token_id = tok.eos_token_id
    pcfg.provenance.metrics = {"loss": round(best_loss, 5), "rounds": rnd + 1, "seed": seed + rnd}
    return save_model_folder(model, tok, out, policy_config=pcfg)


def main() -> None:
    """Build the toy policies the tests use into a fresh folder and say whether each converged (exit 1 if not).
    `--keep`: then put it in the tests' cache (toy_cache_dir), so the suite does not train the same one again (CI
    checks each CPU kernel set from scratch and keeps the one the suite runs on)."""
    import shutil
    import sys
    import time

    import torch

    from repirl.vllm_setup import quiet_logs

    quiet_logs()  # one line per build, not transformers' "Writing model shards" bar
    root = Path(tempfile.mkdtemp(prefix="repirl-toy-check-"))
    t0 = time.time()
    try:
        path = build_toy_policy(root)
    except ToyPolicyError as e:
        print(f"FAIL [{torch.backends.cpu.get_cpu_capability()}] {e}")
        sys.exit(1)
    metrics = json.loads((path / "policy.json").read_text())["provenance"]["metrics"]
    print(f"ok [{torch.backends.cpu.get_cpu_capability()}] toy policy memorised its solutions: loss "
          f"{metrics['loss']}, {metrics['rounds']} start(s), {time.time() - t0:.1f} s")
    kept = toy_cache_dir() / path.name
    if "--keep" in sys.argv[1:] and not (kept / "config.json").is_file():
        with atomic_dir(kept) as tmp:  # whole or not at all: a test may be reading the cache
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        print(f"kept for the tests: {kept}")


if __name__ == "__main__":
    main()
