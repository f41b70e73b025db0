"""Seeds and dead engines (issue 11's first two critical findings), at the library boundary and in the service:
derived seeds never leave [0, 2^63); a seeded call that a vLLM-CPU engine would chunk (and die on) is split into
engine calls that each fit one engine step; a policy whose engine died gets 503 naming it on every endpoint that
would use it, and /readyz says so.

The over-HTTP checks of seed ranges, lone surrogates and Host-header redirects are in test_probe_findings.py; the
split on a real vLLM engine is in tests/repirl/test_policy_vllm.py. The dead policy here is a stand-in object (killing
a real vLLM engine costs an engine start)."""

from __future__ import annotations

import pytest

from repirl.policy.base import SEED_LIMIT, PolicyError, prefix_seed
from repirl.policy.vllm_engine import _seeded_calls

# ---- seeds: derived seeds stay in the engines' range ---------------------------------------------------------------


def test_prefix_seed_never_reaches_2_63():
    """Before: seed + i, so a valid seed of 2^63 - 1 gave prefix 1 a seed vLLM's serializer could not take."""
    assert prefix_seed(None, 3) is None
    assert prefix_seed(5, 3) == 8
    for seed in (SEED_LIMIT - 1, SEED_LIMIT - 7, 0):
        for i in range(200):
            assert 0 <= prefix_seed(seed, i) < SEED_LIMIT
    assert prefix_seed(prefix_seed(SEED_LIMIT - 1, 5), 64) < SEED_LIMIT  # what VLLMPolicy sends for a split call


# ---- seeded calls on vLLM-CPU: never a chunked prefill -------------------------------------------------------------


def test_seeded_calls_fit_one_engine_step_and_keep_every_sample():
    ids = [[1] * 80] * 8  # 8 prompts of 80 tokens: 648 with a decode slot each, over a 256-token budget
    calls = _seeded_calls(ids, n=4, max_tokens=16, budget=256, max_seqs=256, kv_tokens=1 << 40)
    assert len(calls) > 1
    for call in calls:
        assert sum(k * (len(ids[i]) + 1) for i, _, k in call) <= 256  # every prefill of a call runs whole
    # every prefix gets samples 0..n-1 exactly once, in order (sample j keeps seed + j across the split)
    for i in range(len(ids)):
        parts = [(first, k) for call in calls for j, first, k in call if j == i]
        assert [f for f, _ in parts] == [sum(k for _, k in parts[:m]) for m in range(len(parts))]
        assert sum(k for _, k in parts) == 4


def test_seeded_calls_respect_sequence_and_kv_limits():
    calls = _seeded_calls([[1] * 10] * 3, n=8, max_tokens=10, budget=10_000, max_seqs=5, kv_tokens=200)
    for call in calls:
        assert sum(k for *_, k in call) <= 5 and sum(k * 20 for *_, k in call) <= 200
    assert sum(k for call in calls for *_, k in call) == 24


def test_a_seeded_prompt_over_one_step_is_refused_not_chunked():
    with pytest.raises(PolicyError, match="seed"):
        _seeded_calls([[1] * 10, [1] * 300], n=1, max_tokens=8, budget=256, max_seqs=256, kv_tokens=1 << 40)


# ---- a dead policy engine: /readyz 503 naming it, every request that would use it 503 (stand-in policy) ----------


class DeadPolicy:
    """Stands in for a VLLMPolicy whose engine core died (its `dead` flag set by an EngineDeadError): a call would
    raise vLLM's EngineDeadError, which the service answered with 500."""

    name = "dead"
    dead = True
    context_tokens = None

    def __init__(self):
        from repirl.artifacts import PolicyConfig
        from repirl.tiny import build_tokenizer
        from repirl.trajectory import TrajectoryEncoder

        self.config = PolicyConfig()
        self.encoder = TrajectoryEncoder(build_tokenizer())
        self.calls = 0

    def engine_dead(self) -> bool:
        return self.dead

    def sample_steps(self, prefixes, params):
        self.calls += 1
        raise RuntimeError("EngineDeadError: EngineCore encountered an issue")


@pytest.fixture(scope="module")
def dead_policy_app(server_prms):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    policy = DeadPolicy()
    app = create_app(Settings(prm=[f"tr={server_prms['token-reward']}"], engine="hf"), policies={"policy": policy})
    # a loopback name: the keyless default Host allowlist (server/settings.py trusted_hosts) refuses "testserver"
    with TestClient(app, base_url="http://localhost") as c:
        yield c, policy


def test_dead_policy_engine_makes_readyz_503_naming_it(dead_policy_app):
    c, _ = dead_policy_app
    r = c.get("/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "unready" and body["engines"]["tr"] == "ok"
    assert body["engines"]["policy"].startswith("dead"), body
    assert "policy" in body["error"]["message"]


@pytest.mark.parametrize("path,body", [
    ("/v1/best-of-n", {"question": "1+1?", "n": 2, "seed": 1}),
    ("/v1/search", {"question": "1+1?", "strategy": "beam", "n": 2, "beam_width": 1, "seed": 1}),
    ("/v1/search", {"question": "1+1?", "strategy": "beam", "n": 2, "beam_width": 1, "stream": True}),
    ("/v1/chat/completions", {"model": "policy", "messages": [{"role": "user", "content": "1+1?"}]}),
    ("/v1/chat/completions", {"model": "tr", "messages": [{"role": "user", "content": "1+1?"}], "stream": True}),
])
def test_requests_for_a_dead_policy_answer_503_not_500(dead_policy_app, path, body):
    c, policy = dead_policy_app
    r = c.post(path, json=body)
    assert r.status_code == 503, (path, r.status_code, r.text)
    err = r.json()["error"]
    assert err["param"] == "policy" and "died" in err["message"], err
    assert policy.calls == 0  # refused before a search thread touched the engine
