"""`repirl sweep` (issue 24): variants from --vary, recipes validated before anything trains, runs trained by the
trainer's own CLI and found again on a re-run, and a table whose figures are the evaluation's own."""

from __future__ import annotations

import json
import pytest
import yaml
from typer.testing import CliRunner

from trainer.config import ConfigError
from trainer.sweep import BASE, Row, baselines, best_variant, parse_vary, plan, render_table, slug, summarise


def test_vary_makes_one_variant_per_value_with_yaml_values():
    variants = parse_vary(["prm.lr=3e-6,3e-5", "prm.max_weight_ratio=null", "filters.accuracy_window=[0.1, 0.9]"])
    assert [v.key for v in variants] == [BASE, "prm.lr=3e-6", "prm.lr=3e-5", "prm.max_weight_ratio=null",
                                         "filters.accuracy_window=[0.1, 0.9]"]
    assert variants[1].overrides == {"prm": {"lr": 3e-6}}
    assert variants[3].overrides == {"prm": {"max_weight_ratio": None}}
    assert variants[4].overrides == {"filters": {"accuracy_window": [0.1, 0.9]}}
    assert slug(variants[1]) == "prm_lr-3e-6"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_vary(["prm.lr"])


def test_a_mapping_value_is_one_variant_merged_into_the_recipe(tmp_path):
    (base, wide) = parse_vary(["task={max_ops: 4, max_operand: 40}"])
    assert wide.overrides == {"task": {"max_ops": 4, "max_operand": 40}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "policy": "tiny", "task": {"min_ops": 1, "train_size": 50}}))
    runs = plan(recipe, [base, wide], [0], "sw", tmp_path / "runs")
    task = runs[1].cfg.task
    assert (task.min_ops, task.max_ops, task.max_operand, task.train_size) == (1, 4, 40, 50)
    assert runs[0].cfg.task.max_ops == 3


def test_a_bad_key_fails_the_plan_naming_the_variant_the_file_and_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "policy": "tiny"}))
    runs = plan(recipe, parse_vary(["iterations=3"]), [0, 1], "sw", tmp_path / "runs")
    assert [r.name for r in runs] == ["sw-base-s0", "sw-base-s1", "sw-iterations-3-s0", "sw-iterations-3-s1"]
    assert [r.cfg.iterations for r in runs] == [10, 10, 3, 3] and runs[3].cfg.seed == 1
    assert runs[0].run_dir == tmp_path / "runs" / "sw-base-s0"
    with pytest.raises(ConfigError) as e:
        plan(recipe, parse_vary(["prm.lrr=1e-5"]), [0], "sw", tmp_path / "runs")
    assert "--vary prm.lrr=1e-5" in str(e.value) and str(recipe) in str(e.value) and "lrr" in str(e.value)


def _results(curves_in: dict, curves_hard: dict, f1: dict) -> dict:
    def setting(key, extra):
        return {"task_key": key, "curves": {"majority vote": {"4": 0.2}, "policy likelihood rerank": {"4": 0.3},
                                            "PRM rerank: untrained": {"4": 0.1},
                                            **{f"PRM rerank: {k}": {"4": v} for k, v in extra.items()}}}
    return {"bestofn": {"in-distribution, T=0.8": setting("in_dist", curves_in),
                        "harder, T=0.8": setting("harder", curves_hard)},
            "steperror": {"sources": {"corrupted references (in-distribution)": {"prms": {}},
                                      "policy samples (in_dist + harder)": {"prms": {
                                          "policy likelihood (baseline, no training)": {"f1": 0.5},
                                          **{k: {"f1": v} for k, v in f1.items()}}}}}}


