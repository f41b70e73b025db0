"""How few tokens a text can take, known without tokenizing it.

A text far over a token limit is refused by a length check instead of a full tokenization: 1 MB of text took 1.2 s
of CPU to tokenize with the demo PRM's tokenizer, only to be refused with a 413 (server/api/pooling, raw `input`).

The bound: every token covers at most `longest` bytes of the text the model sees, so a text of B bytes takes at
least ceil(B / longest) tokens. "The text the model sees" is the text after the tokenizer's normalizer (NFC, NFKC,
lowercasing, BERT's control-character cleaning can shrink it: three Hangul jamo, 9 bytes, compose into one 3-byte
syllable). `longest` is measured in UTF-8 bytes over the vocabulary and the added tokens (special tokens match the
raw text; in a byte-level vocabulary a byte's symbol takes 1-2 UTF-8 bytes, which only lengthens the divisor), and
is at least 4 (an unknown token stands for one character, up to 4 bytes).

That holds only where no token stands for a text of unbounded length and none is dropped: a BPE model that does not
fuse unknown characters and has an unknown token, byte fallback, or a byte-level pre-tokenizer with every byte in
its vocabulary (the demo's, Qwen's, Llama 3's). Unigram and WordLevel models fuse unknown runs or whole words into
one unknown token, and WordPiece makes a whole unknown word one [UNK]: for those, and for tokenizers without a
Rust backend, there is no bound (0), and the text is tokenized as before.
"""

from __future__ import annotations

import weakref

from repirl.tiny import byte_level_symbols

_LONGEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> longest token in bytes, or None


def _bounded_model(backend, vocab: dict) -> bool:
    """True when every token of `backend`'s model covers a bounded piece of text and no text is dropped."""
    model = backend.model
    if type(model).__name__ != "BPE" or model.fuse_unk:
        return False
    if model.byte_fallback or model.unk_token is not None:
        return True
    pre = backend.pre_tokenizer  # its JSON names every pre-tokenizer of a Sequence
    byte_level = pre is not None and b'"ByteLevel"' in pre.__getstate__()
    return byte_level and all(sym in vocab for sym in byte_level_symbols())


def longest_token_bytes(tokenizer) -> int | None:
    """The most UTF-8 bytes any one token of `tokenizer` is spelled with (`get_vocab()`: the added and special
    tokens included), >= 4; None when its tokens can stand for texts of any length (module doc) or it has no Rust
    backend."""
    try:
        return _LONGEST[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    longest = None
    if backend is not None:
        vocab = tokenizer.get_vocab()
        if _bounded_model(backend, vocab):
            longest = max([4, *(len(t.encode("utf-8")) for t in vocab)])
    try:
        _LONGEST[tokenizer] = longest
    except TypeError:  # not weak-referenceable: computed again next time
        pass
    return longest


def fewest_tokens(tokenizer, text: str) -> int:
    """A lower bound on `len(tokenizer.encode(text))`, with or without special tokens added: linear in the text, no
    tokenizing. 0 where there is no bound (module doc)."""
    longest = longest_token_bytes(tokenizer)
    if longest is None:
        return 0
    normalizer = tokenizer.backend_tokenizer.normalizer
    if normalizer is not None:
        text = normalizer.normalize_str(text)
    return -(-len(text.encode("utf-8", "surrogatepass")) // longest)
