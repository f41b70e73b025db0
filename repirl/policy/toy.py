"""A toy policy that memorises a few solutions in seconds: a real causal-LM folder (tiny Qwen2, byte-level tokenizer,
policy.json) whose samples stop at the separator and state answers, so every engine and search strategy can be run
end to end in tests and demos without the trained demo policy. Not a model of anything.

Trained on several solutions of the same question, it samples among them at the points where they diverge (roughly
in proportion to how often each appears), which gives searches real choices to make.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

from repirl.artifacts import PolicyConfig, Provenance, save_model_folder
from repirl.trajectory import TrajectoryEncoder

TOY_QUESTION = "Start with 3. Add 4, then multiply by 2. What is the result?"
TOY_SOLUTIONS = (
    ("3+4=7", "7*2=14", "Answer: 14"),
    ("3+4=7", "7*2=14", "Answer: 14"),
    ("3+4=8", "8*2=16", "Answer: 16"),
)


_VERSION = 1  # bump when the training recipe changes, so cached folders are rebuilt


def toy_cache_dir() -> Path:
    """Where tests keep toy policies between runs (content-addressed, so a changed spec never reads a stale one)."""
    return Path(os.environ.get("REPIRL_TOY_CACHE", Path(tempfile.gettempdir()) / "repirl-toy-policies"))


def build_toy_policy(root: str | Path | None = None, question: str = TOY_QUESTION,
                     solutions: Sequence[Sequence[str]] = TOY_SOLUTIONS, steps: int = 250, seed: int = 0) -> Path:
    """Train (or reuse, when `root` already holds the same one) a toy policy folder; returns its path."""
    root = toy_cache_dir() if root is None else root
    spec = json.dumps({"v": _VERSION, "q": question, "s": [list(s) for s in solutions], "steps": steps, "seed": seed})
    out = Path(root) / f"toy-policy-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    if (out / "config.json").is_file():
        return out

    import torch
    from transformers import Qwen2ForCausalLM

    from repirl.tiny import build_tokenizer, tiny_qwen2_config

    torch.manual_seed(seed)
    tok = build_tokenizer()
    config = tiny_qwen2_config(len(tok), hidden_size=128, num_layers=2, max_position_embeddings=256,
                               eos_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(config)
    pcfg = PolicyConfig(task={"name": "toy"}, provenance=Provenance(algorithm="toy-memorise", iterations=steps))
    enc = TrajectoryEncoder(tok, pcfg.prompt_template, pcfg.step_separator)
    rows = [enc.encode(question, list(s)) for s in solutions]
    width = max(len(r.ids) for r in rows) + 1
    ids = torch.full((len(rows), width), tok.eos_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        seq = r.ids + [tok.eos_token_id]
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, r.prompt_len: len(seq)] = torch.tensor(seq[r.prompt_len:])  # learn the solution, not the prompt
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    return save_model_folder(model, tok, out, policy_config=pcfg)
