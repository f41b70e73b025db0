"""The evaluator's metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import math
import random

import pytest

from trainer.evaluation.metrics import (Sample, best_of_n_accuracy, choose_threshold, confusion, curve, first_below,
                                        first_error_scores, mean_spread, pass_at_k, select, subset_indices)


def _problems(seed=0, n_problems=30, n=8, p_correct=0.3):
    """Each problem: n samples; correct ones answer "42", wrong ones a random other number (so votes can fail)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_problems):
        samples = []
        for _ in range(n):
            ok = rng.random() < p_correct
            samples.append(Sample(answer="42" if ok else str(rng.randint(0, 3)), correct=ok,
                                  scores={"perfect": float(ok), "constant": 0.5, "noise": rng.random()}))
        out.append(samples)
    return out


def test_perfect_scorer_gives_the_oracle_curve():
    problems = _problems()
    oracle = curve(problems, "oracle", ns=(1, 2, 4, 8))
    assert curve(problems, "naive", "perfect", ns=(1, 2, 4, 8)) == oracle
    assert oracle[8] == pytest.approx(sum(any(s.correct for s in ss) for ss in problems) / len(problems))
    assert oracle[1] == pytest.approx(sum(s.correct for ss in problems for s in ss) / (30 * 8))
    assert all(oracle[a] <= oracle[b] for a, b in ((1, 2), (2, 4), (4, 8)))


def test_constant_scorer_gives_first_candidate_accuracy():
    problems = _problems(seed=1)
    assert curve(problems, "naive", "constant", ns=(1, 2, 4, 8)) == curve(problems, "first", ns=(1, 2, 4, 8))
    first = sum(ss[0].correct for ss in problems) / len(problems)
    assert best_of_n_accuracy(problems, 8, "naive", "constant") == pytest.approx(first)


def test_majority_and_weighted_vote_on_a_hand_made_case():
    samples = [Sample("5", False, {"s": 0.0}), Sample("5", False, {"s": 0.0}), Sample("7", True, {"s": 5.0})]
    assert select(samples, "majority").answer == "5"
    assert select(samples, "naive", "s").answer == "7"
    # unbounded scores vote with exp(score - max): 2 * e^-5 < 1
    assert select(samples, "weighted", "s").answer == "7"
    probs = [Sample("5", False, {"p": 0.4}), Sample("5", False, {"p": 0.4}), Sample("7", True, {"p": 0.7})]
    assert select(probs, "weighted", "p", probability_scores=True).answer == "5"  # 0.8 > 0.7
    # an unanswered sample never wins over an answered one, whatever its score
    assert select([Sample(None, False, {"s": 9.0}), Sample("3", True, {"s": -9.0})], "naive", "s").answer == "3"


def test_subsets_and_pass_at_k():
    rng = random.Random(0)
    assert subset_indices(4, 4, 3, rng) == [[0, 1, 2, 3]]
    assert subset_indices(3, 1, 5, rng) == [[0], [1], [2]]
    subs = subset_indices(32, 8, 5, rng)
    assert len(subs) == 5 and all(len(set(s)) == 8 and s == sorted(s) for s in subs)
    with pytest.raises(ValueError):
        subset_indices(4, 5, 1, rng)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0


def test_pass_at_k_matches_the_subsampled_oracle():
    problems = _problems(seed=2, n_problems=40, n=8)
    exact = sum(pass_at_k(8, sum(s.correct for s in ss), 4) for ss in problems) / len(problems)
    assert best_of_n_accuracy(problems, 4, "oracle", n_subsets=400) == pytest.approx(exact, abs=0.02)


def test_first_error_f1_on_a_hand_made_confusion():
    truth = [None, None, 2, 2, 1, 0]
    pred = [None, 3, 2, 1, None, 0]
    s = first_error_scores(pred, truth)
    assert (s.n_erroneous, s.n_correct) == (4, 2)
    assert s.acc_erroneous == pytest.approx(2 / 4)  # steps 2 and 0 found
    assert s.acc_correct == pytest.approx(1 / 2)
    assert s.f1 == pytest.approx(0.5)
    assert first_error_scores([None], [None]).f1 == 0.0  # no erroneous solution: no F1 to speak of
    table = confusion(pred, truth, max_step=3)
    assert table[0] == [1, 0, 0, 1]  # true "none": once none, once step 3 (folded into the last column)
    assert table[3][3] == 1 and table[3][2] == 1 and table[2][0] == 1 and table[1][1] == 1
    assert sum(map(sum, table)) == len(truth)


