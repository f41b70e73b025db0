"""`repirl eval processbench`: the data layout, the demo data's labels, the metric, and a PRM folder vs the same PRM
behind a running service (its /v1/score through the SDK) giving the same table."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from repirl.cli import app
from tests.conftest import GSM8K_DIR
from trainer.evaluation import processbench as pb


def _oracle(rows, low=0.1, high=0.9):
    """Step rewards that are high before the first wrong step and low from it on."""
    return [[high if r.label < 0 or i < r.label else low for i in range(len(r.steps))] for r in rows]


def test_demo_labels_are_known_by_construction():
    from repirl.tasks.arithmetic import ArithmeticTask
    from repirl.tasks.gsm8k import GSM8KTask

    rows = pb.arithmetic_rows(10, seed=3)
    assert len(rows) == 20 and sum(r.label < 0 for r in rows) == 10
    rows_g = pb.gsm8k_rows(10, seed=3, data_dir=GSM8K_DIR)
    assert len(rows_g) == 20 and sum(r.label < 0 for r in rows_g) == 10
    task = GSM8KTask()
    from repirl.tasks.base import Problem

    for r in rows_g:  # the checker finds the planted error exactly there, and none in the references
        got = task.check(Problem("x", r.problem, r.steps, ""), r.steps).first_wrong_step
        assert got == (None if r.label < 0 else r.label)
    assert ArithmeticTask  # arithmetic_rows runs the task's own checker (check_corrupted) on every row


def test_metric_oracle_and_constant(tmp_path):
    rows = pb.arithmetic_rows(8) + pb.gsm8k_rows(8, data_dir=GSM8K_DIR)
    res = pb.evaluate(rows, _oracle(rows))
    assert res["threshold_chosen_on"] == "gsm8k" and 0.1 < res["threshold"] <= 0.9
    assert all(s["f1"] == 1.0 for s in res["subsets"].values()) and res["average_f1"] == 1.0
    const = pb.evaluate(rows, [[0.5] * len(r.steps) for r in rows], threshold=0.4)
    for s in const["subsets"].values():  # nothing below the threshold: every correct one right, no error found
        assert (s["acc_correct"], s["acc_erroneous"], s["f1"]) == (1.0, 0.0, 0.0)
    # an error flagged one step late is wrong for ProcessBench
    late = [[0.9 if r.label < 0 or i <= r.label else 0.1 for i in range(len(r.steps))] for r in rows]
    assert pb.evaluate(rows, late, threshold=0.5)["subsets"]["arithmetic"]["acc_erroneous"] == 0.0
    with pytest.raises(ValueError, match="'nope'"):
        pb.evaluate(rows, _oracle(rows), threshold_split="nope")


def test_bad_rows_name_file_line_and_field(tmp_path):
    f = tmp_path / "math.jsonl"
    f.write_text(json.dumps({"problem": "p", "steps": ["a", "b"], "label": -1}) + "\n"
                 + json.dumps({"problem": "p", "steps": ["a"], "label": 3}) + "\n")
    with pytest.raises(ValueError, match=r"math.jsonl:2: field 'label'"):
        pb.load_rows([f])
    f.write_text(json.dumps({"problem": "p", "steps": ["a", "b"], "label": 1}) + "\n")
    assert pb.load_rows([f])[0].subset == "math"  # the file's stem names the subset


def test_cli_folder_and_service_agree(tmp_path):
    """The same replica PRM scored in-process and behind `repirl serve` (no prm.json either way): same table."""
    from repirl.scoring.hub_replicas import build_replica
    from tests.server.conftest import ServerProc

    folder = build_replica("qwen-prm", tmp_path)
    data = tmp_path / "demo.jsonl"
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "processbench", "--prm", str(folder), "--write-demo", str(data),
                            "--demo-problems", "6", "--out", str(tmp_path / "local.json")])
    assert r.exit_code == 0, r.output
    assert "acc. erroneous" in r.output and "gsm8k*" in r.output and "arithmetic" in r.output
    srv = ServerProc(["--engine", "hf", "--prm", f"qwen={folder}"]).wait_ready()
    try:
        r = runner.invoke(app, ["eval", "processbench", "--prm", srv.url, "--data", str(data),
                                "--out", str(tmp_path / "remote.json")])
    finally:
        srv.stop()
    assert r.exit_code == 0, r.output
    local, remote = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("local", "remote"))
    assert remote["threshold"] == pytest.approx(local["threshold"], rel=1e-6)
    assert remote["subsets"] == local["subsets"]
    r = runner.invoke(app, ["eval", "processbench", "--prm", str(folder)])
    assert r.exit_code == 2 and "--data" in r.output


def test_cli_repirl_prm_with_given_threshold(tmp_path):
    """A repirl PRM (prm.json, token-reward) with a fixed threshold: the JSON says so and agrees with evaluate()."""
    from repirl.scoring.loader import load_scorer
    from repirl.scoring.tiny_prms import build_tiny_prm

    prm = build_tiny_prm(tmp_path / "prm", "token-reward")
    data = pb.write_rows(pb.arithmetic_rows(6, seed=1), tmp_path / "arith.jsonl")
    r = CliRunner().invoke(app, ["eval", "processbench", "--prm", str(prm), "--data", str(data), "--threshold", "0",
                                 "--out", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert "threshold 0, given" in r.output
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["threshold"] == 0 and got["threshold_chosen_on"] is None and list(got["subsets"]) == ["arithmetic"]
    rows = pb.load_rows([data])
    scores = [s.step_rewards for s in load_scorer(prm, engine="hf").score([(x.problem, x.steps) for x in rows])]
    assert got["subsets"] == pb.evaluate(rows, scores, threshold=0.0)["subsets"]