def test_rows_average_each_variants_seeds_and_margins_use_the_better_baseline(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "policy": "tiny"}))
    runs = plan(recipe, parse_vary(["iterations=3"]), [0, 1], "sw", tmp_path / "runs")
    names = [r.name for r in runs]
    results = _results(dict(zip(names, [0.4, 0.6, 0.3, 0.3])), dict(zip(names, [0.1, 0.2, 0.4, 0.2])),
                       dict(zip(names, [0.6, 0.7, 0.4, 0.5])))
    base = baselines(results, 4)
    assert base["harder best baseline"] == 0.3 and base["F1 likelihood"] == 0.5  # max(majority, likelihood)
    rows = summarise(results, runs, 4)
    assert [r.variant for r in rows] == [BASE, "iterations=3"]
    assert rows[0].bo_in == [0.4, 0.6] and rows[1].bo_hard == [0.4, 0.2] and rows[0].greedy_after == [None, None]
    table = render_table(rows, base, 4).splitlines()
    assert table[2].split("|")[3].strip() == "0.500 (0.400-0.600)"
    assert table[2].split("|")[6].strip() == "+0.150" and table[3].split("|")[6].strip() == "-0.050"
    assert best_variant(rows, base).variant == BASE  # (0.15 - 0.3) + 0.15 + (0.5 - 0.3) = 0.2 > 0 - 0.05 + 0


def test_two_sweeps_reported_in_one_folder_keep_their_own_results(tmp_path):
    """Issue 24's PRIME measurement wrote sweep.md and recipe_sweep.md into one folder: the second sweep replaced the
    first one's results.json, plot and recipes (both went to results/). Each report now links its own folder."""
    from trainer.sweep import render_report, results_dir

    assert results_dir(tmp_path / "sweep.md") == tmp_path / "results"  # every earlier sweep's layout
    other = results_dir(tmp_path / "recipe_sweep.md")
    assert other == tmp_path / "recipe_sweep-results" and other != results_dir(tmp_path / "sweep.md")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "policy": "tiny"}))
    runs = plan(recipe, parse_vary([]), [0], "sw", tmp_path / "runs")
    results = _results({runs[0].name: 0.4}, {runs[0].name: 0.1}, {runs[0].name: 0.6})
    rows = summarise(results, runs, 4)
    text = render_report(rows, baselines(results, 4), results, config=recipe, seeds=[0], problems=40, n=4,
                         temperature=0.8, dev_problems=30, data_dir=other.name)
    assert "![sweep](recipe_sweep-results/sweep.png)" in text and "](results/" not in text


def test_greedy_comes_from_the_evaluations_common_problems_when_it_measured_them(tmp_path):
    """A variant that changes `task` checks its policy on other problems in summary.json (issue 24's wide-task run:
    0.183 there, on 2-4 operations): the table uses the evaluation's policies section, the same problems for all."""
    from trainer.sweep import greedy_source

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "policy": "tiny"}))
    runs = plan(recipe, parse_vary(["task={max_ops: 4}"]), [0], "sw", tmp_path / "runs")
    names = [r.name for r in runs]
    results = _results(dict(zip(names, [0.4, 0.5])), dict(zip(names, [0.1, 0.2])), dict(zip(names, [0.6, 0.7])))
    assert greedy_source(results).startswith("greedy pass@1 from each run's own")
    results["policies"] = {"problems": 200, "runs": [{"run": "demo", "greedy": 0.72}, {"run": names[0], "greedy": 0.76},
                                                     {"run": names[1], "greedy": 0.70}]}
    rows = summarise(results, runs, 4, start="demo")
    assert [r.greedy_after for r in rows] == [[0.76], [0.70]] and rows[1].greedy_before == 0.72
    assert "200 held-out problems" in greedy_source(results)
    table = render_table(rows, baselines(results, 4), 4)
    assert "SFT start 0.720" in table and table.splitlines()[3].split("|")[7].strip() == "0.700"


def test_the_best_variant_is_the_largest_summed_margin():
    base = {"harder best baseline": 0.1, "F1 likelihood": 0.5, "in-distribution best baseline": 0.4}
    a = Row("a", [0, 1], bo_in=[0.5, 0.5], bo_hard=[0.1, 0.1], f1=[0.5, 0.5], greedy_after=[None, None])
    b = Row("b", [0, 1], bo_in=[0.4, 0.4], bo_hard=[0.2, 0.2], f1=[0.55, 0.55], greedy_after=[None, None])
    assert best_variant([a, b], base).variant == "b"  # 0.1 + 0.05 + 0 > 0 + 0 + 0.1
    b.greedy_before, b.greedy_after = 0.47, [0.45, 0.47]  # b's policy ends below its start: a is recommended
    a.greedy_before, a.greedy_after = 0.47, [0.47, 0.48]
    assert best_variant([a, b], base).variant == "a"


