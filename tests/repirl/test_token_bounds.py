"""repirl.token_bounds: the fewest tokens a text can take is never more than the tokens it takes, for the tokenizers
the service meets (byte-level BPE with and without merges, as the demo's and Qwen's; a SentencePiece-style vocabulary
behind a normalizer that shrinks text), and it is large enough to refuse a 1 MB text under the demo's limit."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from repirl.tiny import SPECIAL_TOKENS, build_tokenizer, word_merges
from repirl.token_bounds import fewest_tokens, longest_token_bytes


def _sentencepiece_style(model: str, fuse_unk: bool = False):
    """A vocabulary over "▁"-marked words (SentencePiece's alphabet) behind NFKC and lowercasing, which shrink some
    texts ("ﬁ", 3 bytes, is "fi"; the Kelvin sign, 3 bytes, is "k"; " 가나다" in jamo, 19 bytes, is "▁가나다", one
    token): a bound on the raw bytes would be wrong for it. `model` "bpe" (bounded) or "unigram" (unknown runs fuse
    into one token: no bound)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram
    from transformers import PreTrainedTokenizerFast

    chars = ["<unk>", "▁", "가", "나", "다", *"abcdefghijklmnopqrstuvwxyz0123456789.=+-:"]
    merges = [("f", "i"), ("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("▁", "가"), ("▁가", "나"), ("▁가나", "다")]
    if model == "bpe":
        vocab = {t: i for i, t in enumerate(chars + ["".join(m) for m in merges])}
        core = BPE(vocab, merges, unk_token="<unk>", fuse_unk=fuse_unk)
    else:
        core = Unigram([(p, -float(len(p))) for p in chars + ["".join(m) for m in merges]], unk_id=0)
    tok = Tokenizer(core)
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


TOKENIZERS = {
    "byte-level, no merges (the demo's)": lambda: build_tokenizer(),
    "byte-level BPE with merges": lambda: build_tokenizer(word_merges([" the", " multiply", "Answer", "ing", "   "])),
    "BPE with an unknown token behind NFKC + lowercase": lambda: _sentencepiece_style("bpe"),
    "BPE fusing unknown characters (no bound)": lambda: _sentencepiece_style("bpe", fuse_unk=True),
    "unigram (no bound)": lambda: _sentencepiece_style("unigram"),
}
UNBOUNDED = {"BPE fusing unknown characters (no bound)", "unigram (no bound)"}

# ASCII, the specials whole, combining marks and Hangul jamo that NFC/NFKC compose, ligatures and signs NFKC folds,
# emoji (4 bytes), a lone surrogate as JSON can carry one
# (" 가나다" in jamo, 19 bytes, is one token once NFKC composes it: a bound on the raw bytes says 2)
PIECES = st.sampled_from(["a", "the", " ", "\n", "3+4=7", "Answer: 7", "ﬁ", "K", "é", "e\u0301", "\u1100\u1161\u11a8",
                          " \u1100\u1161\u1102\u1161\u1103\u1161", "가", "😀", "ß", "İ", *SPECIAL_TOKENS])
TEXTS = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=40).map("".join)


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tokenizer(request):
    tok = TOKENIZERS[request.param]()
    assert (longest_token_bytes(tok) is None) == (request.param in UNBOUNDED)
    return tok


@given(text=TEXTS)
@example(text=" \u1100\u1161\u1102\u1161\u1103\u1161")  # 19 bytes, one token after NFKC: 2 on the raw bytes
def test_fewest_tokens_is_a_lower_bound(tokenizer, text):
    try:
        n = len(tokenizer.encode(text, add_special_tokens=False))
    except UnicodeEncodeError:  # a lone surrogate: the tokenizer refuses it; the bound only has to be defined
        n = None
    fewest = fewest_tokens(tokenizer, text)
    assert fewest >= 0
    if n is not None:
        assert fewest <= n, (text, fewest, n)


def test_the_bound_refuses_a_megabyte_for_the_demo_tokenizer():
    """The demo PRM's tokenizer (256 byte symbols and the specials: its longest token is `<|endoftext|>`, 13 bytes)
    puts 1 MB of text at >= 80,000 tokens, far over the default 4,096, without tokenizing it."""
    tok = build_tokenizer()
    assert longest_token_bytes(tok) == max(len(t.encode()) for t in SPECIAL_TOKENS)
    text = "Start with 3. Add 4. " * 50_000
    assert fewest_tokens(tok, text) > 19 * 4096


def test_no_backend_no_bound():
    class Slow:  # a tokenizer without a Rust backend: nothing to normalize with, so no bound
        def get_vocab(self):
            return {"a": 0}

    assert fewest_tokens(Slow(), "a" * 10_000) == 0
