"""Search algorithms over hand-made policies and scorers whose right answers are known."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from repirl.artifacts import PolicyConfig
from repirl.policy.base import SamplingConfig, StepSample, make_step
from repirl.scoring import StepScores
from repirl.search import SearchCancelled, SearchParams, choose, run_search
from repirl.search.types import Candidate
from repirl.tasks import ArithmeticTask, Problem
from repirl.tiny import build_tokenizer
from repirl.trajectory import TrajectoryEncoder

Q = "Start with 3. Add 4, then multiply by 2. What is the result?"
PROBLEM = Problem(id="toy", question=Q, steps=["3+4=7", "7*2=14", "Answer: 14"], answer="14",
                  meta={"start": 3, "ops": [("+", 4), ("*", 2)]})
# next-step options per prefix; sample j of a call takes option j mod len (deterministic, so answers are known)
TREE = {
    (): ["3+4=8", "3+4=7", "3+4=8", "3+4=9"],
    ("3+4=7",): ["7*2=14", "7*2=15"],
    ("3+4=8",): ["8*2=16"],
    ("3+4=9",): ["9*2=18"],
    ("3+4=7", "7*2=14"): ["Answer: 14"],
    ("3+4=7", "7*2=15"): ["Answer: 15"],
    ("3+4=8", "8*2=16"): ["Answer: 16"],
    ("3+4=9", "9*2=18"): ["Answer: 18"],
}


class ScriptedPolicy:
    name = "scripted"

    def __init__(self, tree=TREE):
        self.tree = tree
        self.config = PolicyConfig()
        self.encoder = TrajectoryEncoder(build_tokenizer())
        self.calls: list[tuple[int, int]] = []

    def sample_steps(self, prefixes, params: SamplingConfig) -> list[list[StepSample]]:
        self.calls.append((len(prefixes), params.n))
        out = []
        for _, steps in prefixes:
            options = self.tree[tuple(steps)]
            picks = [options[0]] * params.n if params.temperature == 0 else [options[j % len(options)] for j in range(params.n)]
            out.append([make_step(t + "\n\n", self.encoder.step_ids(t), [-1.0] * len(t), "\n\n", False, False)
                        for t in picks])
        return out


class OracleScorer:
    """Reward 1 for each step before the first wrong one, 0 from there: the perfect PRM for this task."""

    name, revision, default_aggregation = "oracle", "v1", "min"

    def __init__(self):
        self.items = []

    def score(self, items):
        self.items.extend(items)
        out = []
        for q, steps in items:
            first_wrong = ArithmeticTask().check(PROBLEM, steps).first_wrong_step
            rewards = [1.0 if first_wrong is None or k < first_wrong else 0.0 for k in range(len(steps))]
            n_tokens = len(TrajectoryEncoder(build_tokenizer()).encode(q, steps).ids)
            out.append(StepScores(rewards, tokens_computed=n_tokens, tokens_total=n_tokens, meta={"cache_hits": 0}))
        return out


class ConstantScorer:
    name, revision = "constant", "v1"

    def score(self, items):
        return [StepScores([0.5] * len(steps), tokens_total=1, tokens_computed=1) for _, steps in items]


def test_best_of_n_constant_scorer_returns_first_sample():
    r = run_search(ScriptedPolicy(), ConstantScorer(), Q, SearchParams(n=4, select="naive"))
    assert r.best.steps == ["3+4=8", "8*2=16", "Answer: 16"]  # sample 0
    assert r.answer == "16" and len(r.candidates) == 4


def test_best_of_n_oracle_scorer_picks_the_correct_solution():
    r = run_search(ScriptedPolicy(), OracleScorer(), Q, SearchParams(n=4, select="naive"))
    assert r.answer == "14" and r.best.steps == PROBLEM.steps
    assert r.best.step_rewards == [1.0, 1.0, 1.0]


def test_majority_vote_follows_the_crowd_and_weighted_vote_follows_the_prm():
    maj = run_search(ScriptedPolicy(), OracleScorer(), Q, SearchParams(n=4, select="majority"))
    assert maj.answer == "16"  # two of four samples say 16
    weighted = run_search(ScriptedPolicy(), OracleScorer(), Q, SearchParams(n=4, select="weighted", vote_temperature=0.1))
    assert weighted.answer == "14"  # exp(1/0.1) outweighs 2 * exp(0)
    # majority needs no PRM at all
    assert run_search(ScriptedPolicy(), None, Q, SearchParams(n=4, select="majority")).answer == "16"
    with pytest.raises(ValueError, match="needs a PRM"):
        run_search(ScriptedPolicy(), None, Q, SearchParams(n=4, select="naive"))


def test_choose_weighted_matches_a_hand_computed_softmax_vote():
    cands = [Candidate(["a"], True, score=s, answer=a, id=i) for i, (s, a) in enumerate([(2.0, "1"), (0.0, "2"), (0.0, "2"), (0.0, "2")])]
    # weights exp(s - 2): answer 1 -> 1.0, answer 2 -> 3 * e^-2 = 0.406
    assert choose(cands, "weighted")[1] == "1"
    assert choose(cands, "majority")[1] == "2"
    assert 3 * math.exp(-2.0) < 1.0
    # T=4 flattens the weights: 3 * e^-0.5 = 1.82 > 1
    assert choose(cands, "weighted", vote_temperature=4.0)[1] == "2"


def test_beam_search_with_the_oracle_prunes_wrong_steps_and_reports_events():
    policy, scorer, events = ScriptedPolicy(), OracleScorer(), []
    r = run_search(policy, scorer, Q, SearchParams(strategy="beam", n=4, beam_width=2, select="naive"),
                   on_event=events.append)
    assert r.answer == "14" and r.best.steps == PROBLEM.steps
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, len(steps) + 1)) and events[-1].kind == "final"
    first = steps[0]  # 4 samples of step 1, one duplicate ("3+4=8" twice) dropped, keep n/beam_width = 2
    assert r.stats.duplicates_dropped >= 1
    assert len(first.beams) == 2 and first.beams[0].steps == ["3+4=7"]
    assert all(b.score >= p.score for b in first.beams for p in first.pruned)
    assert policy.calls[0] == (1, 4) and policy.calls[1] == (2, 2)  # root x n, then kept beams x beam_width
    # stats: every PRM token was computed (this scorer reuses nothing), the tree holds fewer unique tokens
    assert r.stats.prm_tokens_total == sum(len(TrajectoryEncoder(build_tokenizer()).encode(q, s).ids) for q, s in scorer.items)
    assert r.stats.prm_tokens_reused == 0 and 0 < r.stats.tree_tokens < r.stats.prm_tokens_total
    assert r.stats.steps == len(steps) and r.stats.wall_time_s > 0


def test_beam_search_tree_token_count_is_exact():
    r = run_search(ScriptedPolicy(), OracleScorer(), Q, SearchParams(strategy="beam", n=2, beam_width=2, max_steps=3))
    enc = TrajectoryEncoder(build_tokenizer())
    # n=2, keep 1: step 1 scores {"3+4=8", "3+4=7"} -> keeps 3+4=7 -> {"7*2=14","7*2=15"} -> keeps 14 -> answer
    nodes = [("3+4=8",), ("3+4=7",), ("3+4=7", "7*2=14"), ("3+4=7", "7*2=15"), ("3+4=7", "7*2=14", "Answer: 14")]
    expected = len(enc.prompt_ids(Q)) + sum(len(enc.step_ids(n[-1])) for n in nodes)
    assert r.stats.tree_tokens == expected
    assert r.answer == "14"


def test_dvts_runs_independent_subtrees():
    policy = ScriptedPolicy()
    r = run_search(policy, OracleScorer(), Q, SearchParams(strategy="dvts", n=4, beam_width=2, dedup=False))
    assert policy.calls[0] == (2, 2)  # two subtrees, each expanded into beam_width children
    assert r.answer == "14"
    assert all(c.finished for c in r.candidates)


def test_lookahead_scores_candidates_by_their_greedy_continuation():
    tree = dict(TREE)
    tree[()] = ["3+4=7", "3+4=7"]
    tree[("3+4=7",)] = ["7*2=15", "7*2=14"]  # greedy continuation of 3+4=7 is the wrong one
    first_scores = {}
    for lookahead in (0, 1):
        policy, events = ScriptedPolicy(tree), []
        r = run_search(policy, OracleScorer(), Q, SearchParams(strategy="beam", n=2, beam_width=2, lookahead=lookahead,
                                                               dedup=False), on_event=events.append)
        first_scores[lookahead] = events[0].beams[0].score
    # lookahead judges "3+4=7" by its greedy (wrong) second step: 0 under min aggregation; without it, 1
    assert first_scores == {0: 1.0, 1: 0.0}
    assert (1, 1) in policy.calls[1:2] or any(n == 1 for _, n in policy.calls)  # greedy rollouts, one sample each
    assert r.stats.policy_calls > r.stats.steps


def test_cancellation_stops_between_steps():
    events = []
    with pytest.raises(SearchCancelled):
        run_search(ScriptedPolicy(), OracleScorer(), Q, SearchParams(strategy="beam", n=4, beam_width=2),
                   on_event=events.append, should_stop=lambda: len(events) >= 1)
    assert len(events) == 1


def test_max_steps_cuts_unfinished_beams():
    r = run_search(ScriptedPolicy(), OracleScorer(), Q, SearchParams(strategy="beam", n=4, beam_width=2, max_steps=1))
    assert r.stats.steps == 1
    assert all(c.truncated and c.answer is None for c in r.candidates)


@pytest.mark.parametrize("field,kwargs", [("beam_width", {"strategy": "beam", "n": 6, "beam_width": 4}),
                                          ("n", {"n": 0}), ("aggregation", {"aggregation": "median"})])
def test_params_validation_names_the_field(field, kwargs):
    with pytest.raises(ValidationError, match=field):
        SearchParams(**kwargs)


def test_cost_counts_fan_out():
    assert SearchParams(n=16, max_steps=10).cost() == 160
    assert SearchParams(strategy="beam", n=16, beam_width=4, max_steps=10, lookahead=1).cost() == 320


def test_weighted_vote_with_probability_scores_sums_the_scores():
    cands = [Candidate(["a"], True, score=s, answer=a, id=i) for i, (s, a) in enumerate([(0.9, "1"), (0.5, "2"), (0.5, "2")])]
    assert choose(cands, "weighted", probability_scores=True)[1] == "2"  # 1.0 > 0.9
    # read as log-weights at T=0.1: answer 1 -> 1, answer 2 -> 2 * e^-4 = 0.04
    assert choose(cands, "weighted", vote_temperature=0.1, probability_scores=False)[1] == "1"


@pytest.fixture(scope="module")
def tiny_token_reward_prm(tmp_path_factory):
    from repirl.scoring.tiny_prms import build_tiny_prm

    return build_tiny_prm(tmp_path_factory.mktemp("search_prm") / "prm", "token-reward")


def test_kv_reusing_prm_computes_each_tree_token_once(tiny_token_reward_prm):
    """Beam search with the transformers PRM engine's KV reuse: PRM tokens computed == unique tokens of the search
    tree (bench_search.py's target is <= 1.3). Step 1 has three distinct candidates sharing only the prompt: the
    prompt is computed once, not once per candidate. Scores equal a cold engine's (no KV reuse)."""
    from repirl.scoring.loader import load_scorer

    params = SearchParams(strategy="beam", n=4, beam_width=2, select="naive", seed=0)
    warm = run_search(ScriptedPolicy(), load_scorer(tiny_token_reward_prm, engine="hf", kv_cache_tokens=100_000),
                      Q, params)
    cold = run_search(ScriptedPolicy(), load_scorer(tiny_token_reward_prm, engine="hf", kv_cache_tokens=0), Q, params)
    assert warm.stats.prm_tokens_computed == warm.stats.tree_tokens == cold.stats.tree_tokens
    assert cold.stats.prm_tokens_computed == cold.stats.prm_tokens_total > 2 * warm.stats.tree_tokens
    assert [c.steps for c in warm.candidates] == [c.steps for c in cold.candidates]
    assert [c.score for c in warm.candidates] == pytest.approx([c.score for c in cold.candidates], abs=1e-5)