def test_repirl_sweep_trains_evaluates_and_resumes(tmp_path, tiny_policy_dir, tiny_prm_dir):
    """Two variants x one seed of a recipe that trains in seconds, then a fast evaluation on tiny problems. The
    table's figures are checked against results.json (the evaluation's own record), and a second call trains
    nothing."""
    from repirl.cli import app
    from tests.trainer.conftest import small_recipe

    raw = small_recipe(tmp_path, tiny_policy_dir, iterations=1, eval_problems=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "docs" / "sweep.md"
    args = ["sweep", "--config", str(recipe), "--vary", "prm.lr=3e-5", "--seeds", "0", "--prefix", "sw",
            "--runs-dir", str(tmp_path / "runs"), "--untrained", str(tiny_prm_dir), "--policy", str(tiny_policy_dir),
            "--problems", "2", "--dev-problems", "2", "--n", "2", "--subsets", "1", "--max-steps", "2",
            "--max-step-tokens", "3", "--engine", "transformers",
            "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    for name in ("sw-base-s0", "sw-prm_lr-3e-5-s0"):
        assert (tmp_path / "runs" / name / "summary.json").is_file()
    trained = yaml.safe_load((out.parent / "results" / "recipes" / "sw-prm_lr-3e-5-s0.yaml").read_text())
    assert trained["prm"]["lr"] == 3e-5 and trained["iterations"] == 1
    results = json.loads((out.parent / "results" / "results.json").read_text())
    hard = next(s for s in results["bestofn"].values() if s["task_key"] == "harder")["curves"]
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| prm.lr=3e-5 |"))
    assert f"{hard['PRM rerank: sw-prm_lr-3e-5-s0']['2']:.3f}" in row.split("|")[4]
    # a random policy is never right, so there is no balanced set of its samples to score F1 on: n/a, not a number
    assert not any(k.startswith("policy samples") for k in results["steperror"]["sources"])
    assert next(line for line in text.splitlines() if line.startswith("| base |")).split("|")[5].strip() == "n/a"
    assert "Best variant" in text and (out.parent / "results" / "sweep.png").stat().st_size > 1000
    # every policy on the same problems, the start (the tiny policy's folder, <run>/policy) included
    greedy = {r["run"]: r["greedy"] for r in results["policies"]["runs"]}
    start = tiny_policy_dir.parent.name
    assert set(greedy) == {start, "sw-base-s0", "sw-prm_lr-3e-5-s0"} and results["policies"]["problems"] == 2
    assert row.split("|")[7].strip() == f"{greedy['sw-prm_lr-3e-5-s0']:.3f}"
    assert f"SFT start {greedy[start]:.3f}" in text
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "2 of 2 runs already trained, 0 to train" in again.output
    results2 = json.loads((out.parent / "results" / "results.json").read_text())  # the same cached samples
    assert next(s for s in results2["bestofn"].values() if s["task_key"] == "harder")["curves"] == hard


def test_a_run_that_fails_stops_the_sweep_naming_its_recipe(tmp_path, tiny_prm_dir):
    from repirl.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "policy": str(tmp_path / "no-such-policy")}))
    res = CliRunner().invoke(app, ["sweep", "--config", str(recipe), "--seeds", "0", "--prefix", "f", "--runs-dir",
                                   str(tmp_path / "runs"), "--untrained", str(tiny_prm_dir), "--out",
                                   str(tmp_path / "out" / "s.md")])
    assert res.exit_code == 1, res.output
    assert "training f-base-s0 failed" in res.output and "f-base-s0.yaml" in res.output
    assert not (tmp_path / "out" / "s.md").exists()


def test_sweep_errors_name_the_option(tmp_path):
    from repirl.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "policy": "tiny"}))
    res = CliRunner().invoke(app, ["sweep", "--config", str(recipe), "--vary", "prm.lrr=1", "--runs-dir",
                                   str(tmp_path)])
    assert res.exit_code == 2 and "prm.lrr" in res.output
    res = CliRunner().invoke(app, ["sweep", "--config", str(recipe), "--seeds", "a", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--seeds" in res.output
