"""Every in-memory cache is bounded in bytes, counted as held, and keeps nothing of a refused request (issue 22.3).

Before: 40 `/v1/score` requests of 20 steps x 20,000 random digits, all 413, grew the service 630 -> 777 MB (+3.7 MB
each): the per-piece tokenisation memo (65,536 entries of any size) kept what was refused. The prefix KV cache counted
each prefix's own tokens while its tensors were views keeping the whole trajectory's KV alive."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
import torch

from repirl.bounded import ByteLRU
from repirl.scoring.hf_engine import PrefixKVCache, _Prefix
from repirl.tiny import build_tokenizer
from repirl.trajectory import TrajectoryEncoder


def test_byte_lru_holds_at_most_its_budget_and_refuses_what_is_too_large():
    lru = ByteLRU(1000, largest_share=4)
    assert not lru.put("huge", "x", 251) and len(lru) == 0  # over a quarter of the budget: never kept
    for i in range(100):
        assert lru.put(i, i, 100)
        assert lru.bytes <= 1000
    assert len(lru) == 10 and lru.get(99) == 99 and lru.get(0) is None  # the oldest went first


class CountingTokenizer:
    """The tiny tokenizer, counting the characters it is asked to tokenize."""

    def __init__(self):
        self.inner, self.chars = build_tokenizer(), 0

    def encode(self, text, add_special_tokens=True):
        self.chars += len(text)
        return self.inner.encode(text, add_special_tokens=add_special_tokens)


def test_the_memo_keeps_nothing_of_a_trajectory_over_the_limit_and_tokenizing_stops_there():
    """Before: every step of a refused trajectory was tokenized to report its full length (64 steps of 20,000
    digits: 0.35 s of CPU per refused request). Now tokenizing stops at the step that passes the limit."""
    tok = CountingTokenizer()
    enc = TrajectoryEncoder(tok)
    long_steps = ["".join(random.Random(k).choices("0123456789", k=2000)) for k in range(5)]
    refused = enc.encode("What is 2+3?", long_steps, token_limit=100)
    assert len(refused.ids) > 100 and len(refused.step_spans) == 1  # stopped after the first step
    assert tok.chars < 2 * 2000  # the prompt and one step, of 5 x 2,000 digits
    assert len(enc.memo) == 0 and enc.memo.bytes == 0
    assert refused.ids == enc.encode("What is 2+3?", long_steps[:1]).ids  # the same ids as far as it went
    kept = enc.encode("What is 2+3?", ["2+3 = 5", "Answer: 5"], token_limit=100)
    assert len(enc.memo) == 4 and enc.memo.bytes > 0  # the long first step, the prompt and both steps
    assert enc.encode("What is 2+3?", ["2+3 = 5", "Answer: 5"]).ids == kept.ids


def _prefix(base_k: torch.Tensor, end: int) -> _Prefix:
    """An entry like the engine's: KV views of one trajectory's copy, an own logits row, a value per token."""
    return _Prefix(end, [[(base_k[:, :, :end], base_k[:, :, :end])]], [torch.zeros(8)], [0.0] * end)


def test_kv_cache_counts_a_shared_base_tensor_once_and_frees_it_with_its_last_view():
    base = torch.zeros(1, 2, 100, 16)  # 12,800 bytes
    row = 8 * 4  # the logits row's own storage
    cache = PrefixKVCache(max_tokens=10_000, max_bytes=1 << 20)
    cache.put(("", 1), _prefix(base, 10))
    assert cache.bytes == base.nbytes + row + 64 * 10 + 200
    cache.put(("", 2), _prefix(base, 50))  # another view of the same base: its storage is not counted again
    assert cache.bytes == base.nbytes + 2 * row + 64 * 60 + 400
    cache._drop(("", 1))
    assert cache.bytes == base.nbytes + row + 64 * 50 + 200  # still held by the second view
    cache._drop(("", 2))
    assert cache.bytes == 0 and not cache._storages


def test_kv_cache_evicts_by_bytes_held_not_by_tokens_claimed():
    cache = PrefixKVCache(max_tokens=1_000_000, max_bytes=100_000)
    for i in range(20):  # each entry claims 10 tokens but keeps a 25,600-byte base alive
        cache.put(("", i), _prefix(torch.zeros(1, 2, 200, 16), 10))
        assert cache.bytes <= 100_000
    assert len(cache._entries) == 3


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_refused_requests_leave_memory_where_it_was(default_limits_server):
    """500 requests of 20 steps x 20,000 random digits (each 413: past the PRM's 512-token context) over HTTP, the
    issue's count. Refusing one took 0.35 s while every step was tokenized to name the full length (so 150 were run);
    tokenizing now stops at the first step past the limit (0.03 s each). Before the memo fix 150 grew the service by
    ~550 MB."""
    url, pid = default_limits_server.url, default_limits_server.proc.pid
    rng = random.Random(22)
    steps = ["".join(rng.choices("0123456789", k=19_990)) for _ in range(40)]  # + a request number: 20,000 at most
    with httpx.Client(base_url=url, timeout=120) as c:
        assert c.post("/v1/score", json={"question": "What is 2+3?", "steps": ["2+3 = 5", "Answer: 5"]}).status_code == 200
        before = _rss_mb(pid)
        for i in range(500):
            body = {"question": "What is 2+3?", "steps": [steps[(i + k) % 40][k:] + str(i) for k in range(20)]}
            r = c.post("/v1/score", json=body)
            assert r.status_code == 413, r.text[:200]
            assert r.json()["error"]["message"].startswith("body: at least "), r.text[:200]  # counting stopped
        after = _rss_mb(pid)
    print(f"RSS {before:.0f} -> {after:.0f} MB after 500 refused requests")
    assert after - before <= 100, f"RSS {before:.0f} -> {after:.0f} MB"