def test_first_below_and_threshold_selection():
    assert first_below([0.9, 0.2, 0.1], 0.5) == 1
    assert first_below([0.9, 0.8], 0.5) is None
    # errors show a low reward exactly at the wrong step; correct solutions never go below 0.6
    dev = [[0.9, 0.1, 0.2], [0.8, 0.7, 0.15], [0.9, 0.8, 0.7], [0.6, 0.9, 0.95]]
    truth = [1, 2, None, None]
    th, f1 = choose_threshold(dev, truth)
    assert 0.15 < th <= 0.6 and f1 == pytest.approx(1.0)
    # an explicit candidate list is searched as given
    th2, f1_2 = choose_threshold(dev, truth, candidates=[0.05, 0.95])
    assert th2 == 0.05 and f1_2 == 0.0


def test_mean_spread():
    assert mean_spread([0.5]) == (0.5, 0.0)
    m, s = mean_spread([0.4, 0.6])
    assert m == pytest.approx(0.5) and s == pytest.approx(math.sqrt(0.02))


def test_corrupted_references_carry_the_checkers_label():
    from repirl.tasks.arithmetic import ArithmeticTask
    from trainer.evaluation.steperror import check_corrupted, corrupted_set

    task = ArithmeticTask()
    items = corrupted_set(task.sample(60, seed=3), seed=0)
    check_corrupted(task, items)  # raises if any constructed label disagrees with the step checker
    ks = [k for _, _, k in items if k is not None]
    assert len(ks) == 60 and len(set(ks)) >= 3  # errors spread over positions


def test_policy_target_compares_seed_means():
    from trainer.evaluation.report_text import policy_target

    def alg(name, g, s):
        return {"algorithm": name, "runs": [], "seeds": [0, 1, 2], "greedy_mean": g, "greedy_std": 0.01,
                "sampled_mean": s, "sampled_std": 0.02}

    text = " ".join(policy_target([alg("repirl", 0.60, 0.50), alg("rloo", 0.55, 0.52)]))
    assert "greedy 0.600 vs 0.550 (+5.0 points, spread 0.010 / 0.010): **met**" in text
    assert "sampled 0.500 vs 0.520 (-2.0 points, spread 0.020 / 0.020): **missed**" in text
    # ahead, but by less than the spread over seeds: not separated, so missed
    text = " ".join(policy_target([alg("repirl", 0.565, 0.53), alg("rloo", 0.55, 0.52)]))
    assert "(+1.5 points, spread 0.010 / 0.010): **met**" in text
    assert "(+1.0 points, spread 0.020 / 0.020): **missed**" in text
    assert policy_target([alg("repirl", 0.6, 0.5)]) == []  # no RLOO run: no verdict


def test_service_section_compares_with_section_1_only_for_the_same_weights():
    """docs/results.md section 6: service_check.json may come from an earlier training of the same run folder; its
    accuracy is set beside section 1's only when the PRM revisions match."""
    from trainer.evaluation.report_text import section_service

    check = {"problems": 40, "n": 16, "temperature": 0.8, "engine": "hf", "task": "in-distribution",
             "policy": "runs/demo/policy", "prm": "runs/demo-repirl/prm", "evaluator_accuracy": 0.5,
             "service_accuracy": 0.5, "same_answer": 40, "same_solution": 40, "two_se": 0.2, "passed": True,
             "prm_revision": "abc"}
    curve = {"1": 0.3, "16": 0.55}
    results = {"config": {"prms": {"rePIRL": "runs/demo-repirl/prm"}},
               "bestofn": {"in-distribution, T=0.8": {"curves": {"PRM rerank: rePIRL": curve},
                                                      "samples_per_problem": 32, "problems": 100}}}
    same = "\n".join(section_service(check, {**results, "prm_revisions": {"rePIRL": "abc"}}))
    other = "\n".join(section_service(check, {**results, "prm_revisions": {"rePIRL": "def"}}))
    unrecorded = "\n".join(section_service({k: v for k, v in check.items() if k != "prm_revision"}, results))
    assert "Section 1 reports 0.550 for the same PRM (revision abc)" in same
    for text in (other, unrecorded):
        assert "Section 1 reports" not in text and "is not compared with section 1's" in text
    assert "revision abc" in other and "revision def" in other and "revision not recorded" in unrecorded
