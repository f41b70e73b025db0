"""Calibrated step scores (trainer/calibration.py, repirl/calibration.py, the report's section): Platt's fit against
known parameters and an independent optimiser, ECE by hand, first-error step labels, prm.json round trips, the
`repirl calibrate` command on a tiny PRM folder, checker labels of real policy samples."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

from repirl.artifacts import content_hash, load_prm_config, scoring_revision
from repirl.artifacts import active_calibration
from repirl.calibration import Calibration
from trainer.calibration import ece, fit_platt, policy_solutions, reliability, step_labels, write_calibration


def test_platt_recovers_known_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(5.4, 0.3, 40_000)  # raw rewards on the rePIRL scale: ~5.4, a narrow spread
    y = (rng.random(x.size) < 1 / (1 + np.exp(-(8.0 * x - 43.0)))).astype(int)
    a, b = fit_platt(x, y, smooth=False)
    assert a == pytest.approx(8.0, rel=0.05) and b == pytest.approx(-43.0, rel=0.05)
    # the same minimum from another optimiser (torch L-BFGS on the log loss, unstandardised, float64)
    import torch

    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(w[0] * xt + w[1], yt, reduction="sum")
        loss.backward()
        return loss

    opt.step(closure)
    assert (a, b) == pytest.approx((w[0].item(), w[1].item()), rel=1e-3)


def test_platt_smoothed_targets_keep_one_class_data_finite():
    # all positive, constant reward: the optimum is b = logit((N+ + 1) / (N+ + 2)) = log(N+ + 1), a = 0
    a, b = fit_platt([5.0, 5.0, 5.0], [1, 1, 1])
    assert a == pytest.approx(0.0, abs=1e-9) and b == pytest.approx(math.log(4), abs=1e-6)
    a, b = fit_platt([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1])  # separable: finite, increasing
    assert 0 < a < 50 and math.isfinite(b)


def test_ece_and_reliability_by_hand():
    probs, labels = [0.05, 0.15, 0.15, 0.95, 1.0], [0, 1, 0, 1, 1]
    # bins: [0, .1): .05 vs 0 -> .05 (1 step); [.1, .2): .15 vs .5 -> .35 (2); [.9, 1]: .975 vs 1 -> .025 (2)
    assert ece(probs, labels) == pytest.approx((0.05 * 1 + 0.35 * 2 + 0.025 * 2) / 5)
    bins = reliability(probs, labels)
    assert [b["count"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins[9]["confidence"] == pytest.approx(0.975) and bins[9]["accuracy"] == 1.0
    assert bins[2]["confidence"] is None
    assert ece([0.7] * 10, [1] * 7 + [0] * 3) == pytest.approx(0.0)  # perfectly calibrated


def test_step_labels_follow_the_first_error():
    assert step_labels(4, None) == [1, 1, 1, 1]
    assert step_labels(4, 2) == [1, 1, 0, 0]
    assert step_labels(3, 0) == [0, 0, 0]


def test_calibration_formula():
    cal = Calibration(a=2.0, b=-11.0)
    assert cal.p_correct(5.5) == pytest.approx(0.5)
    assert cal.p_correct(6.0) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert cal.p_correct_all([-1e6, 1e6]) == [0.0, 1.0]  # no overflow at either end


def test_prm_json_round_trip_with_and_without_calibration(tiny_prm_dir, tmp_path):
    prm = shutil.copytree(tiny_prm_dir, tmp_path / "prm")
    raw = json.loads((prm / "prm.json").read_text())
    raw.pop("calibration", None)  # a prm.json written before calibrations existed
    (prm / "prm.json").write_text(json.dumps(raw))
    before = load_prm_config(prm)
    assert before.calibration is None and active_calibration(before) is None
    cal = Calibration(a=1.5, b=-0.25, revision=scoring_revision(before), n_steps=10, n_positive=4, ece=0.05,
                      ece_raw=0.3, n_check_steps=5, data="test")
    write_calibration(prm, cal)
    after = load_prm_config(prm)
    assert after.calibration == cal and active_calibration(after) == cal
    assert after.revision == before.revision == content_hash(prm)  # prm.json is not part of the revision
    # another step rule means other raw rewards: the stored calibration no longer applies
    assert active_calibration(after.model_copy(update={"step_reward": "min"})) is None
    write_calibration(prm, None)
    assert load_prm_config(prm).calibration is None


def test_cli_writes_calibration_into_a_tiny_prm_folder(tiny_prm_dir, tiny_policy_dir, tmp_path):
    from typer.testing import CliRunner

    from repirl.cli import app
    from repirl.tasks.arithmetic import ArithmeticTask
    from trainer.evaluation.bestofn import heldout_problems
    from trainer.evaluation.steperror import corrupted_set

    prm = shutil.copytree(tiny_prm_dir, tmp_path / "prm")
    res = CliRunner().invoke(app, ["calibrate", "--prm", str(prm), "--policy", str(tiny_policy_dir),
                                   "--source", "corrupted", "--problems", "9"])
    assert res.exit_code == 0, res.output
    cfg = load_prm_config(prm)
    cal = cfg.calibration
    assert cal is not None and "p_correct = sigmoid(" in res.output
    assert cal.revision == scoring_revision(cfg) and cal.method == "platt"
    # every step of the dev references and their corrupted copies, split 6 problems (fit) / 3 (check)
    problems = heldout_problems(ArithmeticTask().config, 9, "dev")
    items = corrupted_set(problems, 1)
    assert cal.n_steps + cal.n_check_steps == sum(len(steps) for _, steps, _ in items)
    assert cal.n_check_steps > 0 and 0 <= cal.ece <= 1 and 0 <= cal.ece_raw <= 1
    positives = sum(sum(step_labels(len(steps), k)) for _, steps, k in items)
    assert 0 < cal.n_positive < positives  # the fit split holds some, not all, of the error-free steps
    bad = CliRunner().invoke(app, ["calibrate", "--prm", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "prm.json not found" in re.sub(r"[\s│]+", " ", bad.output)  # rich's error box


def test_policy_samples_are_labelled_by_the_step_checker():
    from repirl.policy import load_policy
    from repirl.policy.toy import TOY_QUESTION, build_toy_policy
    from repirl.tasks.arithmetic import ArithmeticTask
    from repirl.tasks.base import Problem

    policy = load_policy(build_toy_policy(), engine="transformers")
    problem = Problem("toy", TOY_QUESTION, ["3+4=7", "7*2=14", "Answer: 14"], "14")
    sols = policy_solutions(policy, ArithmeticTask(), [problem], samples=12, temperature=1.0, seed=0)
    assert len(sols) == 12

    def by_hand(steps):  # the first step that differs from the reference (an extra step after the answer too)
        ref = problem.steps
        return next((k for k in range(max(len(steps), len(ref))) if k >= len(steps) or k >= len(ref)
                     or steps[k] != ref[k]), None)

    assert [s.first_wrong_step for s in sols] == [by_hand(s.steps) for s in sols]
    assert {s.first_wrong_step for s in sols} >= {None, 0}  # the toy says "3+4=7" twice as often as "3+4=8"


def test_report_section_measures_ece_on_the_test_samples(tmp_path):
    from types import SimpleNamespace

    from repirl.artifacts import PRMConfig
    from trainer.evaluation import calibration as section
    from trainer.evaluation.metrics import Sample

    cal = Calibration(a=1.0, b=0.0)
    scorers = {"cal": SimpleNamespace(config=PRMConfig(calibration=cal)), "plain": SimpleNamespace(config=PRMConfig())}
    samples = [Sample(answer="1", correct=True, steps=["a", "b"], first_wrong_step=None,
                      step_rewards={"cal": [2.0, 0.0], "plain": [2.0, 0.0]}),
               Sample(answer="2", correct=False, steps=["a", "c"], first_wrong_step=1,
                      step_rewards={"cal": [2.0, -2.0], "plain": [2.0, -2.0]})]
    from trainer.evaluation.bestofn import HARDER, IN_DIST

    # the section picks the in-distribution setting at the highest temperature by its key, not by its label
    settings = {"in-distribution, T=1.0": {"temperature": 1.0, "task_key": IN_DIST, "_samples": [samples]},
                "in-distribution, T=0.8": {"temperature": 0.8, "task_key": IN_DIST, "_samples": []},
                "harder, T=1.5": {"temperature": 1.5, "task_key": HARDER, "_samples": []}}
    sec = section.section(scorers, settings, log=lambda _: None)
    assert sec["setting"] == "in-distribution, T=1.0"
    s = 1 / (1 + math.exp(-2.0))  # sigmoid(2): steps labelled 1, 1, 1, 0 with p = s, .5, s, 1 - s
    want = (abs(0.5 - 1) + abs(1 - s - 0) + 2 * abs(s - 1)) / 4  # one step per bin but two in sigmoid(2)'s
    assert sec["prms"]["cal"]["ece"] == pytest.approx(want)
    assert sec["prms"]["plain"]["calibrated"] is False and sec["prms"]["plain"]["ece_raw"] == pytest.approx(want)
    plots = section.plot(sec, tmp_path)
    assert sorted(p.name for p in plots.values()) == ["calibration_cal.png", "calibration_plain.png"]
    assert all(p.stat().st_size > 1000 for p in plots.values())
    text = "\n".join(section.markdown(sec, {k: p.name for k, p in plots.items()}))
    assert "not calibrated" in text and "calibration_cal.png" in text and f"**{want:.3f}**" in text
