"""Every PRM format on the transformers engine against an independent reference (a plain full forward written
here), KV-cache reuse against a cold engine, and the prefix-cache key/value rules."""

from __future__ import annotations

import json
import math

import pytest
import torch

from repirl.artifacts import ArtifactError, load_prm_config
from repirl.scoring.aggregate import aggregate
from repirl.scoring.cache import InProcessCache, decode_value, encode_value, prefix_keys
from repirl.scoring.loader import load_scorer
from repirl.scoring.tiny_prms import QWEN_TAG, SHEPHERD_TAG, build_tiny_prm

FORMATS = ["token-reward", "qwen-step-tag", "math-shepherd", "implicit"]
ITEMS = [
    ("What is 12+7?", ["12+7 = 19", "Answer: 19"]),
    ("What is 12+7?", ["12+7 = 18", "so 18", "Answer: 18"]),
    ("3*4?", ["3*4=12"]),
]


@pytest.fixture(scope="session")
def format_prms(tmp_path_factory):
    root = tmp_path_factory.mktemp("format_prms")
    return {fmt: build_tiny_prm(root / fmt, fmt) for fmt in FORMATS}


def _reference(prm_dir, question, steps):
    """(step rewards, token rewards | None) by a full forward, without the engine's code paths."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer, Qwen2Model

    from repirl.trajectory import TrajectoryEncoder

    cfg = load_prm_config(prm_dir)
    tok = AutoTokenizer.from_pretrained(prm_dir)
    traj = TrajectoryEncoder(tok, cfg.prompt_template, cfg.step_separator).encode(question, steps)
    ids = torch.tensor([traj.ids])
    with torch.no_grad():
        if cfg.format == "token-reward":
            v = AutoModelForTokenClassification.from_pretrained(prm_dir).eval()(ids).logits[0, :, 0]
            tokens = [v[s:e].tolist() for s, e in traj.step_spans]
            return [sum(t) / len(t) for t in tokens], tokens
        if cfg.format == "implicit":
            phi = AutoModelForCausalLM.from_pretrained(prm_dir).eval()(ids).logits[0].log_softmax(-1)
            ref = AutoModelForCausalLM.from_pretrained(prm_dir / "reference").eval()(ids).logits[0].log_softmax(-1)
            per_token = [0.0] + [cfg.beta * (phi[t - 1, traj.ids[t]] - ref[t - 1, traj.ids[t]]).item()
                                 for t in range(1, len(traj.ids))]
            tokens = [per_token[s:e] for s, e in traj.step_spans]
            return [sum(t) for t in tokens], tokens
        tag_id = tok.convert_tokens_to_ids(cfg.step_tag)
        tag_pos = [max(i for i in range(s, e) if traj.ids[i] == tag_id) for s, e in traj.step_spans]
        if cfg.format == "qwen-step-tag":
            h = Qwen2Model.from_pretrained(prm_dir).eval()(ids).last_hidden_state[0]
            w = load_file(str(prm_dir / "model.safetensors"))
            logits = torch.relu(h @ w["score.0.weight"].T + w["score.0.bias"]) @ w["score.2.weight"].T + w["score.2.bias"]
            return [torch.softmax(logits[p], -1)[1].item() for p in tag_pos], None
        logits = AutoModelForCausalLM.from_pretrained(prm_dir).eval()(ids).logits[0]
        plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
        return [torch.softmax(logits[p, [plus, minus]], -1)[0].item() for p in tag_pos], None


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_matches_reference(format_prms, fmt):
    scorer = load_scorer(format_prms[fmt], engine="hf", kv_cache_tokens=0)
    results = scorer.score(ITEMS)
    spread = []
    for (q, steps), got in zip(ITEMS, results):
        want_steps, want_tokens = _reference(format_prms[fmt], q, steps)
        assert len(got.step_rewards) == len(steps)
        assert got.step_rewards == pytest.approx(want_steps, abs=1e-4)
        if want_tokens is None:
            assert got.token_rewards is None
        else:
            for g, w in zip(got.token_rewards, want_tokens):
                assert g == pytest.approx(w, abs=1e-4)
        spread += got.step_rewards
    assert max(spread) - min(spread) > 1e-3, "rewards should vary between steps (a constant PRM tests nothing)"


@pytest.mark.parametrize("fmt", FORMATS)
def test_kv_reuse_computes_only_new_tokens_and_agrees(format_prms, fmt):
    warm = load_scorer(format_prms[fmt], engine="hf", kv_cache_tokens=100_000)
    cold = load_scorer(format_prms[fmt], engine="hf", kv_cache_tokens=0)
    q = "What is 12+7?"
    warm.score([(q, ["12+7 = 19"])])
    branches = [(q, ["12+7 = 19", "Answer: 19"]), (q, ["12+7 = 19", "so 19", "Answer: 19"]), (q, ["12+7 = 19"])]
    got, want = warm.score(branches), cold.score(branches)
    prefix_len = warm.encode(q, ["12+7 = 19"]).prefix_len(1)
    for g, w, (_, steps) in zip(got, want, branches):
        assert g.step_rewards == pytest.approx(w.step_rewards, abs=1e-4)
        assert g.tokens_total == w.tokens_total == w.tokens_computed
        assert g.tokens_computed == g.tokens_total - prefix_len  # only the tokens after the cached step
    assert got[2].tokens_computed == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_shared_prefix_within_one_call_is_computed_once(format_prms, fmt):
    warm = load_scorer(format_prms[fmt], engine="hf", kv_cache_tokens=100_000)
    cold = load_scorer(format_prms[fmt], engine="hf", kv_cache_tokens=0)
    q = "What is 12+7? (one call)"
    shared = ["12+7 = 19", "so it is 19"]
    items = [(q, shared + ["Answer: 19"]), (q, shared + ["Answer: 18", "no"]), (q, shared + ["19."]), (q, ["19"])]
    got, want = warm.score(items), cold.score(items)
    for g, w in zip(got, want):
        assert g.step_rewards == pytest.approx(w.step_rewards, abs=1e-4)
    prefix, prompt = warm.encode(q, shared).prefix_len(2), warm.encode(q, []).prompt_len
    # the shared 2-step prefix once, each item's own tail; the 4th item shares only the prompt, computed once too
    expected = prefix + sum(w.tokens_total - prefix for w in want[:3]) + want[3].tokens_total - prompt
    assert sum(g.tokens_computed for g in got) == expected < sum(w.tokens_computed for w in want)


def test_kv_reuse_and_batch_sharing_stay_inside_a_scope(format_prms):
    """Issue 22.6: the KV prefix cache and the sharing of prefixes within one batch never cross scopes (tenants):
    scope "b" computes every token of a trajectory scope "a" sent before and alongside, with the same rewards."""
    import dataclasses

    warm = load_scorer(format_prms["token-reward"], engine="hf", kv_cache_tokens=100_000)
    q, steps = "What is 12+7? (scoped)", ["12+7 = 19", "Answer: 19"]
    traj = warm.encode(q, steps)
    a, b = dataclasses.replace(traj, scope="a"), dataclasses.replace(traj, scope="b")
    (first,) = warm.score_encoded([a])
    assert first.tokens_computed == len(traj.ids)
    (again,) = warm.score_encoded([a])
    assert again.tokens_computed == 0  # its own scope: served from the KV cache
    (other,) = warm.score_encoded([b])
    assert other.tokens_computed == len(traj.ids), "scope b reused scope a's cached prefix"
    assert other.step_rewards == pytest.approx(first.step_rewards, abs=1e-4)
    # one batch, two new scopes, one body: neither is charged less for the other's prefix
    c, d = dataclasses.replace(traj, scope="c"), dataclasses.replace(traj, scope="d")
    got = warm.score_encoded([c, d])
    assert [g.tokens_computed for g in got] == [len(traj.ids)] * 2
    # within one scope the batch still shares the prefix (computed once)
    longer = warm.encode(q, steps + ["done"])
    e1, e2 = dataclasses.replace(traj, scope="e"), dataclasses.replace(longer, scope="e")
    got = warm.score_encoded([e1, e2])
    assert sum(g.tokens_computed for g in got) == len(longer.ids)


def test_kv_cache_is_bounded_by_tokens(format_prms):
    scorer = load_scorer(format_prms["token-reward"], engine="hf", kv_cache_tokens=200)
    for n in range(6):
        scorer.score([(f"question {n}", ["a step", "another step"])])
        assert scorer.kv.tokens <= 200


def test_tag_format_validation(format_prms, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(format_prms["math-shepherd"], bad)
    cfg = json.loads((bad / "prm.json").read_text())
    cfg["positive_token"] = "++"  # two tokens in the byte-level tokenizer
    (bad / "prm.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="positive_token"):
        load_scorer(bad, engine="hf")
    cfg["positive_token"], cfg["step_separator"] = "+", "\n\n"  # separator without the tag
    (bad / "prm.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="step_separator"):
        load_scorer(bad, engine="hf")
    assert QWEN_TAG != SHEPHERD_TAG


def test_vllm_engine_refuses_causal_lm_formats(format_prms):
    with pytest.raises(ArtifactError, match="not served by the vLLM engine"):
        load_scorer(format_prms["math-shepherd"], engine="vllm")


def test_prefix_keys_are_prefix_stable_revision_and_salt_scoped(format_prms):
    scorer = load_scorer(format_prms["token-reward"], engine="hf", kv_cache_tokens=0)
    a = scorer.encode("q", ["s1", "s2"])
    b = scorer.encode("q", ["s1", "s2", "s3"])
    ka, kb = prefix_keys("rev1", a), prefix_keys("rev1", b)
    assert kb[:2] == ka and len(set(kb)) == 3
    assert ka[0].startswith("repirl:v1:rev1:") and len(ka[0].rsplit(":", 1)[1]) == 64
    assert prefix_keys("rev2", a)[0] != ka[0]
    assert prefix_keys("rev1", a, salt="tenant-a")[0] != ka[0]


def test_cache_values_are_validated():
    good = encode_value(0.5, [0.1, 0.2])
    assert decode_value(good, 2, True) == (0.5, [0.1, 0.2])
    assert decode_value(good, 3, True) is None  # wrong token count
    assert decode_value(encode_value(0.5, None), 2, True) is None  # token rewards needed
    assert decode_value(encode_value(0.5, None), 2, False) == (0.5, None)
    for bad in [b"\x80\x04pickle", "not json", '{"r": "x"}', '{"r": NaN}', '{"r": Infinity}', '{"r": true}',
                '{"t": [1]}', "[1, 2]", '{"r": 1, "t": [1, "a"]}']:
        assert decode_value(bad, 1, False) is None


@pytest.mark.asyncio
async def test_in_process_cache_ttl_and_bound():
    cache = InProcessCache(max_bytes=500)  # an entry of one-character strings is sized 220 bytes: two fit
    await cache.set_many({"a": "1", "b": "2", "c": "3"}, ttl_s=60)
    assert await cache.get_many(["a", "b", "c"]) == [None, "2", "3"]
    await cache.set_many({"d": "4"}, ttl_s=-1)  # already expired
    assert await cache.get_many(["d"]) == [None]


def test_aggregations_on_engine_output(format_prms):
    sc = load_scorer(format_prms["token-reward"], engine="hf", kv_cache_tokens=0).score([ITEMS[1]])[0]
    flat = [r for t in sc.token_rewards for r in t]
    assert aggregate(sc.step_rewards, "mean-token", sc.token_rewards) == pytest.approx(sum(flat) / len(flat))
    assert aggregate(sc.step_rewards, "prod") == pytest.approx(math.prod(sc.step_rewards))


@pytest.mark.parametrize("fmt,rule", [("implicit", "min"), ("implicit", "mean"), ("token-reward", "sum"),
                                      ("token-reward", "min")])
def test_step_reward_rule_from_prm_json(format_prms, tmp_path, fmt, rule):
    """prm.json `step_reward` reduces each step's token values by its rule, and scopes the cache revision."""
    import shutil

    d = tmp_path / fmt
    shutil.copytree(format_prms[fmt], d)
    cfg = json.loads((d / "prm.json").read_text())
    default_revision = load_scorer(d, engine="hf").revision
    cfg["step_reward"] = rule
    (d / "prm.json").write_text(json.dumps(cfg))
    scorer = load_scorer(d, engine="hf", kv_cache_tokens=0)
    reduce = {"min": min, "sum": sum, "mean": lambda t: sum(t) / len(t)}[rule]
    for (q, steps), got in zip(ITEMS, scorer.score(ITEMS)):
        _, want_tokens = _reference(d, q, steps)
        assert got.step_rewards == pytest.approx([reduce(t) for t in want_tokens], abs=1e-4)
    assert scorer.revision != default_revision


