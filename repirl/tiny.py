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


def build_tokenizer(merges: list[tuple[str, str]] | None = None, eos_token: str = "<|endoftext|>"):
    """A byte-level Qwen2Tokenizer: 256 byte symbols + special tokens, optional BPE merges (pairs of symbols).
    eos_token "<|im_end|>" makes it look like an instruct model's (Qwen2.5-Instruct's tokenizer ends on it)."""
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
        eos_token=eos_token,
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
        tie_word_embeddings=overrides.pop("tie_word_embeddings", True),
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        torch_dtype="float32",
        **overrides,
    )


def build_chat_model_folder(out_dir, seed: int = 0, second_eos_logit: float = 0.0, letters: str = "abc"):
    """A tiny instruct-style causal-LM folder, as a real one comes (no policy.json): a chat template, the tokenizer's
    EOS `<|im_end|>` and generation_config.json `eos_token_id: [<|im_end|>, <|endoftext|>]` (Qwen2.5-Instruct's
    layout), random weights.

    Its next-token distribution is fixed by construction, whatever the context: every layer's output projections are
    zero (the residual stream is the token embedding), every embedding is the same vector e0, and the untied LM head
    gives `letters` logit 0, the SECOND EOS id (<|endoftext|>) `second_eos_logit`, every other token (the first EOS
    included) a very negative one. So a sample is a few letters ending with the second EOS id: a sampler that stops
    only on the tokenizer's EOS runs on past it. Returns (folder, {"first_eos", "second_eos", "letter_ids"})."""
    from pathlib import Path

    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tok = build_tokenizer(eos_token="<|im_end|>")
    first, second = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = tiny_qwen2_config(len(tok), num_layers=2, intermediate_size=256, eos_token_id=first,
                            tie_word_embeddings=False)
    cfg.pad_token_id, cfg.bos_token_id = second, None
    model = Qwen2ForCausalLM(cfg)
    letter_ids = [tok.convert_tokens_to_ids(c) for c in letters]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0  # every token's hidden state is e0; RMSNorm -> sqrt(H) e0
        head = torch.full((len(tok),), -3.0)  # x sqrt(128) ~ 11.3: logit -34 for everything else
        head[letter_ids] = 0.0
        head[second] = second_eos_logit / cfg.hidden_size**0.5
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = head
    model.generation_config = GenerationConfig(eos_token_id=[first, second], pad_token_id=second,
                                               bos_token_id=None)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, {"first_eos": first, "second_eos": second, "letter_ids": letter_ids}
