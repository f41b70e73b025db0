"""Offline tiny models: a byte-level tokenizer built in code and a Qwen2-architecture config.

Tokenizer trap (ENVIRONMENT.md): transformers 5.19 loads any qwen2 folder's tokenizer as `Qwen2Tokenizer` and
rebuilds it from vocab + merges, so a WordLevel tokenizer silently loses spaces and newlines on reload. Building
the tokenizer *as* a Qwen2Tokenizer over the 256 byte-level symbols (no merges: one token per character, digits one
by one) makes it round-trip exactly through `AutoTokenizer` and vLLM.
"""

from __future__ import annotations

from functools import lru_cache

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A minimal ChatML template so chat-style prompt templates also work with the tiny models.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@lru_cache(maxsize=1)
def byte_level_symbols() -> list[str]:
    """GPT-2's byte -> printable-unicode table, in byte order (the alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that make each of `words` (e.g. " multiply") one token, left to right. Digits are never merged
    (Qwen2's pre-tokenizer splits them one by one before merges apply), so arithmetic stays digit by digit."""
    table = byte_level_symbols()
    out: list[tuple[str, str]] = []
    for word in words:
        syms = [table[b] for b in word.encode()]
        cur = syms[0]
        for sym in syms[1:]:
            if (cur, sym) not in out:
                out.append((cur, sym))
            cur += sym
    return out


def build_tokenizer(merges: list[tuple[str, str]] | None = None):
    """A byte-level Qwen2Tokenizer: 256 byte symbols + special tokens, optional BPE merges (pairs of symbols)."""
    from transformers import Qwen2Tokenizer

    vocab = {sym: i for i, sym in enumerate(byte_level_symbols())}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    for merge in merges or []:  # each merge's result is a token of its own (after the specials: their ids stay)
        vocab.setdefault("".join(merge), len(vocab))
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in merges or []],
        unk_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_qwen2_config(vocab_size: int, hidden_size: int = 128, num_layers: int = 4, intermediate_size: int = 512,
                      max_position_embeddings: int = 512, eos_token_id: int = 256, **overrides):
    """A tiny Qwen2 config. head_dim stays 64: vLLM's CPU attention rejects head_dim 16 (ENVIRONMENT.md)."""
    from transformers import Qwen2Config

    head_dim = 64
    if hidden_size % head_dim:
        raise ValueError(f"hidden_size must be a multiple of head_dim={head_dim}, got {hidden_size}")
    heads = hidden_size // head_dim
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=overrides.pop("num_key_value_heads", 1),
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        torch_dtype="float32",
        **overrides,
    )
