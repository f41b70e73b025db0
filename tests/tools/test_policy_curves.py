"""tools/policy_curves.py on hand-written run folders (the rePIRL vs RLOO plot in docs/trainer.md reads real ones)."""

import json

import pytest

from tools.policy_curves import main
from trainer.summary import RunSummary


def _run(path, before, checks, greedy, iterations=20):
    path.mkdir()
    RunSummary(name=path.name, kind="train", algorithm="repirl", seed=0, iterations=iterations, train_seconds=1.0,
               eval_accuracy_before=before, eval_accuracy_greedy_before=0.4,
               eval_accuracy_greedy=greedy).write(path)
    rows = [{"iter": i, "accuracy": 0.5} for i in range(iterations)]
    for it, acc in checks.items():
        rows[it - 1]["eval_accuracy"] = acc  # checked after 0-based iteration it - 1
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def test_groups_average_the_checks_each_run_made_and_write_the_plot(tmp_path, capsys):
    _run(tmp_path / "a-s0", 0.30, {10: 0.40, 20: 0.50}, 0.45)
    _run(tmp_path / "a-s1", 0.34, {10: 0.44, 20: 0.40}, 0.55)
    _run(tmp_path / "b-s0", 0.30, {10: 0.20}, 0.35, iterations=10)
    out = tmp_path / "plot.png"
    groups = main(["--group", f"A={tmp_path}/a-s*", "--group", f"B={tmp_path}/b-s*", "--out", str(out)])
    a = groups["A"]
    assert a["iterations"] == [0, 10, 20]
    assert a["mean"] == pytest.approx([0.32, 0.42, 0.45])
    assert (a["low"][2], a["high"][2]) == (0.40, 0.50)
    assert a["greedy_after"] == [0.45, 0.55] and a["last_iteration"] == 20
    assert groups["B"]["iterations"] == [0, 10] and groups["B"]["runs"] == 1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "greedy 0.4 -> [0.45, 0.55] (mean 0.500)" in capsys.readouterr().out


def test_a_glob_without_runs_is_an_error_naming_the_group(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--group", f"A={tmp_path}/none-*", "--out", str(tmp_path / "x.png")])
    assert "--group 'A=" in capsys.readouterr().err
