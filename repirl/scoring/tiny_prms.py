"""Tiny random-weight PRMs of every format, built in code (tests, benchmarks, demos; nothing is downloaded).

Weights use a larger init (initializer_range) than training would, so rewards vary visibly between tokens and a
numerical comparison between engines or against a reference is meaningful.
"""

from __future__ import annotations

from pathlib import Path

from repirl.artifacts import PRMConfig, Provenance, atomic_dir, content_hash, init_token_reward_prm, save_implicit_prm
from repirl.tiny import build_tokenizer, tiny_qwen2_config

# Step tags must be single tokens; the byte-level tiny tokenizer has these special tokens.
QWEN_TAG = "<|im_start|>"
SHEPHERD_TAG = "<|im_end|>"


def _config(tokenizer, seed_range: float = 0.1, **overrides):
    return tiny_qwen2_config(vocab_size=len(tokenizer), num_layers=2, eos_token_id=tokenizer.eos_token_id,
                             initializer_range=seed_range, **overrides)


def _causal_lm(tokenizer, seed: int, **overrides):
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(_config(tokenizer, **overrides)).eval()


def build_policy(out_dir: str | Path, seed: int = 0, **config_overrides) -> Path:
    tok = build_tokenizer()
    model = _causal_lm(tok, seed, **config_overrides)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out_dir)


def _write(out_dir: Path, save, cfg: PRMConfig) -> Path:
    with atomic_dir(out_dir) as tmp:
        save(tmp)
        cfg = cfg.model_copy(update={"revision": content_hash(tmp)})
        (tmp / "prm.json").write_text(cfg.model_dump_json(indent=2), encoding="utf-8")
    return out_dir


def build_tiny_prm(out_dir: str | Path, fmt: str, seed: int = 0, step_tag: str | None = None,
                   **config_overrides) -> Path:
    """A tiny PRM folder of format `fmt` (token-reward | qwen-step-tag | math-shepherd | implicit).
    `config_overrides` go to the model config (e.g. max_position_embeddings=4096 for long trajectories).
    `step_tag` (qwen-step-tag): another tag, added to the tokenizer as a special token when it is not one, e.g.
    Qwen2.5-Math-PRM's "<extra_0>" with separator "<extra_0>" (requests written for the real model run as is)."""
    import torch

    out_dir = Path(out_dir)
    tok = build_tokenizer()
    if step_tag is not None and len(tok.encode(step_tag, add_special_tokens=False)) != 1:
        tok.add_tokens([step_tag], special_tokens=True)
    prov = Provenance(algorithm="init", base_model="tiny-random")
    if fmt == "token-reward":
        policy = out_dir.parent / f".{out_dir.name}-policy"
        build_policy(policy, seed, **config_overrides)
        torch.manual_seed(seed + 1)
        path = init_token_reward_prm(policy, out_dir, provenance=prov)
        _scale_head(path)
        return path
    if fmt == "qwen-step-tag":
        from repirl.scoring.formats import Qwen2ForProcessRewardModel

        torch.manual_seed(seed)
        model = Qwen2ForProcessRewardModel(_config(tok, num_labels=2, **config_overrides)).eval()
        for p in model.score.parameters():  # a visible spread of P(good) between steps
            torch.nn.init.normal_(p, std=0.05)
        tag = step_tag or QWEN_TAG
        cfg = PRMConfig(format="qwen-step-tag", step_separator=tag, step_tag=tag,
                        default_aggregation="min", provenance=prov)
        return _write(out_dir, lambda d: (model.save_pretrained(d), tok.save_pretrained(d)), cfg)
    if fmt == "math-shepherd":
        model = _causal_lm(tok, seed, **config_overrides)
        cfg = PRMConfig(format="math-shepherd", step_separator=f" {SHEPHERD_TAG}\n", step_tag=SHEPHERD_TAG,
                        positive_token="+", negative_token="-", default_aggregation="min", provenance=prov)
        return _write(out_dir, lambda d: (model.save_pretrained(d), tok.save_pretrained(d)), cfg)
    if fmt == "implicit":
        phi, ref = _causal_lm(tok, seed, **config_overrides), _causal_lm(tok, seed + 100, **config_overrides)
        return save_implicit_prm(phi, ref, tok, out_dir, PRMConfig(format="implicit", beta=0.5,
                                                                   default_aggregation="mean-token", provenance=prov))
    raise ValueError(f"unknown PRM format {fmt!r}")


def _scale_head(prm_dir: Path) -> None:
    """Re-initialise the token-reward head with a larger std and refresh the revision (see module doc)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = next(prm_dir.glob("*.safetensors"))
    state = load_file(str(path))
    for k in list(state):
        if k.startswith("score."):
            state[k] = torch.randn_like(state[k]) * 0.5
    save_file(state, str(path), metadata={"format": "pt"})
    cfg = PRMConfig.model_validate_json((prm_dir / "prm.json").read_text())
    cfg = cfg.model_copy(update={"revision": content_hash(prm_dir)})
    (prm_dir / "prm.json").write_text(cfg.model_dump_json(indent=2), encoding="utf-8")