def test_step_reward_rule_refused_for_tag_formats(format_prms, tmp_path):
    import shutil

    d = tmp_path / "tag"
    shutil.copytree(format_prms["qwen-step-tag"], d)
    cfg = json.loads((d / "prm.json").read_text())
    cfg["step_reward"] = "min"
    (d / "prm.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="step_reward"):
        load_scorer(d, engine="hf")


def test_a_preempted_call_hands_back_the_items_done_with_the_scores_of_a_whole_call(format_prms):
    """Under `cancel.yield_when` (the service's fair queue asking for the engine), the transformers PRM hands back at
    its first safe point with something done: one forward (here one item) in, the items done carry the scores a
    whole call gives them, the others None; without a request it runs to the end."""
    from repirl import cancel

    items = [("What is 12+7?", ["12+7 = 19"] * k) for k in (1, 2, 3)]  # lengths differ: one item per forward
    whole = load_scorer(format_prms["token-reward"], engine="hf", kv_cache_tokens=0, forward_tokens=1).score(items)
    scorer = load_scorer(format_prms["token-reward"], engine="hf", kv_cache_tokens=0, forward_tokens=1)
    with cancel.yield_when(lambda: True), pytest.raises(cancel.Preempted) as e:
        scorer.score(items)
    done = [r for r in e.value.results if r is not None]
    assert len(e.value.results) == 3 and len(done) == 1  # the shortest item: the first forward
    assert done[0].step_rewards == pytest.approx(whole[0].step_rewards, abs=1e-5)
    assert done[0].tokens_computed == whole[0].tokens_computed
    with cancel.yield_when(lambda: False):
        for got, want in zip(scorer.score(items), whole):
            assert got.step_rewards == pytest.approx(want.step_rewards, abs=1e-5)


def test_the_callers_groups_run_in_order_and_the_first_done_hands_back(format_prms):
    """`cancel.yield_when(check, groups)` (the service's fair queue with two API keys in one call): the transformers PRM
    runs the lightest group first, in forwards of its own, and hands back once it is done while the other group's
    items remain, even though `check` never fires; the item done carries the whole call's scores. One group: no
    hand-back. Before, the light key's item was answered only after the heavy key's share of the call."""
    from repirl import cancel

    items = [("What is 12+7?", ["12+7 = 19"] * k) for k in (1, 3, 2)]
    whole = load_scorer(format_prms["token-reward"], engine="hf", kv_cache_tokens=0).score(items)
    scorer = load_scorer(format_prms["token-reward"], engine="hf", kv_cache_tokens=0)  # one forward holds all three
    with cancel.yield_when(lambda: False, groups=[1, 0, 1]), pytest.raises(cancel.Preempted) as e:
        scorer.score(items)
    assert [r is not None for r in e.value.results] == [False, True, False]  # the longest item, but the first group
    assert e.value.results[1].step_rewards == pytest.approx(whole[1].step_rewards, abs=1e-5)
    assert e.value.results[1].tokens_computed == whole[1].tokens_computed
    with cancel.yield_when(lambda: False, groups=[0, 0, 0]):
        for got, want in zip(scorer.score(items), whole):
            assert got.step_rewards == pytest.approx(want.step_rewards, abs=1e-5)

def test_step_tokens_bound_the_work_between_safe_points(format_prms):
    """`cancel.yield_when(check, step_tokens=N)` (the fair queue while several keys are active): forwards of at most
    N tokens (at least one item), so a call that must hand back does so after one item; with the engine's own
    forward size the three items are one forward and there is no safe point before the call ends."""
    from repirl import cancel

    items = [("What is 12+7?", ["12+7 = 19"] * k) for k in (1, 2, 3)]
    scorer = load_scorer(format_prms["token-reward"], engine="hf", kv_cache_tokens=0)
    whole = scorer.score(items)
    with cancel.yield_when(lambda: True):
        assert all(r is not None for r in scorer.score(items))
    with cancel.yield_when(lambda: True, step_tokens=1), pytest.raises(cancel.Preempted) as e:
        scorer.score(items)
    assert [r is not None for r in e.value.results] == [True, False, False]
    assert e.value.results[0].step_rewards == pytest.approx(whole[0].step_rewards, abs=1e-5)
