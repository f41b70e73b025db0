"""tools/selection_rules.py's rules on hand-made samples (the measurement in docs/trainer.md, issue 24, reads them)."""

from tools.selection_rules import accuracy, add_min_scores, best_threshold, dev_pick, pick
from trainer.evaluation.metrics import Sample


def _s(answer, correct, rewards):
    return Sample(answer=answer, correct=correct, step_rewards={"p": rewards})


def test_filter_drops_flagged_samples_before_the_vote_and_falls_back_to_all():
    samples = [_s("1", False, [5.0, 1.0]), _s("1", False, [5.0, 2.0]), _s("2", True, [5.0, 5.0])]
    assert pick(samples, "majority", None).answer == "1"
    assert pick(samples, "filter", "p", threshold=3.0).answer == "2"  # the two flagged "1"s leave
    assert pick(samples, "filter", "p", threshold=9.0).answer == "1"  # all flagged: the vote over all
    # min: the lowest step decides, where the mean would prefer the first sample
    mean_first = [_s("1", False, [9.0, 0.5]), _s("2", True, [3.0, 3.0])]
    add_min_scores([mean_first], "p")
    assert pick(mean_first, "min", "p").answer == "2"


def test_dev_threshold_is_the_one_that_makes_the_filter_pick_right():
    problem = [_s("1", False, [5.0, 1.0]), _s("1", False, [5.0, 2.0]), _s("2", True, [5.0, 5.0])]
    t = best_threshold([problem], 3, 1, 0, "p")
    assert 2.0 < t <= 5.0
    assert accuracy([problem], 3, 1, 0, "filter", "p", t) == 1.0
    assert accuracy([problem], 3, 1, 0, "majority", None) == 0.0


def test_the_rule_is_picked_on_dev_and_ties_go_to_the_simpler_one():
    rules = ("mean", "min", "filter")
    assert dev_pick({"mean": 0.10, "min": 0.20, "filter": 0.15}, rules) == "min"
    assert dev_pick({"mean": 0.20, "min": 0.20, "filter": 0.20}, rules) == "mean"
    assert dev_pick({"mean": 0.10, "min": 0.20, "filter": 0.20}, rules) == "min"
