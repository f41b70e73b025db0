"""Tiny random-weight replicas of hub PRM folders, as they are downloaded (no prm.json), built in code.

Each has its family's architecture name and config keys, its special tokens (step tag, chat markers) and a chat
template of the same structure as the real one, so tests check the plumbing a real folder goes through: which family
is detected, which layout, which position and label are read. The tokenizer is byte-level (one token per character,
like repirl.tiny) with the family's special tokens added; the weights are random (seeded).
"""

from __future__ import annotations

from pathlib import Path

from repirl.artifacts import atomic_dir
from repirl.tiny import byte_level_symbols, word_merges

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
# Qwen2.5-Math's template: its own system prompt when the conversation brings none (ChatML otherwise)
QWEN_MATH_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nPlease reason step by step, and put your final "
    "answer within \\boxed{}.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama 3.1 Instruct's layout: BOS, a system header with the knowledge-cutoff lines, each turn's content trimmed
LLAMA31_TEMPLATE = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n<|eot_id|>"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}"
    "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")

# the folder names the real repositories have (the causal-LM families are told apart by name)
REPLICA_NAMES = {"qwen-prm": "Qwen2.5-Math-PRM-7B", "math-shepherd": "math-shepherd-mistral-7b-prm",
                 "rlhflow": "RLHFlow--Llama3.1-8B-PRM-Mistral-Data", "eurus-implicit": "EurusPRM-Stage2"}


# " Step" as one token, as real BPE vocabularies have it: a layout that splits the space from the word shows up
MERGES = word_merges([" Step"])


def byte_tokenizer(specials: list[str], eos: str, bos: str | None = None, pad: str | None = None,
                   added: tuple[str, ...] = (), chat_template: str | None = None, merges=()):
    """A byte-level Qwen2Tokenizer (round-trips through AutoTokenizer) with these special and plain added tokens."""
    from transformers import Qwen2Tokenizer

    vocab = {sym: i for i, sym in enumerate(byte_level_symbols())}
    for t in specials:
        vocab[t] = len(vocab)
    for m in merges:
        vocab.setdefault("".join(m), len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m) for m in merges], unk_token=eos, eos_token=eos, bos_token=bos, pad_token=pad or eos,
                         additional_special_tokens=[t for t in specials if t not in (eos, bos, pad)])
    if added:  # plain (not special) tokens such as Math-Shepherd's step tag: one token each
        tok.add_tokens(list(added))
    tok.chat_template = chat_template
    return tok


def _small(cfg_cls, tok, **extra):
    return cfg_cls(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=1024,
                   rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.2, **extra)


def _save(out_dir: Path, model, tok) -> Path:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir


def build_replica(family: str, parent: str | Path, seed: int = 0) -> Path:
    """A replica folder of `family` under `parent`, named as the real repository; no prm.json."""
    import torch

    out = Path(parent) / REPLICA_NAMES[family]
    torch.manual_seed(seed)
    if family == "qwen-prm":
        from transformers import Qwen2Config

        from repirl.scoring.formats import Qwen2ForProcessRewardModel

        tok = byte_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN_MATH_TEMPLATE)
        # as the real config.json: no num_labels (the 2-label head is the architecture's; vLLM sets it likewise)
        cfg = _small(Qwen2Config, tok, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
        cfg.auto_map = {"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
                        "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
        model = Qwen2ForProcessRewardModel(cfg).eval()
        for p in model.score.parameters():  # a visible spread of P(label 1) between steps
            torch.nn.init.normal_(p, std=0.05)
        return _save(out, model, tok)
    if family == "math-shepherd":
        from transformers import MistralConfig, MistralForCausalLM

        tok = byte_tokenizer(["<s>", "</s>", "<unk>"], eos="</s>", bos="<s>", added=("ки",), merges=MERGES)
        cfg = _small(MistralConfig, tok, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     sliding_window=None)
        return _save(out, MistralForCausalLM(cfg).eval(), tok)
    if family == "rlhflow":
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = byte_tokenizer(LLAMA3_SPECIALS, eos="<|eot_id|>", bos="<|begin_of_text|>", pad="<|end_of_text|>",
                             chat_template=LLAMA31_TEMPLATE, merges=MERGES)
        cfg = _small(LlamaConfig, tok, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return _save(out, LlamaForCausalLM(cfg).eval(), tok)
    if family == "eurus-implicit":
        return _eurus(out, seed)
    raise ValueError(f"no replica for family {family!r} (have: {', '.join(REPLICA_NAMES)})")


def _eurus(out: Path, seed: int) -> Path:
    """EurusPRM (pi_phi) in `out`, and its reference pi_ref beside it in `<out>-reference` (on the hub it is another
    repository, Qwen2.5-Math-7B-Instruct)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = byte_tokenizer(QWEN_SPECIALS[:3], eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN_MATH_TEMPLATE)
    cfg = _small(Qwen2Config, tok, eos_token_id=tok.eos_token_id)
    _save(out, Qwen2ForCausalLM(cfg).eval(), tok)
    torch.manual_seed(seed + 100)
    _save(out.parent / f"{out.name}-reference", Qwen2ForCausalLM(cfg).eval(), tok)
    return out


if __name__ == "__main__":  # python -m repirl.scoring.hub_replicas FAMILY PARENT_DIR: a replica to try commands on
    import sys

    print(build_replica(sys.argv[1], sys.argv[2]))
